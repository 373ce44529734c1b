"""The BLAS/LAPACK policy of molkrr: one matrix product, one Cholesky, dense SPD solves that survive
paper-scale n with threaded OpenBLAS.

BLAS policy
-----------
* Heavy products of the streamed objectives go through :func:`gemm`, i.e. scipy's BLAS. numpy and
  scipy wheels each bundle their own OpenBLAS; alternating between the two makes the idle pool's
  threads busy-wait against the working pool's threads (measured up to 1.8× slower with 2 threads), so
  a hot loop sticks to one library.
* Kernel matrices are built in row blocks (:mod:`molkrr.kernels.blocks`): never one threaded syrk
  on a huge matrix.
* One Cholesky, :func:`cholesky_lower_inplace`, for KRR and the metric-learning objectives.

``spd_factor`` factorises K + λI in place (Cholesky, lower triangle). Above
:data:`BLOCKED_CHOLESKY_MIN_N` it uses a right-looking blocked algorithm whose LAPACK calls never see
a matrix larger than :data:`CHOLESKY_BLOCK`: OpenBLAS's threaded dsyrk/dpotrf have been seen to
segfault for n ≥ 16000 with 2 threads (numpy issue 19685), and the blocked form costs the same
n³/3 flops as GEMMs. If the matrix is numerically not positive definite (duplicate molecules, λ → 0)
a growing jitter is added to the diagonal with a :class:`JitterWarning` stating the amount, and a
:class:`~molkrr.errors.NumericalError` is raised if even a large jitter fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dgemm

from .errors import NumericalError

#: n above which the blocked Cholesky is used.
BLOCKED_CHOLESKY_MIN_N = 12000
#: Size of the diagonal blocks of the blocked Cholesky.
CHOLESKY_BLOCK = 2048
#: Relative jitters tried, as multiples of the mean diagonal, before giving up.
JITTER_STEPS = (1e-10, 1e-8, 1e-6, 1e-4)
#: Fits keep the Cholesky factor of their kernel matrix in memory for the predictive std up to this size
#: (n ≈ 11,585; :mod:`molkrr.uncertainty`); larger factors are dropped after fit and rebuilt on first use.
KEEP_FACTOR_MAX_BYTES = 1 << 30


class JitterWarning(UserWarning):
    """A kernel matrix was not numerically positive definite; a diagonal jitter was added."""


class FactorOps:
    """The array operations the jitter policy of :func:`spd_factor` needs, here on numpy (float64, in place).

    A compute backend passes its own (:mod:`molkrr.backends`) so that every backend follows the one policy.
    """

    eps: float = float(np.finfo(np.float64).eps)

    def check(self, K: Any) -> tuple[int, float]:
        """(n, mean |diagonal|) of the square K (n, n); ValueError if not square, NumericalError if not finite."""
        if K.ndim != 2 or K.shape[0] != K.shape[1]:
            raise ValueError(f"kernel matrix must be square, got {K.shape}")
        if not all(np.isfinite(K[i : i + CHOLESKY_BLOCK]).all() for i in range(0, K.shape[0], CHOLESKY_BLOCK)):
            raise NumericalError("kernel matrix contains NaN or infinity (check sigma and the features)")
        return K.shape[0], float(np.mean(np.abs(np.diagonal(K))))

    def try_factor(self, K: Any, shift: float) -> Any:
        """Lower Cholesky factor of K + shift·I (here in place in K), or None if not numerically positive definite."""
        np.einsum("ii->i", K)[:] += shift
        try:
            cholesky_lower_inplace(K)
        except np.linalg.LinAlgError:
            return None
        return K

    def min_pivot(self, L: Any) -> float:
        """The smallest diagonal entry of the factor L."""
        return float(np.min(np.diagonal(L)))


def spd_factor(build: Callable[[], Any], lam: float = 0.0, *, ops: FactorOps | None = None) -> tuple[Any, float]:
    """Cholesky factor of K + λI with molkrr's one jitter policy (:data:`JITTER_STEPS`).

    build : zero-argument callable returning a fresh symmetric (n, n) K (numpy: float64 C-contiguous,
        factored in place); it is called again (instead of keeping a copy of K in memory) if a jitter
        has to be added.
    ops : the backend's :class:`FactorOps` (None: numpy).
    Returns (L, λ used): on numpy L's lower triangle is the factor (the upper triangle is garbage); use
    it with :func:`spd_solve`. A jitter of ``JITTER_STEPS[k]`` × mean diagonal is added, growing, when
    K + λI is not numerically positive definite (failed factorisation, or a pivot² at rounding level:
    duplicate rows or λ = 0, α would be noise), with a :class:`JitterWarning`; NumericalError if all fail.
    """
    ops = _NUMPY_FACTOR_OPS if ops is None else ops
    K = build()
    n, scale = ops.check(K)
    scale = scale or 1.0
    extra = 0.0
    for attempt, rel in enumerate((0.0,) + JITTER_STEPS):
        extra = rel * scale
        if attempt > 0:
            del K
            K = build()
        L = ops.try_factor(K, lam + extra)
        if L is None:
            continue
        if ops.min_pivot(L) ** 2 <= n * ops.eps * scale:
            continue  # a pivot at rounding level: numerically singular (duplicate rows, λ = 0), α would be noise
        if attempt > 0:
            warnings.warn(
                f"kernel matrix (n={n}) is not numerically positive definite with lam={lam:g}; "
                f"added a diagonal jitter of {extra:.3g} ({rel:g} x mean diagonal). "
                "Increase lam or remove duplicate molecules to silence this.",
                JitterWarning,
                stacklevel=3,
            )
        return L, lam + extra
    raise NumericalError(
        f"kernel matrix (n={n}) is not positive definite even with a jitter of {extra:.3g}; "
        "check for NaN features, a sigma far too large, or use a larger lam"
    )


def spd_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve (L Lᵀ) x = b with the factor returned by :func:`spd_factor`."""
    # L is C-ordered with the factor in its lower triangle, so L.T is Fortran-ordered with Lᵀ in its
    # upper triangle: LAPACK reads it in place instead of copying an n×n matrix.
    return sla.cho_solve((L.T, False), b, check_finite=False)


def lower_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """L⁻¹ B for the factor returned by :func:`spd_factor` (B of shape (n, k)): one triangular solve."""
    return sla.solve_triangular(L.T, B, trans="T", lower=False, check_finite=False)


def gemm(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False,
         out: np.ndarray | None = None, beta: float = 0.0) -> np.ndarray:
    """op(a) @ op(b) (+ beta·out) as a C-ordered array, by scipy's dgemm (C-contiguous inputs are not copied).

    C = op(a) op(b) is computed as Cᵀ = op(b)ᵀ op(a)ᵀ on the F-ordered transposed views. ``out``, if
    given, must be a C-contiguous array of the result's shape; it is overwritten with
    op(a) op(b) + beta·out.
    """
    if out is None:
        return dgemm(1.0, b.T, a.T, trans_a=int(trans_b), trans_b=int(trans_a)).T
    res = dgemm(1.0, b.T, a.T, trans_a=int(trans_b), trans_b=int(trans_a), beta=beta, c=out.T, overwrite_c=1)
    if not np.shares_memory(res, out):  # pragma: no cover - f2py copied: keep the contract anyway
        out[...] = res.T
    return out


def cholesky_lower_inplace(A: np.ndarray) -> None:
    """Factor the C-ordered SPD matrix whose lower triangle is A's in place: A's lower triangle becomes L
    (K = L Lᵀ); the strict upper triangle is neither read nor written except inside diagonal blocks.

    ``A.T`` is then the F-ordered upper factor U = Lᵀ that LAPACK routines read without a copy.
    Raises ``numpy.linalg.LinAlgError`` if the matrix is not numerically positive definite.
    """
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


_NUMPY_FACTOR_OPS = FactorOps()
