"""The FALKON solver on a dask.distributed LocalCluster (2 workers): equal to the single-process solver,
representations computed per shard, sweeps as tasks. Selected by ``pytest -k dask``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster  # noqa: E402

import molkrr  # noqa: E402
from molkrr import KernelRidge, MolecularKRR, make_kernel  # noqa: E402
from molkrr.datasets import load_qm9  # noqa: E402
from molkrr.errors import InvalidInputError, ShapeMismatchError  # noqa: E402
from molkrr.representations import make_representation  # noqa: E402
from molkrr.selection import GridEdgeWarning  # noqa: E402
from molkrr.solvers.dask import (  # noqa: E402
    DaskNystrom,
    falkon_solve_dask,
    fit_molecular_krr_dask,
    scatter_shards,
    submit_sweep,
    validation_selection,
    validation_sweep,
)
from molkrr.solvers.falkon import choose_centers, falkon_solve  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 6))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    return X, y - y.mean()


def test_dask_solver_equals_the_single_process_solver(client, problem):
    X, y = problem
    k = make_kernel("gaussian", 2.0)
    C = X[choose_centers(len(X), 70, 0)]
    single = falkon_solve(k, X, y, 1e-6, C, tol=1e-10, block_rows=128)
    dist = falkon_solve_dask(client, k, X, y, 1e-6, C, n_shards=3, tol=1e-10, block_rows=128)  # uneven shards
    assert dist.converged and abs(dist.n_iter - single.n_iter) <= 1
    scale = np.abs(single.alpha).max()
    np.testing.assert_allclose(dist.alpha, single.alpha, rtol=0, atol=1e-8 * scale)


def test_dask_shards_keep_their_own_kernel_blocks(client, problem):
    X, y = problem
    k = make_kernel("gaussian", 2.0)
    C = X[:50]
    parts = scatter_shards(client, X, 2)
    op = DaskNystrom(client, k, parts, C)
    try:
        assert op.n_rows == [200, 200]
        assert op.held_bytes() == [200 * 50 * 8] * 2  # each worker holds K_s (n_s, m), nobody holds K_nm
        V = np.random.default_rng(0).normal(size=50)
        Knm = k(X, C)
        ref = Knm.T @ (Knm @ V)  # shard sums reorder the additions: round-off relative to the largest entry
        np.testing.assert_allclose(op.gram_matvec(V), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
        ref = Knm.T @ y  # y has mean zero: entries near zero beside O(1) ones carry the shard sums' round-off
        np.testing.assert_allclose(op.rmatvec([y[:200], y[200:]]), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    finally:
        op.close()


def test_dask_errors(client, problem):
    X, y = problem
    k = make_kernel("gaussian", 2.0)
    with pytest.raises(ShapeMismatchError):
        falkon_solve_dask(client, k, X, y[:10], 1e-6, X[:20])
    with pytest.raises(ShapeMismatchError, match="shards hold"):
        falkon_solve_dask(client, k, scatter_shards(client, X[:100], 2), y[:120], 1e-6, X[:20])
    with pytest.raises(InvalidInputError):
        falkon_solve_dask(client, k, X, y, -1.0, X[:20])
    with pytest.raises(InvalidInputError):
        falkon_solve_dask(client, k, X, y, 1e-6, X[:20], n_shards=0)


def test_dask_molecular_fit_with_features_per_shard_equals_single_process(client, tmp_path):
    mols = load_qm9(130, seed=8, unit="kcal/mol")
    train, query = mols[:120], mols[120:]
    kw = dict(sigma=40.0, lam=1e-6, solver="falkon", n_centers=40)
    local = MolecularKRR(make_representation("fchl19"), **kw)
    local.fit(train)
    local.krr_ = KernelRidge(local.kernel, 40.0, 1e-6, solver="falkon", n_centers=40, cg_tol=1e-12).fit(
        local.features(train), train.energies
    )
    dist = fit_molecular_krr_dask(client, MolecularKRR(make_representation("fchl19"), **kw), train, tol=1e-12)
    np.testing.assert_allclose(dist.krr_.X_fit_, local.krr_.X_fit_, rtol=1e-12, atol=1e-12)
    e_local, f_local = local.predict_energies_and_forces(query)
    e_dist, f_dist = dist.predict_energies_and_forces(query)
    np.testing.assert_allclose(e_dist, e_local, rtol=1e-8)
    for a, b in zip(f_dist, f_local):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8 * np.abs(b).max())
    dist.save(tmp_path / "d.npz")
    np.testing.assert_array_equal(molkrr.load_model(tmp_path / "d.npz").predict(query), e_dist)
    with pytest.raises(InvalidInputError, match="sigma and lam"):
        fit_molecular_krr_dask(client, MolecularKRR(sigma=None, solver="falkon"), train)


def _square_plus(x, *, offset):
    return float(x * x + offset.sum())


def test_dask_sweeps_run_as_tasks(client, problem):
    X, y = problem
    assert submit_sweep(client, _square_plus, [{"x": 1.0}, {"x": 3.0}], offset=np.ones(4)) == [5.0, 13.0]
    sigmas, lams = [1.0, 3.0], [1e-6, 1e-3]
    table = validation_sweep(client, X[:300], y[:300], X[300:], y[300:], sigmas, lams, solver="cholesky")
    assert table.shape == (2, 2)
    for i, s in enumerate(sigmas):
        for j, lam in enumerate(lams):
            pred = KernelRidge("gaussian", s, lam, solver="cholesky").fit(X[:300], y[:300]).predict(X[300:])
            assert table[i, j] == pytest.approx(np.mean(np.abs(pred - y[300:])), rel=1e-10)
    with warnings.catch_warnings(record=True) as caught:  # its best cell, as every selection chooses it
        warnings.simplefilter("always")
        best = validation_selection(client, X[:300], y[:300], X[300:], y[300:], sigmas, lams, solver="cholesky")
    i, j = np.unravel_index(np.argmin(table), table.shape)
    assert (best.sigma, best.lam) == (sigmas[i], lams[j])
    assert len([w for w in caught if issubclass(w.category, GridEdgeWarning)]) == 1  # two-point grids: on an edge
