"""The large-n solver (Nyström + FALKON-preconditioned CG): equal to the exact solver with all rows as
centres, equal to a dense solve of the Nyström normal equations with fewer, convergence, errors; the
KernelRidge/MolecularKRR/CLI hook: forces against finite differences, model files."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.exceptions import ConvergenceWarning

import molkrr
from molkrr import KernelRidge, MolecularKRR, make_kernel
from molkrr.datasets import load_qm9
from molkrr.errors import InvalidInputError, MolkrrError, ShapeMismatchError
from molkrr.model import finite_difference_forces
from molkrr.representations import make_representation
from molkrr.solvers import falkon as fk
from molkrr.solvers.falkon import choose_centers, falkon_solve


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 3.0
    Xq = rng.normal(size=(40, 5))
    return X, y, Xq


@pytest.mark.parametrize("kernel,sigma,lam", [("gaussian", 1.5, 1e-6), ("matern52", 2.0, 1e-5), ("laplacian", 4.0, 1e-6)])
def test_all_rows_as_centres_equal_the_exact_solver(problem, kernel, sigma, lam):
    X, y, Xq = problem
    exact = KernelRidge(kernel, sigma, lam, solver="cholesky").fit(X, y)
    fal = KernelRidge(kernel, sigma, lam, solver="falkon", n_centers=len(X), cg_tol=1e-13, cg_max_iter=100).fit(X, y)
    assert fal.solver_ == "falkon" and exact.solver_ == "cholesky"
    p_exact, p_fal = exact.predict(Xq), fal.predict(Xq)
    scale = np.abs(p_exact - exact.y_mean_).max()
    assert np.abs(p_fal - p_exact).max() <= 1e-8 * scale
    # with every row a centre the preconditioner is H itself: a handful of iterations
    assert fal.n_iter_ <= 5


def test_fewer_centres_equal_a_dense_solve_of_the_nystrom_equations(problem):
    """Independent check: (K_nmᵀK_nm + λ K_mm) α = K_nmᵀ y solved densely (numpy.linalg.solve)."""
    X, y, _ = problem
    k = make_kernel("gaussian", 1.5)
    lam, idx = 1e-4, choose_centers(len(X), 60, random_state=3)
    C = X[idx]
    y0 = y - y.mean()
    Knm, Kmm = k(X, C), k(C, C)
    res = falkon_solve(k, X, y0, lam, C, tol=1e-13, max_iter=300)
    assert res.converged and 0 < res.jitter <= 1e-13
    alpha_dense = np.linalg.solve(Knm.T @ Knm + lam * (Kmm + res.jitter * np.eye(60)), Knm.T @ y0)
    np.testing.assert_allclose(Knm @ res.alpha, Knm @ alpha_dense, rtol=0, atol=1e-8 * np.abs(y0).max())
    # multi-output: each column as if solved alone
    Y = np.column_stack([y0, np.cos(X[:, 3])])
    res2 = falkon_solve(k, X, Y, lam, C, tol=1e-13, max_iter=300)
    assert res2.alpha.shape == (60, 2)
    np.testing.assert_allclose(Knm @ res2.alpha[:, 0], Knm @ res.alpha, atol=1e-8 * np.abs(y0).max())


def test_streamed_blocks_equal_stored_blocks_and_float32_stays_close(problem):
    X, y, Xq = problem
    k = make_kernel("gaussian", 1.5)
    C = X[choose_centers(len(X), 80, 1)]
    y0 = y - y.mean()
    stored = falkon_solve(k, X, y0, 1e-5, C, tol=1e-12, block_rows=64)
    streamed = falkon_solve(k, X, y0, 1e-5, C, tol=1e-12, block_rows=64, store=False)
    np.testing.assert_allclose(streamed.alpha, stored.alpha, rtol=1e-10, atol=1e-10 * np.abs(stored.alpha).max())
    single = falkon_solve(k, X, y0, 1e-5, C, tol=1e-6, dtype=np.float32)
    p64, p32 = k(Xq, C) @ stored.alpha, k(Xq, C) @ single.alpha
    assert np.abs(p32 - p64).max() <= 1e-3 * np.abs(p64).max()


def test_cg_converges_to_the_stated_tolerance_and_warns_when_stopped(problem):
    X, y, _ = problem
    k = make_kernel("gaussian", 1.5)
    C = X[choose_centers(len(X), 50, 0)]
    y0 = y - y.mean()
    res = falkon_solve(k, X, y0, 1e-6, C, tol=1e-10, max_iter=500)
    assert res.converged and res.relative_residual <= 1e-10
    assert res.residuals[-1] == res.relative_residual and len(res.residuals) == res.n_iter
    # the preconditioner matters: far fewer iterations than the 50 unknowns × 10
    assert res.n_iter < 200
    with pytest.warns(ConvergenceWarning, match="stopped after 2 iterations"):
        short = falkon_solve(k, X, y0, 1e-6, C, tol=1e-14, max_iter=2)
    assert not short.converged and short.n_iter == 2


def test_progress_bar_shows_the_residual(problem, capsys):
    X, y, _ = problem
    falkon_solve(make_kernel("gaussian", 1.5), X, y - y.mean(), 1e-6, X[:40], tol=1e-8, progress=True)
    assert "residual=" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"lam": -1.0}, InvalidInputError),
        ({"lam": np.nan}, InvalidInputError),
        ({"tol": 0.0}, InvalidInputError),
        ({"max_iter": 0}, InvalidInputError),
        ({"centers": np.zeros((4, 3))}, ShapeMismatchError),
        ({"y": np.zeros(7)}, ShapeMismatchError),
        ({"dtype": np.int32}, InvalidInputError),
    ],
)
def test_bad_solver_input_raises_typed_errors(problem, kwargs, error):
    X, y, _ = problem
    args = {"kernel": make_kernel("gaussian", 1.0), "X": X, "y": y, "lam": 1e-6, "centers": X[:10]}
    args.update(kwargs)
    with pytest.raises(error):
        falkon_solve(**args)


def test_kernel_ridge_solver_choice_and_errors(problem, monkeypatch):
    X, y, _ = problem
    assert KernelRidge().get_params()["solver"] == "auto"
    assert KernelRidge(sigma=1.5).fit(X, y).solver_ == "cholesky"
    monkeypatch.setattr(fk, "AUTO_MAX_EXACT_N", 100)
    auto = KernelRidge(sigma=1.5, lam=1e-6, n_centers=50).fit(X, y)
    assert auto.solver_ == "falkon" and auto.X_fit_.shape == (50, 5) and auto.alpha_.shape == (50,)
    with pytest.raises(InvalidInputError, match="unknown solver"):
        KernelRidge(solver="lu").fit(X, y)
    for bad in (0, 2.5, True):
        with pytest.raises(MolkrrError):
            KernelRidge(solver="falkon", n_centers=bad).fit(X, y)
    # the same seed draws the same centres; centres are training rows
    a = KernelRidge(sigma=1.5, solver="falkon", n_centers=30, random_state=4).fit(X, y)
    b = KernelRidge(sigma=1.5, solver="falkon", n_centers=30, random_state=4).fit(X, y)
    np.testing.assert_array_equal(a.X_fit_, b.X_fit_)
    assert all((X == c).all(axis=1).any() for c in a.X_fit_)


def test_default_centres_grow_with_n():
    assert fk.default_n_centers(500) == 500
    assert fk.default_n_centers(10_000) == 4000
    assert fk.default_n_centers(10**7) == 15000


# ----------------------------------------------------------------------------- molecules
@pytest.fixture(scope="module")
def falkon_model():
    mols = load_qm9(160, seed=5, unit="kcal/mol")
    rep = make_representation("fchl19")
    model = MolecularKRR(rep, sigma=40.0, lam=1e-6, solver="falkon", n_centers=60).fit(mols[:150])
    return model, mols[150:]


def test_falkon_molecular_model_forces_equal_finite_differences(falkon_model):
    model, query = falkon_model
    assert model.krr_.solver_ == "falkon" and model.krr_.X_fit_.shape[0] == 60
    _, forces = model.predict_energies_and_forces(query[:2])
    for i in range(2):
        F_fd = finite_difference_forces(model, query[i], h=1e-3, points=4)
        assert np.abs(forces[i] - F_fd).max() <= 1e-6 * np.abs(F_fd).max()


def test_falkon_model_file_round_trip(falkon_model, tmp_path):
    model, query = falkon_model
    model.save(tmp_path / "m.npz")
    loaded = molkrr.load_model(tmp_path / "m.npz")
    assert loaded.solver == "falkon" and loaded.n_centers == 60 and loaded.krr_.solver_ == "falkon"
    np.testing.assert_array_equal(loaded.predict(query), model.predict(query))
    e0, f0 = model.predict_energies_and_forces(query[:3])
    e1, f1 = loaded.predict_energies_and_forces(query[:3])
    np.testing.assert_array_equal(e0, e1)
    for a, b in zip(f0, f1):
        np.testing.assert_array_equal(a, b)


def test_cli_train_with_falkon(tmp_path):
    from molkrr.cli import cli

    out = CliRunner().invoke(
        cli,
        ["train", "--dataset", "qm9", "--n-train", "200", "--n-test", "20", "--representation", "cm-sorted",
         "--sigma", "100", "--lam", "1e-6", "--solver", "falkon", "--n-centers", "50", "-o", str(tmp_path / "m.npz"), "-q"],
    )
    assert out.exit_code == 0, out.output
    model = molkrr.load_model(tmp_path / "m.npz")
    assert model.krr_.solver_ == "falkon" and model.krr_.X_fit_.shape[0] == 50
    assert "test MAE on 20 molecules" in out.output
