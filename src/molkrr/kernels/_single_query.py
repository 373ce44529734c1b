"""Gaussian kernel value and gradient for a single query row: the one-molecule force path.

For one query a against a large training matrix B (n_b × d) the work is a few flops per element of B,
so the time is the time to read B from memory. Two strategies, chosen by how much of a is non-zero
(p = number of leading features that can be non-zero, e.g. a padded Coulomb matrix):

* rows (p close to d): one pass over B in row order (numba, both cores). Each row's dot product with
  a, its kernel value and its contribution w_m k_m (b_m − a) are formed while the row is in cache,
  instead of two matrix–vector products that each stream B.
* columns (p ≤ COLUMNS_MAX_FRACTION · d, when the caller supplies Bᵀ in feature-major order): two
  BLAS matrix–vector products on the contiguous block Bᵀ[:p], which read p/d of the data twice,
  where a row-order pass would pull in whole cache lines of every row.

Sums differ from the generic path only in rounding order (only reassociation and contraction are
allowed to the compiler, so NaN and inf keep their IEEE meaning).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import njit, prange

#: Use the feature-major strategy when at most this share of the features is active.
COLUMNS_MAX_FRACTION = 0.6

_FAST = {"reassoc", "contract"}


@njit(parallel=True, fastmath=_FAST, cache=True)
def _gaussian_rows(a, B, b_sqnorms, w, p, scale, n_chunks):  # pragma: no cover - compiled
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


def _gaussian_columns(a, BT, b_sqnorms, w, p, scale):
    ap, block = a[:p], BT[:p]
    d2 = ap @ block  # (n_b,)
    d2 *= -2.0
    d2 += ap @ ap
    d2 += b_sqnorms
    np.maximum(d2, 0.0, out=d2)
    d2 *= -scale
    wk = np.exp(d2, out=d2)
    wk *= w
    value = float(wk.sum())
    return value, block @ wk - value * ap


def gaussian_value_and_gradient_one(
    a: np.ndarray,
    B: np.ndarray,
    b_sqnorms: np.ndarray,
    w: np.ndarray,
    p: int,
    sigma: float,
    b_columns: Callable[[], np.ndarray] | None = None,
) -> tuple[float, np.ndarray]:
    """(Σ_m w_m k(a, b_m), ∂/∂a over the first p features, shape (p,)) for the Gaussian kernel.

    a : (d,) with a[p:] = 0; B : (n_b, d) C-contiguous; b_sqnorms : ‖b_m‖² over all d features;
    b_columns : returns Bᵀ as a C-contiguous (d, n_b) array (cached by the caller), used when few
    features are active.
    """
    scale = 0.5 / sigma**2
    if b_columns is not None and p <= COLUMNS_MAX_FRACTION * B.shape[1]:
        value, s = _gaussian_columns(a, b_columns(), b_sqnorms, w, p, scale)
    else:
        value, s = _gaussian_rows(a, B, b_sqnorms, w, p, scale, 4 * numba.get_num_threads())
    return float(value), s / sigma**2  # Σ_m w_m k_m (b_m − a) / σ²
