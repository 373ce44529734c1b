"""The Laplacian kernel k = exp(−‖a − b‖₁/σ) (Manhattan distance)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from .base import Kernel, check_gradient_args
from .blocks import ROW_BLOCK, check_pair
from .registry import register


@register("laplacian")
class Laplacian(Kernel):
    """k = exp(−‖a−b‖₁/σ) (scikit-learn's laplacian_kernel with γ = 1/σ; qmllib's laplacian_kernel).

    Not differentiable where a component of a − b vanishes; its gradient there uses sign(0) = 0.
    It has no second-derivative blocks (force training refuses it), and metric learning refuses it:
    as a function of A its gradient jumps wherever a component of A(a − b) changes sign, which
    L-BFGS's line search cannot follow.
    """

    name = "laplacian"

    def __init__(self, sigma: float | None = None) -> None:
        self.sigma = sigma

    def distances(self, A, B, *, b_sqnorms=None):
        A, B = check_pair(A, B)
        K = np.empty((A.shape[0], B.shape[0]))
        for start in range(0, A.shape[0], ROW_BLOCK):
            stop = min(start + ROW_BLOCK, A.shape[0])
            K[start:stop] = cdist(A[start:stop], B, "cityblock")
        return K

    def from_distances(self, D):
        D *= -1.0 / self.checked_sigma()
        return np.exp(D, out=D)

    def value_and_gradient(self, A, B, weights, *, b_sqnorms=None, n_active=None, b_columns=None):
        A, B, w = check_gradient_args(A, B, weights)
        K = self(A, B)
        value = K @ w
        K *= w[None, :]
        out = np.empty_like(A)
        block = max(1, (1 << 22) // max(1, B.size))  # rows of A per (rows, n_b, d) temporary
        for start in range(0, A.shape[0], block):
            stop = min(start + block, A.shape[0])
            S = np.sign(A[start:stop, None, :] - B[None, :, :])
            out[start:stop] = -np.einsum("im,imd->id", K[start:stop], S) / self.checked_sigma()
        return value, out


#: The name used before kernels were objects.
LaplacianKernel = Laplacian
