"""One-pass Gaussian kernel value and gradient for a single query row (the one-molecule force path).

For one query a and a large training matrix B (n_b × d) the two matrix–vector products of the generic
path (B a for the distances, then Bᵀ(w ∘ k) for the gradient) each stream B from memory: the force of
one molecule is memory-bound. Here each row b_m is read once: its dot product with a, the kernel value
and its contribution w_m k_m b_m are formed while the row is in cache, in parallel over row chunks
(numba, both cores). Only reassociation and contraction are allowed to the compiler, so NaN/inf keep
their IEEE meaning; sums differ from the BLAS path only in rounding order (~1e-15 relative).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_FAST = {"reassoc", "contract"}


@njit(parallel=True, fastmath=_FAST, cache=True)
def _gaussian_one_query(a, B, b_sqnorms, w, p, scale, n_chunks):  # pragma: no cover - compiled
    n = B.shape[0]
    a2 = 0.0
    for j in range(p):
        a2 += a[j] * a[j]
    values = np.zeros(n_chunks)
    partial = np.zeros((n_chunks, p))
    step = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = c * step
        hi = min(n, lo + step)
        g = partial[c]
        v = 0.0
        for i in range(lo, hi):
            dot = 0.0
            for j in range(p):
                dot += B[i, j] * a[j]
            d2 = a2 + b_sqnorms[i] - 2.0 * dot
            if d2 < 0.0:
                d2 = 0.0
            wk = w[i] * np.exp(-scale * d2)
            v += wk
            for j in range(p):
                g[j] += wk * (B[i, j] - a[j])
        values[c] = v
    return values.sum(), partial.sum(axis=0)


def gaussian_value_and_gradient_one(
    a: np.ndarray, B: np.ndarray, b_sqnorms: np.ndarray, w: np.ndarray, p: int, sigma: float
) -> tuple[float, np.ndarray]:
    """(Σ_m w_m k(a, b_m), ∂/∂a over the first p features, shape (p,)) for the Gaussian kernel.

    a : (d,) with a[p:] = 0; B : (n_b, d) C-contiguous; b_sqnorms : ‖b_m‖² over all d features.
    """
    n_chunks = 4 * numba.get_num_threads()
    value, s = _gaussian_one_query(a, B, b_sqnorms, w, p, 0.5 / sigma**2, n_chunks)
    grad = s / sigma**2  # Σ_m w_m k_m (b_m − a) / σ², accumulated row by row (no a·Σ w k cancellation)
    return float(value), grad
