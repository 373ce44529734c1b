"""Sparse local KRR on energies (molkrr.solvers.sparse_local): inducing atomic environments."""

from __future__ import annotations

import numpy as np
import pytest

from molecule_factory import random_molecules
from molkrr import load_model
from molkrr.errors import InvalidInputError
from molkrr.model import MolecularKRR, finite_difference_forces
from molkrr.representations.fchl19 import FCHL19
from molkrr.solvers.sparse_local import allocate_inducing, choose_inducing, inducing_environments

ELEMENTS = [1, 6, 7, 8]


def _rep(form="atomic"):
    return FCHL19(elements=ELEMENTS, form=form, rcut=6.0, acut=6.0)


def test_every_environment_inducing_equals_the_exact_model():
    """Push-through identity: with Z = all training environments the sparse model is the exact one."""
    train, test = random_molecules(30, seed=3), random_molecules(6, seed=4)
    exact = MolecularKRR(_rep(), sigma=2.0, lam=1e-3).fit(train)
    sparse = MolecularKRR(_rep(), sigma=2.0, lam=1e-3, n_sparse=len(train.numbers)).fit(train)
    E0, F0 = exact.predict_energies_and_forces(test)
    E1, F1 = sparse.predict_energies_and_forces(test)
    np.testing.assert_allclose(E1, E0, rtol=0, atol=1e-8 * np.abs(E0).max())
    F0, F1 = np.concatenate(F0), np.concatenate(F1)
    np.testing.assert_allclose(F1, F0, rtol=0, atol=1e-7 * np.abs(F0).max())


def test_fewer_inducing_environments_approximate_and_forces_are_the_gradient(tmp_path):
    train, test = random_molecules(40, seed=5), random_molecules(3, seed=6)
    model = MolecularKRR(_rep(), sigma=2.0, lam=1e-4, n_sparse=60).fit(train)
    assert model.krr_.X_.shape[0] <= 60
    E, F = model.predict_energies_and_forces(test)
    for i in range(len(test)):
        fd = finite_difference_forces(model, test[i], h=1e-3, points=4)
        np.testing.assert_allclose(F[i], fd, rtol=0, atol=1e-6 * max(1.0, np.abs(fd).max()))
    path = tmp_path / "sparse.npz"
    model.save(path)
    loaded = load_model(path)
    assert loaded.n_sparse == 60
    np.testing.assert_array_equal(loaded.predict(test), E)


def test_inducing_allocation_follows_counts_with_a_floor():
    per = allocate_inducing({1: 9000, 6: 6000, 9: 20}, 1200)
    assert sum(per.values()) <= 1200 and per[9] == 20 and per[1] > per[6] > per[9]
    assert allocate_inducing({1: 5, 6: 3}, 100) == {1: 5, 6: 3}


def test_inducing_environments_are_the_chosen_atoms_features():
    mols = random_molecules(12, seed=7)
    rep = _rep().fit(mols)
    atoms = choose_inducing(mols, 15, random_state=1)
    np.testing.assert_array_equal(atoms, choose_inducing(mols, 15, random_state=1))
    X, labels = inducing_environments(rep, mols, atoms)
    full = rep.transform(mols)
    np.testing.assert_array_equal(X, full[atoms])
    np.testing.assert_array_equal(labels, mols.numbers[atoms])


def test_sparse_needs_a_local_representation_and_energy_targets():
    mols = random_molecules(10, seed=8)
    with pytest.raises(InvalidInputError, match="local representation"):
        MolecularKRR(_rep("global"), sigma=2.0, lam=1e-4, n_sparse=10).fit(mols)
    with pytest.raises(InvalidInputError, match="n_sparse"):
        MolecularKRR(_rep(), sigma=2.0, lam=1e-4, n_sparse=0).fit(mols)
