"""Kernels equal scikit-learn's; analytic gradients equal central finite differences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.gaussian_process.kernels import Matern
from sklearn.metrics.pairwise import laplacian_kernel, linear_kernel, rbf_kernel

from molkrr.errors import InvalidInputError, MolkrrError, ShapeMismatchError
from molkrr.kernels import KERNELS, GaussianKernel, Kernel, make_kernel, squared_distances

NAMES = sorted(KERNELS)
SIGMAS = [0.7, 3.0]


def _reference(name: str, sigma: float, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The same kernel from scikit-learn (independent implementation)."""
    if name == "gaussian":
        return rbf_kernel(A, B, gamma=1.0 / (2.0 * sigma**2))
    if name == "laplacian":
        return laplacian_kernel(A, B, gamma=1.0 / sigma)
    if name == "linear":
        return linear_kernel(A, B)
    nu = {"matern32": 1.5, "matern52": 2.5}[name]
    return Matern(length_scale=sigma, nu=nu)(A, B)


@pytest.fixture(scope="module")
def AB() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(23, 6)), rng.normal(size=(17, 6))


# ---------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name", NAMES)
def test_values_equal_sklearn(name, sigma, AB):
    A, B = AB
    k = make_kernel(name, sigma)
    assert k.name == name and isinstance(k, Kernel)
    np.testing.assert_allclose(k(A, B), _reference(name, sigma, A, B), rtol=0, atol=1e-12)
    K = k(A)
    np.testing.assert_allclose(K, _reference(name, sigma, A, A), rtol=0, atol=1e-12)
    np.testing.assert_allclose(K, K.T, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_values_in_row_blocks(name, AB, monkeypatch):
    """The row-blocked builders give the same matrix as one block."""
    from molkrr.kernels import blocks, laplacian, linear

    A, B = AB
    k = make_kernel(name, 2.0)
    full = k(A, B)
    for module in (blocks, laplacian, linear):
        monkeypatch.setattr(module, "ROW_BLOCK", 5)  # 23 rows: blocks of 5, last one of 3
    np.testing.assert_allclose(k(A, B), full, rtol=0, atol=1e-13 * np.abs(full).max())  # linear: values beyond 1


@pytest.mark.parametrize("name", NAMES)
def test_from_distances_consistent(name, AB):
    A, B = AB
    base = make_kernel(name, 1.0)
    D = base.distances(A, B)
    for sigma in (0.3, 1.0, 5.0):
        k = make_kernel(name, sigma)
        np.testing.assert_allclose(k.from_distances(D.copy()), k(A, B), rtol=1e-14, atol=1e-15)
    # what the distances are
    diff = A[:, None, :] - B[None, :, :]
    expected = {
        "gaussian": (diff**2).sum(-1),
        "laplacian": np.abs(diff).sum(-1),
        "matern32": (diff**2).sum(-1),
        "matern52": (diff**2).sum(-1),
        "linear": A @ B.T,
    }[name]
    # the Gram trick's round-off is relative to the norms, not to each distance
    np.testing.assert_allclose(D, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_squared_distances():
    rng = np.random.default_rng(3)
    # large offset: the Gram trick cancels catastrophically, the clip keeps it non-negative
    A = rng.normal(size=(40, 30)) * 1e-4 + 50.0
    A[7] = A[3]
    D = squared_distances(A, A)
    assert D.shape == (40, 40)
    assert (D >= 0).all()
    scale = np.einsum("ij,ij->i", A, A)
    assert np.all(np.diagonal(D) <= 1e-13 * scale)
    assert D[3, 7] <= 1e-13 * scale[3]
    B = rng.normal(size=(9, 30))
    exact = ((B[:, None] - B[None]) ** 2).sum(-1)
    DB = squared_distances(B, B)
    np.testing.assert_allclose(DB, exact, rtol=0, atol=1e-12 * exact.max())  # Gram trick: round-off relative to the norms
    out = np.empty((9, 9))
    assert squared_distances(B, B, out=out) is out


def test_shape_mismatch_errors(AB):
    A, B = AB
    for name in NAMES:
        k = make_kernel(name, 1.0)
        with pytest.raises(ShapeMismatchError):
            k(A, B[:, :5])
        with pytest.raises(ShapeMismatchError):
            k(A[0], B)  # 1-D
        with pytest.raises(ShapeMismatchError):
            k.gradient(A, B[:, :5], np.ones(len(B)))
        with pytest.raises(ShapeMismatchError):
            k.gradient(A, B, np.ones(len(B) + 1))
    with pytest.raises(ShapeMismatchError):
        squared_distances(A, B.T)
    err = ShapeMismatchError("x")
    assert isinstance(err, MolkrrError) and isinstance(err, ValueError)


@pytest.mark.parametrize("sigma", [0.0, -1.0, np.nan, np.inf])
def test_invalid_sigma(sigma):
    A = np.ones((2, 3))
    for name in NAMES:
        if not make_kernel(name).has_length_scale:
            assert make_kernel(name, sigma)(A).shape == (2, 2)  # Linear: no σ to check
            continue
        with pytest.raises(InvalidInputError, match="sigma"):
            make_kernel(name, sigma)
        with pytest.raises(InvalidInputError, match="sigma"):  # objects are checked when used (scikit-learn style)
            make_kernel(name).with_sigma(sigma)(A)


def test_unknown_kernel():
    with pytest.raises(InvalidInputError, match="unknown kernel"):
        make_kernel("polynomial", 1.0)
    assert issubclass(InvalidInputError, ValueError)


def test_repr():
    assert repr(GaussianKernel(2.5)) == "Gaussian(sigma=2.5)"
    assert repr(make_kernel("matern52", 2.0)) == "Matern(nu=2.5, sigma=2.0)"


# ---------------------------------------------------------------------------------------- gradients
def _fd_gradient(k, A, B, w, h=1e-5):
    """Central differences of Σ_m w_m k(a_i, b_m) with respect to every a_i component."""
    G = np.empty_like(A)
    for j in range(A.shape[1]):
        Ap, Am = A.copy(), A.copy()
        Ap[:, j] += h
        Am[:, j] -= h
        G[:, j] = (k(Ap, B) @ w - k(Am, B) @ w) / (2 * h)
    return G


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name", NAMES)
def test_gradient_equals_finite_differences(name, sigma):
    rng = np.random.default_rng(7)
    B = rng.normal(size=(15, 5))
    A = rng.normal(size=(8, 5))
    if name == "laplacian":
        # B on a half-integer lattice, A shifted by a quarter: every |a_j − b_mj| ≥ 0.25, far from
        # the kinks, so the central differences (h = 1e-5) never straddle one
        B = 0.5 * np.round(2 * B)
        A = 0.5 * np.round(2 * A) + 0.25
        assert np.abs(A[:, None, :] - B[None]).min() >= 0.25 - 1e-12
    w = rng.normal(size=15)
    k = make_kernel(name, sigma)
    G = k.gradient(A, B, w)
    assert G.shape == A.shape
    fd = _fd_gradient(k, A, B, w)
    scale = np.abs(fd).max()
    assert np.abs(G - fd).max() <= 1e-6 * scale, (name, np.abs(G - fd).max(), scale)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_at_a_training_point_is_finite(name):
    """a = b_m exactly: r = 0 (radial kernels) must not give NaN."""
    rng = np.random.default_rng(8)
    B = rng.normal(size=(6, 4))
    w = rng.normal(size=6)
    k = make_kernel(name, 1.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G = k.gradient(B[:2], B, w)
    assert np.isfinite(G).all()
    if name != "laplacian":  # differentiable at r = 0: the self term contributes 0 there
        fd = _fd_gradient(k, B[:2].copy(), B, w, h=1e-6)
        np.testing.assert_allclose(G, fd, rtol=1e-5, atol=1e-5 * np.abs(fd).max())


def test_gradient_accepts_one_row():
    rng = np.random.default_rng(9)
    B = rng.normal(size=(5, 3))
    w = rng.normal(size=5)
    k = make_kernel("gaussian", 1.0)
    np.testing.assert_allclose(k.gradient(B[0] + 0.1, B, w), k.gradient((B[0] + 0.1)[None], B, w))


@pytest.mark.parametrize("name", ["gaussian", "laplacian", "matern32", "matern52", "linear"])
def test_value_and_gradient_equals_separate_calls_and_respects_n_active(name):
    rng = np.random.default_rng(7)
    B = rng.normal(size=(40, 9))
    w = rng.normal(size=40)
    A = rng.normal(size=(3, 9))
    A[:, 6:] = 0.0  # padded query rows
    k = make_kernel(name, 2.5)
    value, grad = k.value_and_gradient(A, B, w)
    ref_value, ref_grad = k(A, B) @ w, k.gradient(A, B, w)  # sums with w ~ N(0, 1): relative to the largest entry
    np.testing.assert_allclose(value, ref_value, rtol=0, atol=1e-12 * np.abs(ref_value).max())
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-12 * np.abs(ref_grad).max())
    norms = np.einsum("ij,ij->i", B, B)
    v6, g6 = k.value_and_gradient(A, B, w, b_sqnorms=norms, n_active=6)
    np.testing.assert_allclose(v6, value, rtol=0, atol=1e-10 * np.abs(value).max())  # relative to the largest
    np.testing.assert_allclose(g6[:, :6], grad[:, :6], rtol=0, atol=1e-10 * np.abs(grad).max())


@pytest.mark.parametrize("n_active", [None, 45, 20])
@pytest.mark.parametrize("columns", [False, True])
def test_single_query_paths_equal_the_blas_path(monkeypatch, n_active, columns):
    """One query row against many reference rows takes the single-query path (row-order numba pass,
    or with Bᵀ supplied and few active features, the feature-major pass); both must equal the generic
    two-GEMV path to rounding, with and without the padded-columns promise, and with a σ where many
    kernel values underflow."""
    import molkrr.kernels as kernels

    rng = np.random.default_rng(11)
    B = rng.normal(size=(kernels.SINGLE_QUERY_MIN_ROWS + 517, 50))
    w = rng.normal(size=B.shape[0])
    a = rng.normal(size=(1, 50))
    if n_active is not None:
        a[:, n_active:] = 0.0
    norms = np.einsum("ij,ij->i", B, B)
    calls = []

    def b_columns():
        calls.append(1)
        return np.ascontiguousarray(B.T)

    for sigma in (0.7, 3.0, 40.0):
        k = make_kernel("gaussian", sigma)
        v_one, g_one = k.value_and_gradient(a, B, w, b_sqnorms=norms, n_active=n_active,
                                            b_columns=b_columns if columns else None)
        with monkeypatch.context() as m:
            m.setattr(kernels, "SINGLE_QUERY_MIN_ROWS", 10**12)
            v_blas, g_blas = k.value_and_gradient(a, B, w, b_sqnorms=norms, n_active=n_active)
        scale = np.abs(w).sum()
        np.testing.assert_allclose(v_one, k(a, B) @ w, rtol=1e-12, atol=1e-13 * scale)
        np.testing.assert_allclose(v_one, v_blas, rtol=1e-12, atol=1e-13 * scale)
        np.testing.assert_allclose(g_one, g_blas, rtol=1e-11, atol=1e-13 * scale / sigma**2 * np.abs(B).max())
        if n_active is not None:
            assert not g_one[:, n_active:].any()
    # the feature-major copy is asked for only when it is used: Bᵀ given and at most 60 % of 50 active
    assert bool(calls) == (columns and n_active == 20)
