"""The numpy backend: molkrr's numpy/scipy code behind the array operations of :mod:`molkrr.backends`.

Every operation is the call the numpy code of molkrr makes anyway (scipy's dgemm through
:func:`molkrr.linalg.gemm`, the in-place LAPACK Cholesky of :mod:`molkrr.linalg`, ``np.exp`` with
``out=``), so an algorithm written against the operations costs on numpy what its numpy code costs.
float64 on the CPU only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy.linalg.blas import dtrmm

from ..errors import NotDifferentiableError, NumericalError
from ..kernels.blocks import STREAM_BLOCK, squared_distances
from ..linalg import cholesky_lower_inplace, gemm, spd_factor, spd_solve

#: Query rows per block of a prediction (bounds the (block, n_train) kernel block).
PREDICT_BLOCK = 4096


class NumpyRows:
    """Training rows as the numpy backend keeps them: X (n, d), ‖x_m‖² (n,) and, on first use, Xᵀ (d, n)."""

    def __init__(self, X: np.ndarray) -> None:
        self.X = X
        self.sq_norms = np.einsum("ij,ij->i", X, X)
        self._columns: np.ndarray | None = None

    def columns(self) -> np.ndarray:
        """Xᵀ in feature-major order (d, n), built on first use (one-molecule force calls with few active features)."""
        if self._columns is None:
            self._columns = np.ascontiguousarray(self.X.T)
        return self._columns


class NumpyBackend:
    """The compute backend on numpy arrays (CPU, float64); see :mod:`molkrr.backends` for the operations."""

    name = "numpy"
    device = "cpu"
    dtype = np.float64
    xp = np
    #: Rows of a streamed block (the metric-learning objectives' :data:`~molkrr.kernels.blocks.STREAM_BLOCK`).
    block_rows = STREAM_BLOCK

    def __repr__(self) -> str:
        return "NumpyBackend()"

    # ------------------------------------------------------------------------------ arrays
    def asarray(self, x: Any) -> np.ndarray:
        """x as a float64 numpy array (no copy if it already is one)."""
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def to_numpy(x: Any) -> np.ndarray:
        """The public boundary: a float64 numpy array."""
        return np.asarray(x, dtype=np.float64)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)

    @staticmethod
    def concat(arrays: Sequence[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def copy(x: np.ndarray) -> np.ndarray:
        return x.copy()

    # ------------------------------------------------------------------------------ arithmetic
    @staticmethod
    def matmul(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
               out: np.ndarray | None = None, beta: float = 0.0) -> np.ndarray:
        """op(a) @ op(b) (+ beta·out, written into ``out``): scipy's dgemm (:func:`molkrr.linalg.gemm`)."""
        if out is not None and not out.flags.c_contiguous:  # gemm writes C-ordered outputs only
            res = gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), trans_a, trans_b)
            if beta == 0.0:
                out[...] = res
            else:
                out *= beta
                out += res
            return out
        return gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), trans_a, trans_b, out=out, beta=beta)

    @staticmethod
    def sq_norms(X: np.ndarray) -> np.ndarray:
        """‖x_i‖² of the rows of X (n,)."""
        return np.einsum("ij,ij->i", X, X)

    @staticmethod
    def squared_distances(A: np.ndarray, B: np.ndarray, b_sqnorms: np.ndarray | None = None) -> np.ndarray:
        """‖a_i − b_j‖² (n_a, n_b) by the Gram trick, clipped at 0 (:func:`molkrr.kernels.blocks.squared_distances`)."""
        return squared_distances(A, B, b_sqnorms=b_sqnorms)

    @staticmethod
    def exp_(x: np.ndarray) -> np.ndarray:
        """exp(x) in place."""
        return np.exp(x, out=x)

    @staticmethod
    def clamp_min_(x: np.ndarray, lo: float) -> np.ndarray:
        """max(x, lo) in place."""
        return np.maximum(x, lo, out=x)

    @staticmethod
    def fill_diagonal(M: np.ndarray, value: float, offset: int = 0) -> np.ndarray:
        """M[i, i + offset] = value for every i where that entry exists, in place."""
        n = min(M.shape[0], M.shape[1] - offset)
        if n > 0:
            M[np.arange(n), np.arange(n) + offset] = value
        return M

    @staticmethod
    def sum(x: np.ndarray, axis: int | None = None) -> np.ndarray:
        return x.sum(axis=axis)

    @staticmethod
    def row_max(M: np.ndarray) -> np.ndarray:
        return M.max(axis=1)

    @staticmethod
    def mean_abs(x: np.ndarray) -> float:
        return float(np.mean(np.abs(x)))

    # ------------------------------------------------------------------------------ factorisations
    def cholesky(self, H: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor of the SPD H (only its lower triangle is read), in place: the result is H,
        whose strict upper triangle is then garbage. NumericalError if H is not numerically positive definite."""
        try:
            cholesky_lower_inplace(H)
        except np.linalg.LinAlgError as exc:
            raise NumericalError(f"matrix is not numerically positive definite ({exc})") from exc
        return H

    def spd_factor(self, build: Callable[[], np.ndarray], lam: float = 0.0) -> tuple[np.ndarray, float]:
        """(L, λ used): :func:`molkrr.linalg.spd_factor`, the one jitter policy."""
        return spd_factor(build, lam)

    @staticmethod
    def spd_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Solve (L Lᵀ) x = b, b of shape (n,) or (n, t): two triangular solves (:func:`molkrr.linalg.spd_solve`)."""
        return spd_solve(L, b)

    @staticmethod
    def spd_matmul(H: np.ndarray, L: np.ndarray, V: np.ndarray) -> np.ndarray:
        """H V for the SPD H whose factor :meth:`cholesky` returned as L (here in H's memory): L (Lᵀ V) by two
        triangular products (dtrmm), V (n, k)."""
        U = L.T  # F-ordered, the factor Lᵀ in its upper triangle
        W = dtrmm(1.0, U, np.asfortranarray(V), side=0, lower=0, trans_a=0)  # Lᵀ V
        return np.ascontiguousarray(dtrmm(1.0, U, W, side=0, lower=0, trans_a=1, overwrite_b=1))  # L (Lᵀ V)

    # ------------------------------------------------------------------------------ memory and blocks
    def rows_per_block(self, n_cols: int) -> int:
        """Rows of one streamed block with ``n_cols`` columns."""
        return self.block_rows

    @staticmethod
    def itemsize() -> int:
        return 8

    @contextlib.contextmanager
    def memory_guard(self, what: str, need: int, fits: Callable[[int], str]) -> Iterator[None]:
        """No device memory to check on the CPU: the operating system decides."""
        yield

    # ------------------------------------------------------------------------------ kernel layer
    def kernel_matrix(self, kernel: Any, A: Any, B: Any = None) -> np.ndarray:
        return kernel(A, B)

    def value_and_gradient(self, kernel: Any, A: Any, B: Any, w: Any, *, b_sqnorms: Any = None,
                           n_active: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return kernel.value_and_gradient(A, B, w, b_sqnorms=b_sqnorms, n_active=n_active)

    def gradient_coefficients(self, kernel: Any, A: Any, B: Any) -> np.ndarray:
        if not hasattr(kernel, "gradient_coefficients"):
            raise NotDifferentiableError(f"kernel {kernel.name!r} has no gradient coefficients (not stationary)")
        return kernel.gradient_coefficients(A, B)

    def second_derivative_coefficients(self, kernel: Any, A: Any, B: Any) -> tuple[np.ndarray, np.ndarray]:
        return kernel.second_derivative_coefficients(A, B)

    # ------------------------------------------------------------------------------ KRR
    def krr_fit(self, kernel: Any, X: Any, y: Any, lam: float, return_factor: bool = False) -> tuple:
        """(α = (K + λ'I)⁻¹ y, λ' used) by one Cholesky with the one jitter policy; y (n,) or (n, t). With
        ``return_factor`` a third entry: the factor L (n, n), kept by a model for the predictive std."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        L, lam_used = spd_factor(lambda: kernel(X), float(lam))
        alpha = spd_solve(L, np.asarray(y, dtype=np.float64))
        return (alpha, lam_used, L) if return_factor else (alpha, lam_used)

    def rows(self, X: np.ndarray) -> NumpyRows:
        """The training rows with their squared norms (a fitted model caches this)."""
        return NumpyRows(X)

    def krr_predict(self, kernel: Any, X: np.ndarray, rows: NumpyRows, alpha: np.ndarray) -> np.ndarray:
        """Σ_m α_m k(x_i, x_m) for the rows of X, shape (n_q,) or (n_q, t), in blocks of query rows."""
        out = np.empty((X.shape[0],) + alpha.shape[1:])
        for start in range(0, X.shape[0], PREDICT_BLOCK):
            stop = min(start + PREDICT_BLOCK, X.shape[0])
            D = kernel.distances(X[start:stop], rows.X, b_sqnorms=rows.sq_norms)
            out[start:stop] = kernel.from_distances(D) @ alpha
        return out

    def krr_value_and_gradient(self, kernel: Any, X: np.ndarray, rows: NumpyRows, alpha: np.ndarray,
                               n_active: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Σ_m α_m k(x_i, x_m) (n_q,), its gradient (n_q, d)) in blocks of query rows (α of shape (n,))."""
        values = np.empty(X.shape[0])
        grads = np.empty_like(X)
        for start in range(0, X.shape[0], PREDICT_BLOCK):
            stop = min(start + PREDICT_BLOCK, X.shape[0])
            values[start:stop], grads[start:stop] = kernel.value_and_gradient(
                X[start:stop], rows.X, alpha, b_sqnorms=rows.sq_norms, n_active=n_active, b_columns=rows.columns,
            )
        return values, grads


__all__ = ["PREDICT_BLOCK", "NumpyBackend", "NumpyRows"]
