"""MLKRR with any stationary kernel: loss against brute force, gradient against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from molkrr import MLKRR
from molkrr.errors import InvalidInputError
from molkrr.kernels import Gaussian, Matern, StationaryKernel
from molkrr.metric import mlkrr_loss_and_grad


class GaussianByProfile(StationaryKernel):
    """The Gaussian written only as a profile: forces the generic stationary-kernel objective."""

    name = "gaussian-by-profile"

    def __init__(self, sigma=None):
        self.sigma = sigma

    def profile(self, u, order=0, xp=np):
        g = xp.exp(-0.5 * u)
        return (g, -0.5 * g, 0.25 * g)[: order + 1]


def brute_mlkrr(kernel, A, Xa, ya, XA, yA, sigma, lam):
    """Dense loops: K from the profile of the scaled squared distances, explicit solve."""

    def K(P, Q):
        D = (P @ A.T)[:, None, :] - (Q @ A.T)[None, :, :]
        return kernel.profile((D**2).sum(-1) / sigma**2)[0]

    alpha = np.linalg.solve(K(Xa, Xa) + lam * np.eye(len(ya)), ya)
    r = K(XA, Xa) @ alpha - yA
    return float(r @ r)


@pytest.fixture
def data():
    rng = np.random.default_rng(11)
    Xa, XA = rng.standard_normal((17, 5)), rng.standard_normal((13, 5))
    return Xa, np.sin(Xa[:, 0]) + Xa[:, 1], XA, np.sin(XA[:, 0]) + XA[:, 1]


KERNELS = ["matern52", Matern(nu=1.5), GaussianByProfile()]


@pytest.mark.parametrize("kernel", KERNELS, ids=str)
@pytest.mark.parametrize("c", [5, 3])
def test_loss_and_gradient(data, kernel, c):
    Xa, ya, XA, yA = data
    A = np.random.default_rng(c).standard_normal((c, 5)) * 0.5
    sigma, lam = 1.2, 1e-3
    loss, grad = mlkrr_loss_and_grad(A, Xa, ya, XA, yA, sigma, lam, kernel=kernel)
    k = Matern(nu=2.5) if kernel == "matern52" else kernel
    assert loss == pytest.approx(brute_mlkrr(k, A, Xa, ya, XA, yA, sigma, lam), rel=1e-10)
    h = 1e-6
    G = np.zeros_like(A)
    for idx in np.ndindex(A.shape):
        E = np.zeros_like(A)
        E[idx] = h
        G[idx] = (mlkrr_loss_and_grad(A + E, Xa, ya, XA, yA, sigma, lam, kernel=kernel)[0]
                  - mlkrr_loss_and_grad(A - E, Xa, ya, XA, yA, sigma, lam, kernel=kernel)[0]) / (2 * h)
    assert np.linalg.norm(grad - G) <= 1e-6 * np.linalg.norm(G)


def test_generic_path_equals_the_gaussian_path(data):
    """The stationary-kernel objective with the Gaussian profile reproduces the specialised Gaussian one."""
    Xa, ya, XA, yA = data
    A = np.random.default_rng(0).standard_normal((4, 5)) * 0.5
    ref = mlkrr_loss_and_grad(A, Xa, ya, XA, yA, 0.9, 1e-2, kernel=Gaussian())
    gen = mlkrr_loss_and_grad(A, Xa, ya, XA, yA, 0.9, 1e-2, kernel=GaussianByProfile())
    assert gen[0] == pytest.approx(ref[0], rel=1e-12)
    np.testing.assert_allclose(gen[1], ref[1], rtol=1e-10, atol=1e-12 * np.abs(ref[1]).max())


def test_blocked_generic_path():
    """n_α, n_A above one stream block: the K′ and Q′ passes in several blocks."""
    rng = np.random.default_rng(8)
    Xa, XA = rng.standard_normal((600, 4)), rng.standard_normal((300, 4))
    ya, yA = np.sin(Xa[:, 0]) + Xa[:, 1], np.sin(XA[:, 0]) + XA[:, 1]
    A = rng.standard_normal((3, 4)) * 0.5
    loss, grad = mlkrr_loss_and_grad(A, Xa, ya, XA, yA, 1.0, 1e-3, kernel="matern52")
    assert loss == pytest.approx(brute_mlkrr(Matern(nu=2.5), A, Xa, ya, XA, yA, 1.0, 1e-3), rel=1e-8)
    D = rng.standard_normal(A.shape)
    h = 1e-6
    f = lambda B: mlkrr_loss_and_grad(B, Xa, ya, XA, yA, 1.0, 1e-3, kernel="matern52")[0]  # noqa: E731
    assert np.sum(grad * D) == pytest.approx((f(A + h * D) - f(A - h * D)) / (2 * h), rel=1e-6)


def test_mlkrr_estimator_with_matern_lowers_validation_error():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 6))
    y = np.sin(2 * X[:, 0]) + X[:, 1]
    Xv = rng.standard_normal((60, 6))
    yv = np.sin(2 * Xv[:, 0]) + Xv[:, 1]
    est = MLKRR(kernel="matern52", sigma=3.0, lam=1e-6, max_iter=40, shuffle_every=10, random_state=0,
                validation_every=5).fit(X, y, validation_data=(Xv, yv))
    h = est.history_
    assert min(h["val_mae"]) < 0.8 * h["val_mae"][0]
    col = np.linalg.norm(est.components_, axis=0)
    assert col[0] > 1.5 and col[0] > col[1:].max()  # the non-linear feature gains the most weight


def test_laplacian_and_linear_are_refused(data):
    Xa, ya, XA, yA = data
    with pytest.raises(InvalidInputError, match="changes sign"):
        mlkrr_loss_and_grad(np.eye(5), Xa, ya, XA, yA, 1.0, 1e-3, kernel="laplacian")
    with pytest.raises(InvalidInputError, match="linear"):
        MLKRR(kernel="linear").fit(Xa, ya)
