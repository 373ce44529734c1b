"""The Gaussian kernel k = exp(−‖a − b‖²/(2σ²)), with its single-query force path."""

from __future__ import annotations

import numpy as np

from .base import StationaryKernel, check_gradient_args
from .blocks import active_squared_distances
from .registry import register

#: A single query row against at least this many reference rows takes the memory-lean path of
#: :mod:`molkrr.kernels._single_query`: one molecule's forces read the training matrix once.
SINGLE_QUERY_MIN_ROWS = 2048


@register("gaussian")
class Gaussian(StationaryKernel):
    """k = exp(−‖a−b‖²/(2σ²)) (scikit-learn's RBF with γ = 1/(2σ²); qmllib's gaussian_kernel).

    Profile g(u) = exp(−u/2), g′ = −g/2, g″ = g/4.
    """

    name = "gaussian"

    def __init__(self, sigma: float | None = None) -> None:
        self.sigma = sigma

    def profile(self, u, order=0, xp=np):
        g = xp.exp(-0.5 * u)
        if order == 0:
            return (g,)
        if order == 1:
            return g, -0.5 * g
        return g, -0.5 * g, 0.25 * g

    def from_distances(self, D):
        D *= -0.5 / self.checked_sigma() ** 2
        return np.exp(D, out=D)

    def value_and_gradient(self, A, B, weights, *, b_sqnorms=None, n_active=None, b_columns=None):
        A, B, w = check_gradient_args(A, B, weights)
        sigma = self.checked_sigma()
        if A.shape[0] == 1 and B.shape[0] >= SINGLE_QUERY_MIN_ROWS and B.flags.c_contiguous:
            from ._single_query import gaussian_value_and_gradient_one

            p = A.shape[1] if n_active is None else min(int(n_active), A.shape[1])
            if b_sqnorms is None:
                b_sqnorms = np.einsum("ij,ij->i", B, B)
            value, g = gaussian_value_and_gradient_one(
                A[0], B, np.asarray(b_sqnorms, dtype=np.float64), w, p, sigma, b_columns
            )
            grad = np.zeros_like(A)
            grad[0, :p] = g
            return np.array([value]), grad
        Ap, Bp, K = active_squared_distances(A, B, b_sqnorms, n_active)
        K = self.from_distances(K)
        value = K @ w
        K *= w[None, :]
        # Σ_m w_m k_m (b_m − a) / σ²
        grad = np.zeros_like(A)
        grad[:, : Ap.shape[1]] = (K @ Bp - Ap * K.sum(axis=1)[:, None]) / sigma**2
        return value, grad


#: The name used before kernels were objects.
GaussianKernel = Gaussian
