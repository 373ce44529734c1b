"""The linear (dot-product) kernel k = a · b."""

from __future__ import annotations

import numpy as np

from .base import Kernel, check_gradient_args
from .blocks import ROW_BLOCK, check_pair
from .registry import register


class Linear(Kernel):
    """k = a·b. No length scale: σ selection skips it. ∂k/∂a = b (force training needs a stationary kernel)."""

    name = "linear"
    has_length_scale = False

    def __init__(self) -> None:
        pass

    def with_sigma(self, sigma):
        return self

    def distances(self, A, B, *, b_sqnorms=None):
        A, B = check_pair(A, B)
        K = np.empty((A.shape[0], B.shape[0]))
        for start in range(0, A.shape[0], ROW_BLOCK):
            stop = min(start + ROW_BLOCK, A.shape[0])
            np.matmul(A[start:stop], B.T, out=K[start:stop])
        return K

    def from_distances(self, D):
        return D

    def value_and_gradient(self, A, B, weights, *, b_sqnorms=None, n_active=None, b_columns=None):
        A, B, w = check_gradient_args(A, B, weights)
        wb = w @ B
        return A @ wb, np.broadcast_to(wb, A.shape).copy()

@register("linear")
def LinearKernel(sigma: float | None = None) -> Linear:  # noqa: N802 - the name used before kernels were objects
    """Linear() (σ accepted and ignored, as before kernels were objects)."""
    return Linear()
