"""KRR with derivative observations: every Gram block against finite differences, the force-trained
model's forces against finite differences of its own energy, persistence, selection and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from molkrr import derivative_krr as dk
from molkrr import load_model
from molkrr.errors import InvalidInputError, NotDifferentiableError, ShapeMismatchError
from molkrr.force_selection import GridEdgeWarning, select_force_hyperparameters
from molkrr.kernels import Gaussian, Laplacian, Matern
from molkrr.model import MolecularKRR, finite_difference_forces
from molkrr.molecules import Molecules
from molkrr.representations.coulomb import CoulombMatrix
from molkrr.representations.fchl19 import FCHL19

BASE = np.array([[0, 0, 0], [1.2, 0, 0], [-0.4, 1.0, 0.1], [1.6, 1.0, -0.2], [0.3, -0.9, 0.5]], dtype=float)
Z = np.array([6, 8, 1, 1, 1])


def toy_energy(R):
    """A smooth invariant pair potential (arbitrary units): the target surface of these tests."""
    d = np.linalg.norm(R[:, None] - R[None], axis=-1)
    iu = np.triu_indices(len(R), 1)
    return float(np.sum((d[iu] - 1.3) ** 2) + 0.3 * np.sum(np.exp(-d[iu])))


def toy_gradient(R):
    d = R[:, None] - R[None]
    r = np.linalg.norm(d, axis=-1) + np.eye(len(R))
    dEdr = 2 * (r - 1.3) - 0.3 * np.exp(-r)
    np.fill_diagonal(dEdr, 0.0)
    return np.einsum("ab,abk->ak", dEdr / r, d)


def toy_molecules(n, seed=0, scale=0.08):
    rng = np.random.default_rng(seed)
    Rs = [BASE + scale * rng.standard_normal(BASE.shape) for _ in range(n)]
    E = np.array([toy_energy(R) for R in Rs])
    F = np.concatenate([-toy_gradient(R) for R in Rs])
    return Molecules.from_list([Z] * n, Rs).with_labels(E, F)


def small_fchl(form="atomic"):
    return FCHL19(elements=[1, 6, 8], form=form, nRs2=6, nRs3=4)


REPS = {
    "local": (lambda: small_fchl("atomic"), Gaussian(3.0)),
    "fchl19-global": (lambda: small_fchl("global"), Matern(nu=2.5, sigma=8.0)),
    "cm": (lambda: CoulombMatrix(variant="unsorted"), Gaussian(20.0)),
}


def test_toy_gradient_is_right():
    R = BASE.copy()
    h = 1e-6
    fd = np.zeros_like(R)
    for a in range(len(R)):
        for k in range(3):
            P, M = R.copy(), R.copy()
            P[a, k] += h
            M[a, k] -= h
            fd[a, k] = (toy_energy(P) - toy_energy(M)) / (2 * h)
    np.testing.assert_allclose(toy_gradient(R), fd, atol=1e-7)


def test_rigid_complement():
    R = BASE + 0.1
    Q = dk.rigid_complement(R)
    assert Q.shape == (15, 9)
    np.testing.assert_allclose(Q.T @ Q, np.eye(9), atol=1e-12)
    c = R - R.mean(0)
    for k in range(3):
        t = np.zeros((5, 3))
        t[:, k] = 1
        assert np.abs(Q.T @ t.ravel()).max() < 1e-12
        assert np.abs(Q.T @ np.cross(np.eye(3)[k], c).ravel()).max() < 1e-12
    line = np.array([[0, 0, 0], [1.1, 0, 0], [2.3, 0, 0.0]])
    assert dk.rigid_complement(line).shape == (9, 4)  # 3n − 5 for a linear molecule


@pytest.mark.parametrize("name", sorted(REPS))
@pytest.mark.parametrize("targets", ["energy+forces", "forces"])
def test_gram_blocks_match_finite_differences(name, targets):
    """Rows of molecule B's gradient observations = d/dq_B of its energy row (and of nothing else), against
    every observation of molecule A: checks cov(∇, E) and cov(∇, ∇) (cov(E, ∇) by symmetry)."""
    make_rep, kernel = REPS[name]
    mols = toy_molecules(2, seed=1, scale=0.1)
    rep = make_rep().fit(mols)
    env = dk.environments(rep, mols, jacobians=True)
    rows = dk.row_layout(env, "energy+forces")
    K = dk.gram_matrix(kernel, env, "energy+forces", rows, lower_only=False)
    np.testing.assert_allclose(K, K.T, rtol=1e-12, atol=1e-14 * np.abs(K).max())
    np.testing.assert_array_equal(np.tril(dk.gram_matrix(kernel, env, "energy+forces", rows)), np.tril(K))
    Q = env.Q[1]
    RB = mols.positions[mols.atom_slice(1)]

    def energy_row_of_b(RBnew):  # cov(E_B(R_B), observations of A), Q_B held fixed
        m2 = Molecules.from_list([Z, Z], [mols.positions[mols.atom_slice(0)], RBnew])
        e2 = dk.environments(rep, m2, jacobians=True)
        e2.J[1] = np.ascontiguousarray(np.asarray(rep.jacobian(m2)[1]).reshape(-1, e2.X.shape[1], RBnew.size) @ Q)
        r2 = dk.row_layout(e2, "energy+forces")
        return dk.gram_matrix(kernel, e2, "energy+forces", r2, lower_only=False)[r2[1], r2[0] : r2[1]]

    h = 1e-4
    fd = np.array([(energy_row_of_b(RB + h * Q[:, k].reshape(-1, 3)) - energy_row_of_b(RB - h * Q[:, k].reshape(-1, 3)))
                   / (2 * h) for k in range(Q.shape[1])])
    analytic = K[rows[1] + 1 : rows[2], rows[0] : rows[1]]
    np.testing.assert_allclose(analytic, fd, atol=1e-6 * np.abs(analytic).max())
    if targets == "forces":  # the forces-only matrix is the gradient-gradient block of the joint one
        rf = dk.row_layout(env, "forces")
        Kf = dk.gram_matrix(kernel, env, "forces", rf, lower_only=False)
        keep = np.concatenate([np.arange(rows[m] + 1, rows[m + 1]) for m in range(2)])
        np.testing.assert_allclose(Kf, K[np.ix_(keep, keep)], rtol=1e-13, atol=1e-15 * np.abs(K).max())


@pytest.fixture(scope="module")
def toy_data():
    return toy_molecules(30, seed=0)


@pytest.mark.parametrize("name", sorted(REPS))
@pytest.mark.parametrize("targets", ["energy", "forces", "energy+forces"])
def test_model_forces_are_the_gradient_of_its_energy(toy_data, name, targets, tmp_path):
    make_rep, kernel = REPS[name]
    if targets == "energy" and name != "local":
        pytest.skip("the energy-only global model is KernelRidge (tested in test_model.py)")
    train, test = toy_data[:20], toy_data[25:27]
    model = MolecularKRR(make_rep(), kernel=kernel, lam=1e-6, lam_forces=1e-6, targets=targets).fit(train)
    E, F = model.predict_energies_and_forces(test)
    E_only = model.predict(test)  # the energy-only path: equal to round-off relative to the largest energy
    np.testing.assert_allclose(E, E_only, rtol=0, atol=1e-12 * max(1.0, np.abs(E_only).max()))
    for i in range(len(test)):
        fd = finite_difference_forces(model, test[i], h=1e-3, points=4)
        np.testing.assert_allclose(F[i], fd, atol=1e-6 * max(1.0, np.abs(fd).max()))
        np.testing.assert_allclose(F[i].sum(axis=0), 0.0, atol=1e-9 * max(1.0, np.abs(F[i]).max()))
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = load_model(path)
    E2, F2 = loaded.predict_energies_and_forces(test)
    np.testing.assert_array_equal(E2, E)
    np.testing.assert_array_equal(np.concatenate(F2), np.concatenate(F))
    assert loaded.targets == targets and loaded.lam_forces_ == model.lam_forces_


def test_forces_only_model_fixes_the_offset_from_energies(toy_data):
    train = toy_data[:20]
    shifted = train.with_labels(train.energies + 1000.0, train.forces)
    m1 = MolecularKRR(small_fchl(), kernel=Gaussian(3.0), lam_forces=1e-8, targets="forces").fit(train)
    m2 = MolecularKRR(small_fchl(), kernel=Gaussian(3.0), lam_forces=1e-8, targets="forces").fit(shifted)
    test = toy_data[25:]
    np.testing.assert_allclose(m2.predict(test) - m1.predict(test), 1000.0, rtol=1e-10)
    F1 = np.concatenate(m1.predict_forces(test))  # the shift's round-off is relative to the largest force
    np.testing.assert_allclose(np.concatenate(m2.predict_forces(test)), F1, rtol=0, atol=1e-9 * np.abs(F1).max())


def test_learning_from_forces_beats_learning_from_energies(toy_data):
    """The point of the exercise: 20 frames with forces predict held-out forces far better than 20 energies."""
    train, test = toy_data[:20], toy_data[20:]
    errors = {}
    for targets in ("energy", "energy+forces"):
        m = MolecularKRR(small_fchl(), kernel=Gaussian(3.0), lam=1e-8, lam_forces=1e-8, targets=targets).fit(train)
        errors[targets] = np.abs(np.concatenate(m.predict_forces(test)) - test.forces).mean()
    zero = np.abs(test.forces).mean()
    assert errors["energy+forces"] < 0.2 * errors["energy"] and errors["energy+forces"] < 0.1 * zero


def test_training_rows_are_reproduced_at_small_ridge(toy_data):
    train = toy_data[:8]
    m = MolecularKRR(small_fchl(), kernel=Gaussian(3.0), lam=1e-10, lam_forces=1e-10, targets="energy+forces").fit(train)
    E, F = m.predict_energies_and_forces(train)
    np.testing.assert_allclose(E, train.energies, rtol=1e-3)  # λ = 1e-10 on a nearly singular system
    np.testing.assert_allclose(np.concatenate(F), train.forces, atol=1e-3 * np.abs(train.forces).max())


def test_selection_on_forces_and_edge_warning(toy_data):
    rep = small_fchl().fit(toy_data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sel = select_force_hyperparameters(rep, toy_data[:25], toy_data.energies[:25], kernel="gaussian",
                                           targets="forces", sigmas=[0.05, 0.1], lam_forces=[1e-8])
    assert sel.sigma == 0.1  # far too small σ: the larger one wins, and it is on the edge of the grid
    assert any(issubclass(w.category, GridEdgeWarning) and "sigma" in str(w.message) for w in caught)
    assert len(sel.table) == 2 and all(np.isfinite(t[4]) for t in sel.table)
    model = MolecularKRR(small_fchl(), kernel="gaussian", sigma=None, lam=None, lam_forces=None,
                         targets="energy+forces")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        model.fit(toy_data[:25])
    assert model.sigma_ > 0 and model.lam_ > 0 and model.lam_forces_ > 0


def test_errors(toy_data):
    train = toy_data[:5]
    with pytest.raises(InvalidInputError, match="targets"):
        MolecularKRR(small_fchl(), targets="force").fit(train)
    with pytest.raises(ShapeMismatchError, match="forces"):
        MolecularKRR(small_fchl(), sigma=3.0, lam_forces=1e-8, targets="forces").fit(train.with_labels(train.energies))
    with pytest.raises(NotDifferentiableError, match="second derivatives"):
        MolecularKRR(small_fchl(), kernel=Laplacian(3.0), lam_forces=1e-8, targets="forces").fit(train)
    from molkrr.metric.mlkrr import MLKRR

    with pytest.raises(InvalidInputError, match="metric"):
        MolecularKRR(small_fchl(), metric=MLKRR(), sigma=3.0, lam_forces=1e-8, targets="forces").fit(train)


@pytest.mark.parametrize("kernel", [Gaussian(1.7), Matern(nu=1.5, sigma=2.0), Matern(nu=2.5, sigma=0.9)])
def test_pair_coefficients_equal_the_kernel_layer(kernel):
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((4, 5)), rng.standard_normal((6, 5))
    la, lb = np.array([1, 1, 6, 8]), np.array([1, 6, 6, 8, 8, 1])
    k, g1, c1, c2 = dk.pair_coefficients(kernel, A, B, la, lb, 2)
    mask = la[:, None] == lb[None, :]
    ref_c1, ref_c2 = kernel.second_derivative_coefficients(A, B)
    for got, ref in [(k, kernel(A, B)), (g1, kernel.gradient_coefficients(A, B)), (c1, ref_c1), (c2, ref_c2)]:
        # c₁, c₂ cross zero: entries there carry the round-off of O(1) neighbours (distances by another route)
        np.testing.assert_allclose(got, np.where(mask, ref, 0.0), rtol=0, atol=1e-12 * np.abs(ref).max())


def test_force_trained_model_drives_ase_md_and_optimisation(toy_data, tmp_path):
    """The docs' worked example in miniature: NVE through MolkrrCalculator conserves energy; BFGS relaxes."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    from molkrr.calculator import MolkrrCalculator

    model = MolecularKRR(small_fchl(), kernel=Gaussian(3.0), lam=1e-8, lam_forces=1e-8, targets="energy+forces",
                         energy_unit="eV").fit(toy_data[:20])
    model.save(tmp_path / "m.npz")
    atoms = toy_data[25:26].to_ase()[0]
    atoms.calc = MolkrrCalculator(tmp_path / "m.npz")
    F_model = model.predict_forces(toy_data[25:26])[0]  # round-off relative to the largest component
    np.testing.assert_allclose(atoms.get_forces(), F_model, rtol=0, atol=1e-12 * np.abs(F_model).max())
    atoms.set_momenta(np.zeros((5, 3)))
    dyn = VelocityVerlet(atoms, 0.25 * units.fs)
    e0 = atoms.get_total_energy()
    dyn.run(40)
    kinetic = atoms.get_kinetic_energy()  # potential energy turned into motion, at a conserved total
    assert kinetic > 1e-3 and abs(atoms.get_total_energy() - e0) < 1e-3 * kinetic
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=200)
    assert np.abs(atoms.get_forces()).max() < 0.05


def test_evidence_selection_scores_the_gp_marginal_likelihood():
    """score='evidence': each cell's score is the negative log marginal likelihood per row of the GP with the
    maximum-likelihood scale, checked against a dense slogdet of the same matrix."""
    from molkrr.datasets.frames import read_frames
    from molkrr.datasets.md import shipped_trajectory_path
    from molkrr.derivative_krr import gram_matrix, observations, row_layout, training_environments
    from molkrr.force_selection import select_force_hyperparameters
    from molkrr.kernels import make_kernel
    from molkrr.representations import FCHL19

    mols = read_frames(shipped_trajectory_path())[0][0:300:30]
    rep = FCHL19(form="atomic").fit(mols)
    sel = select_force_hyperparameters(rep, mols, mols.energies, sigmas=[1.0, 2.0, 4.0], lams=[1e-4], lam_forces=[1e-5],
                                       score="evidence")
    assert sel.sigma in (1.0, 2.0, 4.0) and len(sel.table) == 3
    env, grads = training_environments(rep, mols, "energy+forces")
    rows = row_layout(env, "energy+forces")
    y, e_rows, _ = observations(env, mols.energies, grads, "energy+forces", rows, True)
    for sigma, lam, lam_f, nll, _ in sel.table:
        K = gram_matrix(make_kernel("gaussian", sigma), env, "energy+forces", rows, np.where(e_rows, lam, lam_f),
                        lower_only=False)
        n = len(y)
        s2 = float(y @ np.linalg.solve(K, y)) / n
        logdet = np.linalg.slogdet(K)[1]
        assert nll == pytest.approx(0.5 * np.log(s2) + 0.5 * logdet / n, rel=1e-9, abs=1e-9)
    assert sel.score == min(row[3] for row in sel.table)
