"""Cholesky solves (linalg); KernelRidge equals scikit-learn's; gradients equal finite differences;
(σ, λ) selection; estimator checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.gaussian_process.kernels import Matern
from sklearn.kernel_ridge import KernelRidge as SkKernelRidge
from sklearn.model_selection import GridSearchCV

from molkrr import linalg
from molkrr.errors import MolkrrError, NumericalError, ShapeMismatchError
from molkrr.kernels import GaussianKernel, make_kernel
from molkrr.krr import KernelRidge, SelectionResult, default_sigmas, select_hyperparameters
from molkrr.linalg import JitterWarning, spd_factor, spd_solve

DIFFERENTIABLE = ["gaussian", "laplacian", "matern32", "matern52", "linear"]


@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 3.0
    Xq = rng.normal(size=(25, 4))
    return X, y, Xq


def _sklearn_model(kernel: str, sigma: float, lam: float) -> tuple[SkKernelRidge, bool]:
    """scikit-learn's KernelRidge with the same kernel; second item: it wants a precomputed Gram matrix."""
    if kernel == "gaussian":
        return SkKernelRidge(alpha=lam, kernel="rbf", gamma=1.0 / (2 * sigma**2)), False
    if kernel == "laplacian":
        return SkKernelRidge(alpha=lam, kernel="laplacian", gamma=1.0 / sigma), False
    if kernel == "linear":
        return SkKernelRidge(alpha=lam, kernel="linear"), False
    return SkKernelRidge(alpha=lam, kernel="precomputed"), True


def _sklearn_fit_predict(kernel, sigma, lam, X, y, Xq):
    model, precomputed = _sklearn_model(kernel, sigma, lam)
    if not precomputed:
        return model.fit(X, y).predict(Xq), model.dual_coef_
    matern = Matern(length_scale=sigma, nu={"matern32": 1.5, "matern52": 2.5}[kernel])
    model.fit(matern(X), y)
    return model.predict(matern(Xq, X)), model.dual_coef_


# ---------------------------------------------------------------------------------------- linalg
def _spd(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    return GaussianKernel(2.0)(X)


def test_spd_factor_and_solve():
    K = _spd(60)
    lam = 1e-3
    b = np.random.default_rng(1).normal(size=(60, 2))
    L, used = spd_factor(lambda: K.copy(), lam)
    assert used == lam
    x = spd_solve(L, b)
    M = K + lam * np.eye(60)
    np.testing.assert_allclose(M @ x, b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.tril(L), np.linalg.cholesky(M), rtol=0, atol=1e-12)


def test_spd_factor_fortran_ordered_input():
    K = _spd(30)
    L, _ = spd_factor(lambda: np.asfortranarray(K), 1e-3)
    np.testing.assert_allclose(np.tril(L), np.linalg.cholesky(K + 1e-3 * np.eye(30)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [130, 128, 17])
def test_blocked_cholesky_equals_unblocked(n, monkeypatch):
    K = _spd(n, seed=n)
    lam = 1e-4
    L_ref, _ = spd_factor(lambda: K.copy(), lam)
    monkeypatch.setattr(linalg, "BLOCKED_CHOLESKY_MIN_N", 10)
    monkeypatch.setattr(linalg, "CHOLESKY_BLOCK", 16)  # 130 = 8·16 + 2: an uneven last block
    diagonal_blocks = []
    cholesky = np.linalg.cholesky
    monkeypatch.setattr(np.linalg, "cholesky", lambda a: diagonal_blocks.append(a.shape) or cholesky(a))
    L_blk, used = spd_factor(lambda: K.copy(), lam)
    monkeypatch.undo()
    assert used == lam
    assert len(diagonal_blocks) == -(-n // 16) and max(diagonal_blocks) == (16, 16)  # the blocked path ran
    np.testing.assert_allclose(np.tril(L_blk), np.tril(L_ref), rtol=0, atol=1e-12)
    b = np.arange(n, dtype=float)
    np.testing.assert_allclose((K + lam * np.eye(n)) @ spd_solve(L_blk, b), b, atol=1e-8)


def test_blocked_cholesky_rejects_indefinite(monkeypatch):
    monkeypatch.setattr(linalg, "BLOCKED_CHOLESKY_MIN_N", 10)
    monkeypatch.setattr(linalg, "CHOLESKY_BLOCK", 16)
    K = -np.eye(40)
    with pytest.raises(NumericalError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", JitterWarning)
            spd_factor(lambda: K.copy(), 0.0)


@pytest.mark.parametrize("name", ["gaussian", "laplacian", "matern32", "matern52"])
@pytest.mark.parametrize("seed", range(4))
def test_singular_matrix_gets_jitter_warning(name, seed):
    """Duplicate rows and λ = 0: K is singular; a jitter is added, announced, and the solve is usable."""
    rng = np.random.default_rng(seed)
    n = 60
    X = rng.normal(size=(n, 6))
    X[n - 1] = X[5]
    X[n - 2] = X[11]
    k = make_kernel(name, 2.5)
    calls = []

    def build():
        calls.append(1)
        return k(X)

    with pytest.warns(JitterWarning, match=r"jitter of \d") as rec:
        L, used = spd_factor(build, 0.0)
    assert used > 0 and f"{used:.3g}" in str(rec[0].message)
    assert len(calls) >= 2  # rebuilt, not modified twice
    y = np.sin(X[:, 0])
    y[n - 1], y[n - 2] = y[5], y[11]
    alpha = spd_solve(L, y)
    assert np.isfinite(alpha).all()
    K = k(X)
    np.testing.assert_allclose(K @ alpha + used * alpha, y, atol=1e-6)
    np.testing.assert_allclose(K @ alpha, y, atol=1e-3)  # interpolates the training data


def test_nan_matrix_raises_numerical_error():
    K = _spd(10)
    K[2, 3] = K[3, 2] = np.nan
    with pytest.raises(NumericalError, match="NaN"):
        spd_factor(lambda: K.copy(), 1e-3)
    assert issubclass(NumericalError, MolkrrError)


def test_hopeless_matrix_raises_numerical_error():
    K = -_spd(20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JitterWarning)
        with pytest.raises(NumericalError, match="not positive definite"):
            spd_factor(lambda: K.copy(), 0.0)


def test_non_square_matrix():
    with pytest.raises(ValueError):
        spd_factor(lambda: np.ones((3, 4)), 0.0)


# ---------------------------------------------------------------------------------------- equality with sklearn
@pytest.mark.parametrize("kernel", DIFFERENTIABLE)
@pytest.mark.parametrize("sigma, lam", [(1.5, 1e-3), (4.0, 1e-1)])
def test_equals_sklearn_uncentred(kernel, sigma, lam, problem):
    X, y, Xq = problem
    ours = KernelRidge(kernel=kernel, sigma=sigma, lam=lam, center=False).fit(X, y)
    ref_pred, ref_alpha = _sklearn_fit_predict(kernel, sigma, lam, X, y, Xq)
    scale = np.abs(ref_pred).max()
    np.testing.assert_allclose(ours.predict(Xq), ref_pred, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(ours.alpha_, ref_alpha, rtol=0, atol=1e-8 * np.abs(ref_alpha).max())
    assert ours.lam_ == lam
    np.testing.assert_array_equal(ours.y_mean_, 0.0)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "matern52"])
def test_centre_equals_sklearn_on_centred_y(kernel, problem):
    X, y, Xq = problem
    ours = KernelRidge(kernel=kernel, sigma=2.0, lam=1e-2, center=True).fit(X, y)
    assert ours.y_mean_ == pytest.approx(y.mean(), abs=1e-14)
    ref, _ = _sklearn_fit_predict(kernel, 2.0, 1e-2, X, y - y.mean(), Xq)
    np.testing.assert_allclose(ours.predict(Xq), ref + y.mean(), rtol=0, atol=1e-8 * np.abs(y).max())
    # far from the data a centred Gaussian model falls back to the mean, an uncentred one to 0
    far = np.full((1, 4), 1e3)
    assert KernelRidge(kernel=kernel, sigma=2.0, lam=1e-2).fit(X, y).predict(far)[0] == pytest.approx(y.mean())
    assert KernelRidge(kernel=kernel, sigma=2.0, lam=1e-2, center=False).fit(X, y).predict(far)[0] == pytest.approx(0)


def test_multi_output(problem):
    X, y, Xq = problem
    Y = np.column_stack([y, np.cos(X[:, 3]), -2 * y])
    model = KernelRidge(sigma=1.5, lam=1e-3).fit(X, Y)
    P = model.predict(Xq)
    assert P.shape == (len(Xq), 3) and model.alpha_.shape == (len(X), 3)
    for t in range(3):
        single = KernelRidge(sigma=1.5, lam=1e-3).fit(X, Y[:, t]).predict(Xq)
        # several right-hand sides take other BLAS kernels than one: round-off relative to the largest prediction
        np.testing.assert_allclose(P[:, t], single, rtol=0, atol=1e-12 * np.abs(single).max())
    ref, _ = _sklearn_fit_predict("gaussian", 1.5, 1e-3, X, Y - Y.mean(0), Xq)
    np.testing.assert_allclose(P, ref + Y.mean(0), rtol=0, atol=1e-8 * np.abs(Y).max())
    with pytest.raises(ShapeMismatchError):
        model.predict_gradient(Xq)


def test_predict_in_blocks(problem, monkeypatch):
    from molkrr.backends import numpy_backend  # KernelRidge.predict runs the backend's blocked prediction

    X, y, Xq = problem
    model = KernelRidge(sigma=1.5, lam=1e-3).fit(X, y)
    full = model.predict(Xq)
    monkeypatch.setattr(numpy_backend, "PREDICT_BLOCK", 7)
    np.testing.assert_allclose(model.predict(Xq), full, rtol=0, atol=1e-13 * np.abs(full).max())  # other GEMM blocking


# ---------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kernel", DIFFERENTIABLE)
def test_predict_gradient_equals_finite_differences(kernel):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 3))
    Xq = rng.normal(size=(6, 3))
    if kernel == "laplacian":  # away from the kinks |x_j − x_mj| = 0
        X = 0.5 * np.round(2 * X)
        Xq = 0.5 * np.round(2 * Xq) + 0.25
    y = np.sin(X).sum(1)
    model = KernelRidge(kernel=kernel, sigma=1.7, lam=1e-3).fit(X, y)
    G = model.predict_gradient(Xq)
    assert G.shape == Xq.shape
    h = 1e-5
    fd = np.empty_like(Xq)
    for j in range(3):
        e = np.zeros(3)
        e[j] = h
        fd[:, j] = (model.predict(Xq + e) - model.predict(Xq - e)) / (2 * h)
    assert np.abs(G - fd).max() <= 1e-6 * np.abs(fd).max()


# ---------------------------------------------------------------------------------------- estimator API
def test_params_and_clone():
    m = KernelRidge(kernel="laplacian", sigma=3.0, lam=1e-4, center=False)
    assert m.get_params() == {
        "kernel": "laplacian", "sigma": 3.0, "lam": 1e-4, "center": False,
        # large-n solver (molkrr.solvers.falkon)
        "solver": "auto", "n_centers": None, "cg_tol": 1e-6, "cg_max_iter": 500, "random_state": 0,
        # compute backend (molkrr.backends)
        "backend": None, "device": None,
    }
    c = clone(m)
    assert c.get_params() == m.get_params() and c is not m
    with pytest.raises(NotFittedError):
        m.predict(np.zeros((1, 2)))


def test_grid_search_cv(problem):
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (120, 2))
    y = np.sin(2 * X[:, 0]) + np.cos(3 * X[:, 1])
    search = GridSearchCV(
        KernelRidge(), {"sigma": [0.02, 0.5, 50.0], "lam": [1e-8, 1e-4]}, cv=3, scoring="neg_mean_absolute_error"
    ).fit(X, y)
    assert search.best_params_["sigma"] == 0.5
    assert search.best_estimator_.sigma == 0.5
    assert -search.best_score_ < 0.1
    assert search.score(X, y) > -0.05  # refit best model


@pytest.mark.parametrize("bad", [-1e-3, np.nan, np.inf])
def test_bad_lam(bad, problem):
    X, y, _ = problem
    with pytest.raises(ValueError, match="lam"):
        KernelRidge(lam=bad).fit(X, y)


@pytest.mark.parametrize("bad", [0.0, -2.0, np.nan])
def test_bad_sigma(bad, problem):
    X, y, _ = problem
    with pytest.raises(ValueError, match="sigma"):
        KernelRidge(sigma=bad).fit(X, y)


def test_bad_inputs(problem):
    X, y, Xq = problem
    with pytest.raises(ValueError):
        KernelRidge(kernel="cubic").fit(X, y)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError):
        KernelRidge().fit(Xn, y)
    yn = y.copy()
    yn[0] = np.inf
    with pytest.raises(ValueError):
        KernelRidge().fit(X, yn)
    with pytest.raises(ValueError):
        KernelRidge().fit(X, y[:-1])
    model = KernelRidge().fit(X, y)
    with pytest.raises(ValueError):
        model.predict(Xq[:, :3])
    Xqn = Xq.copy()
    Xqn[0, 0] = np.nan
    with pytest.raises(ValueError):
        model.predict(Xqn)


# ---------------------------------------------------------------------------------------- duplicates
def _with_duplicates():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(50, 3))
    X[40:] = X[:10]  # ten exact duplicates
    y = np.cos(X).sum(1)
    return X, y


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "matern32", "matern52"])
def test_duplicates_with_small_lam(kernel):
    X, y = _with_duplicates()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no JitterWarning needed: λ = 1e-9 keeps K + λI definite
        model = KernelRidge(kernel=kernel, sigma=1.0, lam=1e-9).fit(X, y)
    assert model.lam_ == 1e-9
    pred = model.predict(X)
    assert np.isfinite(model.alpha_).all() and np.isfinite(pred).all()
    np.testing.assert_allclose(pred, y, atol=1e-5)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "matern32", "matern52"])
def test_duplicates_with_zero_lam_get_jitter(kernel):
    X, y = _with_duplicates()
    with pytest.warns(JitterWarning, match="jitter"):
        model = KernelRidge(kernel=kernel, sigma=1.0, lam=0.0).fit(X, y)
    assert model.lam_ > 0
    pred = model.predict(X)
    assert np.isfinite(model.alpha_).all() and np.isfinite(pred).all()
    np.testing.assert_allclose(pred, y, atol=1e-3)
    assert np.abs(model.alpha_).max() < 1e8  # not the 1e16-sized noise of a rounding-level pivot


# ---------------------------------------------------------------------------------------- selection
@pytest.fixture(scope="module")
def wavy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (150, 2))
    return X, np.sin(2 * X[:, 0]) + np.cos(3 * X[:, 1])


@pytest.mark.parametrize("cv", [None, 4])
def test_selection_picks_the_clear_sigma(wavy, cv):
    X, y = wavy
    res = select_hyperparameters(X, y, sigmas=[0.02, 0.5, 50.0], lams=[1e-8, 1e-4], cv=cv)
    assert isinstance(res, SelectionResult)
    assert res.sigma == 0.5
    assert res.scores.shape == (3, 2)
    assert res.score == res.scores.min()
    assert res.scores[1].max() < 0.5 * min(res.scores[0].min(), res.scores[2].min())
    np.testing.assert_array_equal(res.sigmas, [0.02, 0.5, 50.0])
    np.testing.assert_array_equal(res.lams, [1e-8, 1e-4])


@pytest.mark.parametrize("kernel, center", [("gaussian", True), ("laplacian", False), ("matern32", True)])
def test_selection_scores_equal_leave_one_out_refits(kernel, center):
    """With cv = n every fold is one point whatever the shuffle: the eigendecomposition path must give
    exactly the leave-one-out MAE of KernelRidge refits."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(24, 3))
    y = np.tanh(X).sum(1) + 1.0
    sigmas, lams = [0.8, 2.5], [1e-4, 1e-1]
    res = select_hyperparameters(X, y, kernel=kernel, sigmas=sigmas, lams=lams, cv=len(y), center=center)
    expected = np.zeros((2, 2))
    for i, s in enumerate(sigmas):
        for j, lam in enumerate(lams):
            err = []
            for k in range(len(y)):
                keep = np.arange(len(y)) != k
                m = KernelRidge(kernel=kernel, sigma=s, lam=lam, center=center).fit(X[keep], y[keep])
                err.append(abs(m.predict(X[k : k + 1])[0] - y[k]))
            expected[i, j] = np.mean(err)
    np.testing.assert_allclose(res.scores, expected, rtol=1e-6)
    i, j = np.unravel_index(np.argmin(expected), expected.shape)
    assert (res.sigma, res.lam) == (sigmas[i], lams[j])


def test_selection_default_grid(wavy):
    X, y = wavy
    grid = default_sigmas(X)
    assert grid.shape == (11,) and np.all(np.diff(grid) > 0)
    med = np.median(np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))[np.triu_indices(len(X), 1)])
    assert grid[0] < med < grid[-1]
    res = select_hyperparameters(X, y)
    assert res.sigma in grid and res.scores.shape == (11, 5)
    assert res.score < 0.05


def test_selection_bad_arguments(wavy):
    X, y = wavy
    with pytest.raises(ShapeMismatchError):
        select_hyperparameters(X, y[:-1])
    with pytest.raises(ShapeMismatchError):
        select_hyperparameters(X[:, 0], y)
    with pytest.raises(ValueError, match="unknown kernel"):
        select_hyperparameters(X, y, kernel="cubic")
    for cv in (1, 0, len(y) + 1):
        with pytest.raises(ValueError, match="cv"):
            select_hyperparameters(X, y, cv=cv)
    with pytest.raises(ValueError, match="sigma"):
        select_hyperparameters(X, y, sigmas=[1.0, -1.0])
    with pytest.raises(ValueError, match="lam"):
        select_hyperparameters(X, y, sigmas=[1.0], lams=[1e-3, -1e-3])
    Xn = X.copy()
    Xn[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        select_hyperparameters(Xn, y, sigmas=[1.0])
    yn = y.copy()
    yn[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        select_hyperparameters(X, yn, sigmas=[1.0])
    for frac in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="validation_fraction"):
            select_hyperparameters(X, y, sigmas=[1.0], validation_fraction=frac)
    with pytest.raises(ValueError):
        select_hyperparameters(X[:1], y[:1], sigmas=[1.0])


def test_selection_linear_kernel_ignores_sigma(wavy):
    X, y = wavy
    res = select_hyperparameters(X, y, kernel="linear", sigmas=[1.0, 2.0], lams=[1e-3, 1e-1])
    assert res.scores.shape == (1, 2) and res.sigma is None  # no σ to select: only λ
    assert res.lam in (1e-3, 1e-1)
    ref = make_kernel("linear")(X[:3], X[:3])
    np.testing.assert_allclose(ref, X[:3] @ X[:3].T)
