"""The local kernel between many molecules (molkrr.local_gram) against a pair-by-pair reference, and the
per-element energy baseline (molkrr.baseline) of MolecularKRR."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from molecule_factory import random_molecules
from molkrr import derivative_krr as dk
from molkrr import load_model
from molkrr.baseline import baseline_energies, element_counts, fit_element_energies
from molkrr.errors import InvalidInputError
from molkrr.force_selection import select_local_energy_hyperparameters
from molkrr.kernels import Gaussian, Laplacian, Matern
from molkrr.krr import select_hyperparameters
from molkrr.local_gram import local_kernel_matrices, local_kernel_matrix
from molkrr.model import MolecularKRR, finite_difference_forces
from molkrr.molecules import Molecules
from molkrr.representations.fchl19 import FCHL19

ELEMENTS = [1, 6, 7, 8]


def _rep(mols):
    return FCHL19(elements=ELEMENTS, form="atomic", rcut=6.0, acut=6.0).fit(mols)


def _pairwise(kernel, A, B):
    """K(A, B) molecule pair by molecule pair, atom pair by atom pair (the definition)."""
    K = np.zeros((len(A), len(B)))
    for i in range(len(A)):
        for j in range(len(B)):
            sa, sb = A.env_slice(i), B.env_slice(j)
            same = A.labels[sa][:, None] == B.labels[sb][None, :]
            K[i, j] = (kernel(A.X[sa], B.X[sb]) * same).sum()
    return K


@pytest.mark.parametrize("kernel", [Gaussian(1.3), Matern(2.5, 2.0), Laplacian(4.0)], ids=lambda k: k.name)
@pytest.mark.parametrize("block", [10_000_000, 50])  # one block per element, and many (molecules split across blocks)
def test_local_gram_equals_the_pairwise_definition(kernel, block):
    mols = random_molecules(23, seed=1)
    rep = _rep(mols)
    A = dk.environments(rep, mols)
    B = dk.environments(rep, random_molecules(9, seed=2))
    ref = _pairwise(kernel, A, A)
    (K,) = local_kernel_matrices([kernel], A, block_elements=block)
    np.testing.assert_allclose(K, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_array_equal(K, K.T)  # exactly symmetric
    ref_ab = _pairwise(kernel, B, A)
    (Kab,) = local_kernel_matrices([kernel], B, A, block_elements=block)
    np.testing.assert_allclose(Kab, ref_ab, rtol=0, atol=1e-12 * np.abs(ref_ab).max())


def test_local_gram_for_a_sigma_grid_equals_one_call_per_sigma():
    mols = random_molecules(15, seed=3)
    env = dk.environments(_rep(mols), mols)
    kernels = [Gaussian(s) for s in (0.5, 2.0, 8.0)]
    for k, K in zip(kernels, local_kernel_matrices(kernels, env, block_elements=40)):
        np.testing.assert_array_equal(K, local_kernel_matrices([k], env, block_elements=40)[0])


def test_molecules_without_shared_elements_have_zero_kernel():
    mols = Molecules.from_list([np.array([6, 8]), np.array([1, 1])], [np.eye(3)[:2] * 1.2, np.eye(3)[:2] * 0.8])
    env = dk.environments(_rep(mols), mols)
    K = local_kernel_matrix(Gaussian(2.0), env)
    assert K[0, 1] == 0.0 and K[1, 0] == 0.0 and K[0, 0] > 0 and K[1, 1] > 0


def test_energy_gram_matrix_of_derivative_krr_is_the_local_gram():
    mols = random_molecules(12, seed=4)
    env = dk.environments(_rep(mols), mols)
    rows = dk.row_layout(env, "energy")
    diag = np.full(len(mols), 1e-3)
    K = dk.gram_matrix(Gaussian(1.5), env, "energy", rows, diag)
    ref = _pairwise(Gaussian(1.5), env, env) + np.diag(diag)
    np.testing.assert_allclose(K, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_selection_through_the_gram_hook_equals_the_feature_path():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 5)), rng.standard_normal(60)
    sigmas = [0.5, 1.0, 4.0]
    a = select_hyperparameters(X, y, sigmas=sigmas, validation_rows=np.arange(45, 60))
    b = select_hyperparameters(None, y, sigmas=sigmas, validation_rows=np.arange(45, 60),
                               gram=lambda ks: [k(X) for k in ks])
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-12)
    assert (a.sigma, a.lam) == (b.sigma, b.lam)
    with pytest.raises(InvalidInputError, match="sigmas"):
        select_hyperparameters(None, y, gram=lambda ks: [k(X) for k in ks])


def test_local_energy_selection_picks_a_grid_cell():
    mols = random_molecules(40, seed=5)
    rep = _rep(mols)
    sel = select_local_energy_hyperparameters(rep, mols, mols.energies, sigmas=[1.0, 3.0], lams=[1e-6, 1e-2])
    assert sel.sigma in (1.0, 3.0) and sel.lam in (1e-6, 1e-2) and sel.scores.shape == (2, 2)
    model = MolecularKRR(FCHL19(elements=ELEMENTS, form="atomic"), sigma=None, lam=None).fit(mols)
    assert model.sigma_ > 0 and model.lam_ > 0


# ---------------------------------------------------------------------------------- the baseline
def test_element_counts_and_least_squares_energies():
    mols = random_molecules(30, seed=6)
    elements = np.array([1, 6, 7, 8])
    C = element_counts(mols, elements)
    for m in range(len(mols)):
        z = mols.numbers[mols.atom_slice(m)]
        np.testing.assert_array_equal(C[m], [(z == e).sum() for e in elements])
    e_true = np.array([-0.5, -38.0, -54.6, -75.1])
    y = C @ e_true
    els, e = fit_element_energies(mols, y)
    np.testing.assert_array_equal(els, elements)
    np.testing.assert_allclose(e, e_true, rtol=1e-10)
    np.testing.assert_allclose(baseline_energies(mols, els, e), y, rtol=1e-12)


@pytest.mark.parametrize("form", ["atomic", "global"])
def test_model_reproduces_energies_that_are_a_sum_of_element_energies(form, tmp_path):
    train, test = random_molecules(30, seed=7), random_molecules(8, seed=8)
    e_true = {1: -0.5, 6: -38.0, 7: -54.6, 8: -75.1}

    def dressed(mols):
        return np.array([sum(e_true[int(z)] for z in mols.numbers[mols.atom_slice(m)]) for m in range(len(mols))])

    train = train.with_labels(dressed(train))
    model = MolecularKRR(FCHL19(elements=ELEMENTS, form=form), sigma=2.0, lam=1e-8, baseline="elements").fit(train)
    assert model.baseline_ == "elements"
    np.testing.assert_allclose(model.baseline_energies_, [e_true[z] for z in model.baseline_elements_], rtol=1e-9)
    np.testing.assert_allclose(model.predict(test), dressed(test), rtol=0, atol=1e-8)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(test), model.predict(test))
    np.testing.assert_array_equal(loaded.baseline_energies_, model.baseline_energies_)
    assert loaded.baseline == "elements" and loaded.baseline_ == "elements"


def test_baseline_auto_is_elements_for_local_and_mean_for_global():
    mols = random_molecules(20, seed=9)
    local = MolecularKRR(FCHL19(elements=ELEMENTS, form="atomic"), sigma=2.0, lam=1e-6).fit(mols)
    glob = MolecularKRR(FCHL19(elements=ELEMENTS), sigma=20.0, lam=1e-6).fit(mols)
    assert local.baseline_ == "elements" and local.baseline_elements_.tolist() == [1, 6, 7, 8]
    assert glob.baseline_ == "mean" and glob.baseline_elements_.size == 0
    none = MolecularKRR(FCHL19(elements=ELEMENTS, form="atomic"), sigma=2.0, lam=1e-6, baseline=None).fit(mols)
    mean = MolecularKRR(FCHL19(elements=ELEMENTS, form="atomic"), sigma=2.0, lam=1e-6, baseline="mean").fit(mols)
    np.testing.assert_array_equal(none.predict(mols[:5]), mean.predict(mols[:5]))
    with pytest.raises(InvalidInputError, match="baseline"):
        MolecularKRR(baseline="atoms").fit(mols)


def test_forces_of_an_energy_trained_local_model_with_baseline_are_the_gradient():
    train, test = random_molecules(25, seed=10), random_molecules(2, seed=11)
    model = MolecularKRR(FCHL19(elements=ELEMENTS, form="atomic"), sigma=2.0, lam=1e-6).fit(train)
    E, F = model.predict_energies_and_forces(test)
    np.testing.assert_allclose(E, model.predict(test), rtol=0, atol=1e-12 * np.abs(E).max())
    for i in range(len(test)):
        fd = finite_difference_forces(model, test[i], h=1e-3, points=4)
        np.testing.assert_allclose(F[i], fd, rtol=0, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_model_file_without_baseline_loads_as_before(tmp_path):
    """Format-2 files written before the baseline existed: no baseline parameter, no baseline fields."""
    mols = random_molecules(20, seed=12)
    model = MolecularKRR(FCHL19(elements=ELEMENTS, form="atomic"), sigma=2.0, lam=1e-6, baseline="mean").fit(mols)
    path = tmp_path / "new.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    header["format_version"] = 2  # format 2: no per-class schema versions in the nodes
    nodes = [header["model"]]
    while nodes:
        n = nodes.pop()
        if isinstance(n, dict):
            if "class" in n:
                del n["schema"]
            nodes.extend(n.values())
        elif isinstance(n, list):
            nodes.extend(n)
    node = header["model"]
    del node["params"]["baseline"]
    for key in ("baseline_", "baseline_elements_", "baseline_energies_"):
        ref = node["fitted"].pop(key)
        if isinstance(ref, dict) and "__array__" in ref:
            arrays.pop(ref["__array__"])
    old = tmp_path / "old.npz"
    text = json.dumps(header).encode()
    np.savez(old, __header__=np.frombuffer(text, dtype=np.uint8), **arrays)
    assert zipfile.is_zipfile(old)
    loaded = load_model(old)
    assert loaded.baseline == "mean"
    np.testing.assert_array_equal(loaded.predict(mols[:4]), model.predict(mols[:4]))
