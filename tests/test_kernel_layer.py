"""The kernel layer: objects, profiles, second-derivative blocks (finite differences), KRR with objects."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

import molkrr
from molkrr.errors import InvalidInputError, NotDifferentiableError
from molkrr.kernels import Gaussian, Laplacian, Linear, Matern, StationaryKernel, make_kernel

STATIONARY = [Gaussian(sigma=1.3), Matern(nu=1.5, sigma=0.9), Matern(nu=2.5, sigma=2.0)]


@pytest.mark.parametrize("kernel", STATIONARY, ids=repr)
def test_profile_derivatives_equal_finite_differences(kernel):
    u = np.array([0.05, 0.3, 1.0, 2.5, 7.0])
    h = 1e-6
    g, g1, g2 = kernel.profile(u, 2)
    gp, g1p = kernel.profile(u + h, 1)
    gm, g1m = kernel.profile(u - h, 1)
    np.testing.assert_allclose(g1, (gp - gm) / (2 * h), rtol=1e-7)
    np.testing.assert_allclose(g2, (g1p - g1m) / (2 * h), rtol=1e-6)
    assert kernel.profile(np.zeros(1))[0][0] == 1.0


@pytest.mark.parametrize("kernel", STATIONARY, ids=repr)
def test_second_derivative_blocks_equal_finite_differences(kernel):
    """∂²k(a, b)/∂a∂bᵀ = c₁ I + c₂ (a − b)(a − b)ᵀ against central differences of the analytic ∂k/∂a."""
    rng = np.random.default_rng(3)
    A = rng.normal(size=(4, 5))
    B = rng.normal(size=(3, 5))
    c1, c2 = kernel.second_derivative_coefficients(A, B)
    g1 = kernel.gradient_coefficients(A, B)
    h = 1e-6
    for i in range(A.shape[0]):
        for j in range(B.shape[0]):
            delta = A[i] - B[j]
            H = c1[i, j] * np.eye(5) + c2[i, j] * np.outer(delta, delta)
            fd = np.empty((5, 5))
            for q in range(5):  # column q: ∂/∂b_q of ∂k/∂a
                Bp, Bm = B[j].copy(), B[j].copy()
                Bp[q] += h
                Bm[q] -= h
                gp = kernel.gradient_coefficients(A[i : i + 1], Bp[None])[0, 0] * (A[i] - Bp)
                gm = kernel.gradient_coefficients(A[i : i + 1], Bm[None])[0, 0] * (A[i] - Bm)
                fd[:, q] = (gp - gm) / (2 * h)
            np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-8)
            # and ∂k/∂a itself against differences of the values
            ga = g1[i, j] * delta
            fa = np.array([(kernel(A[i : i + 1] + h * e, B[j : j + 1]) - kernel(A[i : i + 1] - h * e, B[j : j + 1]))[0, 0]
                           / (2 * h) for e in np.eye(5)])
            np.testing.assert_allclose(ga, fa, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kernel", STATIONARY, ids=repr)
def test_second_derivative_at_coincident_points_is_finite(kernel):
    A = np.random.default_rng(4).normal(size=(3, 4))
    c1, c2 = kernel.second_derivative_coefficients(A, A)
    assert np.isfinite(c1).all() and np.isfinite(c2).all()
    # at a = b the block is −(2/σ²) g′(0) I: positive (a valid covariance of derivatives)
    assert (np.diag(c1) > 0).all()


def test_kernels_without_second_derivatives_say_so():
    A = np.ones((2, 3))
    for k in (Laplacian(sigma=1.0), Linear()):
        with pytest.raises(NotDifferentiableError):
            k.second_derivative_coefficients(A, A)
        assert not k.twice_differentiable


def test_objects_and_names_are_the_same_kernels():
    rng = np.random.default_rng(5)
    A, B = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    for name, obj in [("gaussian", Gaussian(sigma=0.8)), ("matern52", Matern(nu=2.5, sigma=0.8)),
                      ("matern32", Matern(nu=1.5, sigma=0.8)), ("laplacian", Laplacian(sigma=0.8))]:
        np.testing.assert_array_equal(make_kernel(name, 0.8)(A, B), obj(A, B))
        assert make_kernel(obj) is obj and make_kernel(obj, 2.0) == obj.with_sigma(2.0) != obj
        assert clone(obj) == obj
    assert isinstance(make_kernel("matern52"), StationaryKernel)
    with pytest.raises(InvalidInputError, match="nu"):
        Matern(nu=0.5, sigma=1.0)(A, B)
    with pytest.raises(InvalidInputError, match="kernel must be"):
        make_kernel(3.0)


def test_symmetric_matrix_is_exactly_symmetric():
    X = np.random.default_rng(6).normal(size=(300, 40)) * 10
    for k in STATIONARY:
        K = k(X)
        assert np.array_equal(K, K.T) and (np.diag(K) == 1.0).all()


@pytest.fixture(scope="module")
def wavy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2
    return X, y


def test_kernel_ridge_takes_objects(wavy, tmp_path):
    X, y = wavy
    by_name = molkrr.KernelRidge("matern52", sigma=1.5, lam=1e-6).fit(X, y)
    by_obj = molkrr.KernelRidge(Matern(nu=2.5, sigma=1.5), lam=1e-6).fit(X, y)
    override = molkrr.KernelRidge(Matern(nu=2.5, sigma=9.0), sigma=1.5, lam=1e-6).fit(X, y)
    for m in (by_obj, override):
        np.testing.assert_array_equal(m.predict(X[:7]), by_name.predict(X[:7]))
    path = tmp_path / "krr.npz"
    molkrr.save_model(by_obj, path)
    again = molkrr.load_model(path)
    assert again.kernel == Matern(nu=2.5, sigma=1.5)
    np.testing.assert_array_equal(again.predict(X[:7]), by_obj.predict(X[:7]))


def test_selection_with_objects(wavy):
    X, y = wavy
    res = molkrr.select_hyperparameters(X, y, kernel=Matern(nu=2.5), lams=[1e-6, 1e-3])
    ref = molkrr.select_hyperparameters(X, y, kernel="matern52", lams=[1e-6, 1e-3])
    assert (res.sigma, res.lam) == (ref.sigma, ref.lam)
    np.testing.assert_array_equal(res.scores, ref.scores)
    lin = molkrr.select_hyperparameters(X, y, kernel=Linear(), lams=[1e-6, 1e-3])
    assert lin.sigma is None


def test_molecular_krr_with_a_kernel_object_forces(tmp_path):
    from molkrr import CoulombMatrix, Molecules
    from molkrr.model import finite_difference_forces

    rng = np.random.default_rng(2)
    mols = []
    for _ in range(30):
        R = np.array([[0, 0, 0], [1.1, 0, 0], [0, 1.0, 0], [0, 0, 1.2]], float) + 0.08 * rng.normal(size=(4, 3))
        mols.append((np.array([6, 1, 1, 8]), R))
    mols = Molecules.from_list([z for z, _ in mols], [r for _, r in mols],
                               energies=rng.normal(size=30))
    model = molkrr.MolecularKRR(CoulombMatrix(variant="unsorted"), kernel=Matern(nu=2.5, sigma=20.0), lam=1e-6)
    model.fit(mols)
    assert model.sigma_ == 20.0
    F = model.predict_forces(mols[:1])[0]
    fd = finite_difference_forces(model, mols[:1], h=1e-4)
    np.testing.assert_allclose(F, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())
    selected = molkrr.MolecularKRR(CoulombMatrix(variant="unsorted"), kernel=Matern(nu=2.5), lam=1e-6).fit(mols)
    assert selected.sigma_ is not None and selected.sigma_ > 0
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(molkrr.load_model(tmp_path / "m.npz").predict(mols), model.predict(mols))


class RationalQuadratic(StationaryKernel):
    """A kernel defined only here: k = (1 + u/2)^-1 (rational quadratic with α = 1)."""

    name = "rq-test"

    def __init__(self, sigma=None):
        self.sigma = sigma

    def profile(self, u, order=0, xp=np):
        t = 1.0 / (1.0 + 0.5 * u)
        return (t, -0.5 * t * t, 0.5 * t**3)[: order + 1]


def test_a_new_kernel_is_one_class_and_a_registration(wavy, tmp_path, monkeypatch):
    """Everything (KRR, selection, forces' gradient, metric learning, model files) follows from the profile."""
    from molkrr.kernels import KERNELS
    from molkrr.metric import mlkrr_loss_and_grad

    monkeypatch.setitem(KERNELS, "rq-test", RationalQuadratic)
    X, y = wavy
    model = molkrr.KernelRidge("rq-test", sigma=1.0, lam=1e-6).fit(X, y)
    assert molkrr.select_hyperparameters(X, y, kernel="rq-test", lams=[1e-6]).sigma > 0
    v, g = model.predict_with_gradient(X[:2])
    h = 1e-6
    fd = np.array([(model.predict(X[:1] + h * e) - model.predict(X[:1] - h * e))[0] / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(g[0], fd, rtol=1e-6)
    loss, grad = mlkrr_loss_and_grad(np.eye(3), X[:40], y[:40], X[40:70], y[40:70], 1.0, 1e-3, kernel="rq-test")
    assert np.isfinite(loss) and grad.shape == (3, 3)
    molkrr.save_model(model, tmp_path / "rq.npz")
    np.testing.assert_array_equal(molkrr.load_model(tmp_path / "rq.npz").predict(X[:5]), model.predict(X[:5]))
