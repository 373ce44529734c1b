"""Dense symmetric positive-definite solves that survive paper-scale n on two cores.

``spd_factor`` factorises K + λI in place (Cholesky, lower triangle). Above
:data:`BLOCKED_CHOLESKY_MIN_N` it uses a right-looking blocked algorithm whose LAPACK calls never see
a matrix larger than :data:`CHOLESKY_BLOCK`: OpenBLAS's threaded dsyrk/dpotrf have been seen to
segfault for n ≥ 16000 on these machines (numpy issue 19685), and the blocked form costs the same
n³/3 flops as GEMMs. If the matrix is numerically not positive definite (duplicate molecules, λ → 0)
a growing jitter is added to the diagonal with a :class:`JitterWarning` stating the amount, and a
:class:`~molkrr.errors.NumericalError` is raised if even a large jitter fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.linalg as sla

from .errors import NumericalError

#: n above which the blocked Cholesky is used.
BLOCKED_CHOLESKY_MIN_N = 12000
#: Size of the diagonal blocks of the blocked Cholesky.
CHOLESKY_BLOCK = 2048
#: Relative jitters tried, as multiples of the mean diagonal, before giving up.
JITTER_STEPS = (1e-10, 1e-8, 1e-6, 1e-4)


class JitterWarning(UserWarning):
    """A kernel matrix was not numerically positive definite; a diagonal jitter was added."""


def spd_factor(build: Callable[[], np.ndarray], lam: float = 0.0) -> tuple[np.ndarray, float]:
    """Cholesky factor of K + λI, computed in place in the matrix ``build()`` returns.

    build : zero-argument callable returning a fresh symmetric (n, n) float64 C-contiguous K; it is
        called again (instead of keeping a copy of K in memory) if a jitter has to be added.
    Returns (L, λ used): L's lower triangle is the factor (the upper triangle is garbage); use it
    with :func:`spd_solve`.
    """
    K = build()
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"kernel matrix must be square, got {K.shape}")
    if not all(np.isfinite(K[i : i + CHOLESKY_BLOCK]).all() for i in range(0, K.shape[0], CHOLESKY_BLOCK)):
        raise NumericalError("kernel matrix contains NaN or infinity (check sigma and the features)")
    n = K.shape[0]
    scale = float(np.mean(np.abs(np.diagonal(K)))) or 1.0
    extra = 0.0
    for attempt, rel in enumerate((0.0,) + JITTER_STEPS):
        extra = rel * scale
        if attempt > 0:
            K = build()
        np.einsum("ii->i", K)[:] += lam + extra
        try:
            _cholesky_lower_inplace(K)
        except np.linalg.LinAlgError:
            continue
        if np.min(np.diagonal(K)) ** 2 <= n * np.finfo(np.float64).eps * scale:
            continue  # a pivot at rounding level: numerically singular (duplicate rows, λ = 0), α would be noise
        if attempt > 0:
            warnings.warn(
                f"kernel matrix (n={n}) is not numerically positive definite with lam={lam:g}; "
                f"added a diagonal jitter of {extra:.3g} ({rel:g} x mean diagonal). "
                "Increase lam or remove duplicate molecules to silence this.",
                JitterWarning,
                stacklevel=3,
            )
        return K, lam + extra
    raise NumericalError(
        f"kernel matrix (n={n}) is not positive definite even with a jitter of {extra:.3g}; "
        "check for NaN features, a sigma far too large, or use a larger lam"
    )


def spd_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve (L Lᵀ) x = b with the factor returned by :func:`spd_factor`."""
    # L is C-ordered with the factor in its lower triangle, so L.T is Fortran-ordered with Lᵀ in its
    # upper triangle: LAPACK reads it in place instead of copying an n×n matrix.
    return sla.cho_solve((L.T, False), b, check_finite=False)


def _cholesky_lower_inplace(A: np.ndarray) -> None:
    n = A.shape[0]
    if n < BLOCKED_CHOLESKY_MIN_N:
        c, info = sla.lapack.dpotrf(A.T, lower=False, overwrite_a=True, clean=False)
        # A.T is F-contiguous: dpotrf works in place on A's memory; its upper triangle is A's lower.
        if info != 0:
            raise np.linalg.LinAlgError(f"dpotrf info={info}")
        if not np.shares_memory(c, A):
            A[...] = c.T
        return
    b = CHOLESKY_BLOCK
    for k0 in range(0, n, b):
        k1 = min(k0 + b, n)
        Lkk = np.linalg.cholesky(A[k0:k1, k0:k1])  # raises LinAlgError if not PD
        A[k0:k1, k0:k1] = Lkk
        if k1 == n:
            break
        # panel: A[k1:, k0:k1] ← A[k1:, k0:k1] · Lkk⁻ᵀ
        P = sla.solve_triangular(Lkk, A[k1:, k0:k1].T, lower=True, check_finite=False).T
        A[k1:, k0:k1] = P
        # trailing update of the lower triangle, one row block at a time (GEMM, never SYRK on a huge matrix)
        for i0 in range(k1, n, b):
            i1 = min(i0 + b, n)
            A[i0:i1, k1:i1] -= P[i0 - k1 : i1 - k1] @ P[: i1 - k1].T
