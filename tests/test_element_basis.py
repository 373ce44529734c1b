"""Per-element exact coordinates (molkrr.element_basis) and the Gram matrix built from them."""

from __future__ import annotations

import numpy as np

from molkrr import derivative_krr as dk
from molkrr.element_basis import fit_element_basis
from molkrr.kernels import Gaussian, Matern
from molkrr.molecules import Molecules
from molkrr.representations.fchl19 import FCHL19


def low_rank_rows(n, d, r, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, r)) @ rng.standard_normal((r, d)) + rng.standard_normal(d)


def test_basis_spans_features_and_blocks_exactly():
    X = low_rank_rows(200, 40, 7, 0)
    X[:, 30:] = 0.0  # structurally zero features stay zero in the basis
    extra = low_rank_rows(50, 40, 3, 1)
    extra[:, 30:] = 0.0
    b = fit_element_basis(X, lambda: iter([extra[:20], extra[20:]]))
    assert b.rank == 7 + 3 + 1  # the extra rows have an offset of their own: one more direction
    np.testing.assert_allclose(b.basis.T @ b.basis, np.eye(b.rank), atol=1e-12)
    assert not np.any(b.full_basis[30:]) and set(b.active) == set(range(30))
    P = b.coordinates(X)
    np.testing.assert_allclose(b.residuals(X, P), 0.0, atol=1e-11)
    np.testing.assert_allclose(b.lift(b.project_rows(extra)), extra, atol=1e-11)
    np.testing.assert_allclose(b.project_columns(extra.T[None]), (extra @ b.full_basis).T[None], atol=1e-12)
    # a query outside the span: distances from coordinates plus the residual norm
    q = np.random.default_rng(2).standard_normal((3, 40))
    pq = b.coordinates(q)
    rho = b.residuals(q, pq)
    d2 = ((pq[:, None, :] - P[None]) ** 2).sum(-1) + (rho**2).sum(-1)[:, None]
    np.testing.assert_allclose(d2, ((q[:, None, :] - X[None]) ** 2).sum(-1), rtol=1e-12)


def test_basis_of_one_point_and_of_nothing():
    b = fit_element_basis(np.ones((1, 5)))
    assert b.rank == 0
    np.testing.assert_array_equal(b.coordinates(np.ones((2, 5))), np.zeros((2, 0)))


def _frames(seed=0, n=7):
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [1.5, 0, 0], [-0.5, 1.3, 0.1], [1.9, 1.0, -0.3], [0.4, -1.0, 0.9], [-1.0, -0.6, -0.4]])
    numbers = [np.array([6, 8, 1, 1, 1, 1])] * (n - 2) + [np.array([6, 6, 1, 1, 1, 1])] * 2
    positions = [base + 0.08 * rng.standard_normal(base.shape) for _ in numbers]
    return Molecules.from_list(numbers, positions)


def _raw_gram(kernel, env, targets):
    """The Gram matrix from the raw features and Jacobians, molecule pair by molecule pair (no basis)."""
    rows = dk.row_layout(env, targets)
    K = np.zeros((rows[-1], rows[-1]))
    for i in range(len(env)):
        for j in range(len(env)):
            si, sj = env.env_slice(i), env.env_slice(j)
            A = (env.X[si][None], env.labels[si][None], None if env.J is None else env.J[i][None])
            B = (env.X[sj][None], env.labels[sj][None], None if env.J is None else env.J[j][None])
            blk = dk.gram_block(kernel, A, B, targets)
            K[rows[i] : rows[i + 1], rows[j] : rows[j + 1]] = blk.reshape(rows[i + 1] - rows[i], -1)
    return K


def test_gram_matrix_in_element_coordinates_equals_the_raw_features():
    mols = _frames()
    rep = FCHL19(elements=[1, 6, 8], form="atomic").fit(mols)
    env = dk.environments(rep, mols, jacobians=True)
    comp = env.compressed()
    assert set(comp.bases) == {1, 6, 8}
    assert all(b.rank < env.X.shape[1] for b in comp.bases.values())
    for kernel in (Gaussian(1.3), Matern(2.5, 2.0)):
        for targets in ("energy", "forces", "energy+forces"):
            rows = dk.row_layout(env, targets)
            K = dk.gram_matrix(kernel, env, targets, rows, lower_only=False)
            ref = _raw_gram(kernel, env, targets)
            np.testing.assert_allclose(K, ref, rtol=0, atol=1e-11 * np.abs(ref).max())


def test_prediction_in_element_coordinates_equals_the_raw_features():
    """Energies and ∂E/∂x of a fitted model, including queries far outside the training span."""
    mols = _frames(n=8)
    rep = FCHL19(elements=[1, 6, 8], form="atomic").fit(mols)
    env = dk.environments(rep, mols, jacobians=True)
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal((6, 3)) for _ in range(len(mols))]
    energies = rng.standard_normal(len(mols))
    queries = dk.environments(rep, _frames(seed=9, n=4))
    Xq = queries.X + np.where(queries.X != 0, 0.05, 0.0) * rng.standard_normal(queries.X.shape)
    Xq[:, -3:] += 0.2  # features no training environment has: a residual outside every span
    for kernel in (Gaussian(1.7), Matern(1.5, 2.5)):
        for targets in ("energy", "forces", "energy+forces"):
            model = dk.DerivativeKRR(kernel, None, 1e-3, 1e-3, targets).fit(env, energies, grads)  # α moderate: round-off × |α| stays small
            e, G = model._evaluate_stationary(kernel, Xq, queries.labels, gradient=True)
            e0, G0 = model._evaluate_raw(kernel, Xq, queries.labels, gradient=True)
            np.testing.assert_allclose(e, e0, rtol=1e-10, atol=1e-12 * np.abs(e0).max())
            np.testing.assert_allclose(G, G0, rtol=1e-9, atol=1e-11 * np.abs(G0).max())
            e1, none = model._evaluate_stationary(kernel, Xq, queries.labels, gradient=False)
            assert none is None
            np.testing.assert_allclose(e1, e, rtol=1e-13, atol=1e-15)


def test_released_jacobians_give_the_same_gram_matrix_and_weights():
    mols = _frames(n=6)
    rep = FCHL19(elements=[1, 6, 8], form="atomic").fit(mols)
    full = dk.environments(rep, mols, jacobians=True)
    lean = dk.environments(rep, mols, jacobians=True)
    lean.release_jacobians()
    assert lean.J is None and lean.Q is not None
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((6, 3)) for _ in range(len(mols))]
    energies = rng.standard_normal(len(mols))
    for targets in ("forces", "energy+forces"):
        rows = dk.row_layout(full, targets)
        np.testing.assert_array_equal(rows, dk.row_layout(lean, targets))
        K_full = dk.gram_matrix(Gaussian(1.5), full, targets, rows)
        K_lean = dk.gram_matrix(Gaussian(1.5), lean, targets, rows)
        # round-off is relative to the largest entry (BLAS blocking differs between CPUs), not to each entry
        np.testing.assert_allclose(K_lean, K_full, rtol=0, atol=1e-12 * np.abs(K_full).max())
        a = dk.DerivativeKRR(Gaussian(1.5), None, 1e-4, 1e-4, targets).fit(full, energies, grads)
        b = dk.DerivativeKRR(Gaussian(1.5), None, 1e-4, 1e-4, targets).fit(lean, energies, grads)
        np.testing.assert_allclose(b.W_, a.W_, rtol=0, atol=1e-11 * np.abs(a.W_).max())
        e_a = a.predict_env(full)
        # an entry of 0.1 beside O(1) neighbours carries their round-off: tolerance relative to the largest energy
        np.testing.assert_allclose(b.predict_env(full), e_a, rtol=0, atol=1e-10 * np.abs(e_a).max())
