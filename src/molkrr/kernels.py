"""Kernel functions on feature vectors, their values and their gradients.

The σ convention (stated once, used everywhere in molkrr)
-------------------------------------------------------
With r = ‖a − b‖₂ (Euclidean) and r₁ = ‖a − b‖₁ (Manhattan):

================  =====================================================  ==========================
name              k(a, b)                                                equals
================  =====================================================  ==========================
``gaussian``      exp(−r² / (2σ²))                                       sklearn RBF, γ = 1/(2σ²);
                                                                         qmllib gaussian_kernel
``laplacian``     exp(−r₁ / σ)                                           sklearn laplacian, γ = 1/σ;
                                                                         qmllib laplacian_kernel
``matern32``      (1 + √3 r/σ) exp(−√3 r/σ)                              sklearn Matern(σ, ν=1.5)
``matern52``      (1 + √5 r/σ + 5r²/(3σ²)) exp(−√5 r/σ)                  sklearn Matern(σ, ν=2.5)
``linear``        a · b                                                  (σ unused)
================  =====================================================  ==========================

The MLKRR paper writes its Gaussian as exp(−r²/σ_p²)/(√(2π)σ_p): σ = σ_p/√2, and the prefactor
only rescales λ.

``gradient(A, B, w)`` returns ∂/∂a_i Σ_m w_m k(a_i, b_m) for every row a_i of A, shape (n_a, d):
exactly the vector a KRR prediction's gradient needs (w = α). The Laplacian is not differentiable
where a component of a − b vanishes; its gradient there uses sign(0) = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.distance import cdist

from .errors import InvalidInputError, ShapeMismatchError

#: Rows per block when building kernel matrices: keeps temporaries small and avoids the threaded
#: OpenBLAS syrk path that crashes for n ≥ 16000 (see DESIGN.md).
ROW_BLOCK = 2048

#: A single query row against at least this many reference rows takes the memory-lean path of
#: :mod:`molkrr._single_query` (Gaussian kernel): one molecule's forces read the training matrix once.
SINGLE_QUERY_MIN_ROWS = 2048


def squared_distances(
    A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None, *, b_sqnorms: np.ndarray | None = None
) -> np.ndarray:
    """Squared Euclidean distances (n_a, n_b), by the Gram trick in row blocks, clipped at 0.

    b_sqnorms : precomputed ‖b_m‖² (n_b,), e.g. of a training set, saving one pass over B.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ShapeMismatchError(f"feature matrices of shapes {A.shape} and {B.shape} do not match")
    if out is None:
        out = np.empty((A.shape[0], B.shape[0]))
    a2 = np.einsum("ij,ij->i", A, A)
    b2 = np.einsum("ij,ij->i", B, B) if b_sqnorms is None else b_sqnorms
    for start in range(0, A.shape[0], ROW_BLOCK):
        stop = min(start + ROW_BLOCK, A.shape[0])
        blk = out[start:stop]
        np.matmul(A[start:stop], B.T, out=blk)
        blk *= -2.0
        blk += a2[start:stop, None]
        blk += b2[None, :]
        np.maximum(blk, 0.0, out=blk)
    return out


class Kernel:
    """A stationary or dot-product kernel with a width σ (see the module docstring)."""

    name = "kernel"
    differentiable = True

    def __init__(self, sigma: float = 1.0) -> None:
        sigma = float(sigma)
        if not np.isfinite(sigma) or sigma <= 0:
            raise InvalidInputError(f"sigma must be a positive finite number, got {sigma}")
        self.sigma = sigma

    def __call__(self, A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
        """Kernel matrix (n_a, n_b) between the rows of A and B (B = A if omitted)."""
        return self.from_distances(self.distances(A, A if B is None else B))

    def distances(self, A: np.ndarray, B: np.ndarray, *, b_sqnorms: np.ndarray | None = None) -> np.ndarray:
        """The σ-free pairwise quantity the kernel is a function of, (n_a, n_b) (r², r, r₁ or a·b).

        b_sqnorms : ‖b_m‖² if known (used by the Euclidean kernels, ignored by the others).
        """
        raise NotImplementedError

    def from_distances(self, D: np.ndarray) -> np.ndarray:
        """Kernel values from :meth:`distances`' output; may overwrite and return D.

        Computing D once and calling this for many σ is how (σ, λ) selection stays cheap.
        """
        raise NotImplementedError

    def gradient(self, A: np.ndarray, B: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """∂/∂a_i Σ_m w_m k(a_i, b_m), shape (n_a, d)."""
        raise NotImplementedError

    def value_and_gradient(
        self,
        A: np.ndarray,
        B: np.ndarray,
        weights: np.ndarray,
        *,
        b_sqnorms: np.ndarray | None = None,
        n_active: int | None = None,
        b_columns: Callable[[], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Σ_m w_m k(a_i, b_m) of shape (n_a,), its gradient ∂/∂a_i of shape (n_a, d)) from ONE kernel evaluation.

        b_sqnorms : ‖b_m‖² (n_b,) if known (Euclidean kernels use it to skip a pass over B).
        n_active : a promise that A[:, n_active:] is zero and that the caller ignores gradient columns
            from n_active on (they are returned as 0): then only B[:, :n_active] is read, which is what
            makes one-molecule forces from a large training set cheap (padded Coulomb matrices).
        b_columns : a callable returning Bᵀ as a C-contiguous (d, n_b) array (e.g. cached by a model);
            the Gaussian kernel's single-query path reads it when few features are active.
        """
        return self(A, B) @ weights, self.gradient(A, B, weights)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma!r})"


class GaussianKernel(Kernel):
    """k = exp(−‖a−b‖²/(2σ²))."""

    name = "gaussian"

    def distances(self, A, B, *, b_sqnorms=None):
        return squared_distances(A, B, b_sqnorms=b_sqnorms)

    def from_distances(self, D):
        D *= -0.5 / self.sigma**2
        return np.exp(D, out=D)

    def gradient(self, A, B, weights):
        return self.value_and_gradient(A, B, weights)[1]

    def value_and_gradient(self, A, B, weights, *, b_sqnorms=None, n_active=None, b_columns=None):
        A, B, w = _check_gradient_args(A, B, weights)
        if A.shape[0] == 1 and B.shape[0] >= SINGLE_QUERY_MIN_ROWS and B.flags.c_contiguous:
            from ._single_query import gaussian_value_and_gradient_one

            p = A.shape[1] if n_active is None else min(int(n_active), A.shape[1])
            if b_sqnorms is None:
                b_sqnorms = np.einsum("ij,ij->i", B, B)
            value, g = gaussian_value_and_gradient_one(
                A[0], B, np.asarray(b_sqnorms, dtype=np.float64), w, p, self.sigma, b_columns
            )
            grad = np.zeros_like(A)
            grad[0, :p] = g
            return np.array([value]), grad
        Ap, Bp, K = _active_squared_distances(A, B, b_sqnorms, n_active)
        K = self.from_distances(K)
        value = K @ w
        K *= w[None, :]
        # Σ_m w_m k_m (b_m − a) / σ²
        grad = np.zeros_like(A)
        grad[:, : Ap.shape[1]] = (K @ Bp - Ap * K.sum(axis=1)[:, None]) / self.sigma**2
        return value, grad


class _RadialKernel(Kernel):
    """Kernels of r = ‖a−b‖₂ with ∂k/∂a = −φ(r) (a − b)."""

    def _value(self, r: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _phi(self, r: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def distances(self, A, B, *, b_sqnorms=None):
        return np.sqrt(squared_distances(A, B, b_sqnorms=b_sqnorms))

    def from_distances(self, D):
        return self._value(D)

    def gradient(self, A, B, weights):
        return self.value_and_gradient(A, B, weights)[1]

    def value_and_gradient(self, A, B, weights, *, b_sqnorms=None, n_active=None, b_columns=None):
        A, B, w = _check_gradient_args(A, B, weights)
        Ap, Bp, r = _active_squared_distances(A, B, b_sqnorms, n_active)
        np.sqrt(r, out=r)
        value = self._value(r) @ w
        P = self._phi(r)
        P *= w[None, :]
        grad = np.zeros_like(A)
        grad[:, : Ap.shape[1]] = P @ Bp - Ap * P.sum(axis=1)[:, None]
        return value, grad


class Matern32Kernel(_RadialKernel):
    """k = (1 + √3 r/σ) exp(−√3 r/σ)."""

    name = "matern32"

    def _value(self, r):
        c = np.sqrt(3.0) / self.sigma
        return (1.0 + c * r) * np.exp(-c * r)

    def _phi(self, r):
        c = np.sqrt(3.0) / self.sigma
        return c * c * np.exp(-c * r)


class Matern52Kernel(_RadialKernel):
    """k = (1 + √5 r/σ + 5r²/(3σ²)) exp(−√5 r/σ)."""

    name = "matern52"

    def _value(self, r):
        c = np.sqrt(5.0) / self.sigma
        cr = c * r
        return (1.0 + cr + cr * cr / 3.0) * np.exp(-cr)

    def _phi(self, r):
        c = np.sqrt(5.0) / self.sigma
        cr = c * r
        return (c * c / 3.0) * (1.0 + cr) * np.exp(-cr)


class LaplacianKernel(Kernel):
    """k = exp(−‖a−b‖₁/σ)."""

    name = "laplacian"

    def from_distances(self, D):
        D *= -1.0 / self.sigma
        return np.exp(D, out=D)

    def distances(self, A, B, *, b_sqnorms=None):
        A = np.asarray(A, dtype=np.float64)
        B = np.asarray(B, dtype=np.float64)
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
            raise ShapeMismatchError(f"feature matrices of shapes {A.shape} and {B.shape} do not match")
        K = np.empty((A.shape[0], B.shape[0]))
        for start in range(0, A.shape[0], ROW_BLOCK):
            stop = min(start + ROW_BLOCK, A.shape[0])
            K[start:stop] = cdist(A[start:stop], B, "cityblock")
        return K

    def gradient(self, A, B, weights):
        A, B, w = _check_gradient_args(A, B, weights)
        Wk = self(A, B) * w[None, :]
        out = np.empty_like(A)
        block = max(1, (1 << 22) // max(1, B.size))  # rows of A per (rows, n_b, d) temporary
        for start in range(0, A.shape[0], block):
            stop = min(start + block, A.shape[0])
            S = np.sign(A[start:stop, None, :] - B[None, :, :])
            out[start:stop] = -np.einsum("im,imd->id", Wk[start:stop], S) / self.sigma
        return out


class LinearKernel(Kernel):
    """k = a·b (σ is accepted and ignored, so that every kernel takes the same parameters)."""

    name = "linear"

    def from_distances(self, D):
        return D

    def distances(self, A, B, *, b_sqnorms=None):
        A = np.asarray(A, dtype=np.float64)
        B = np.asarray(B, dtype=np.float64)
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
            raise ShapeMismatchError(f"feature matrices of shapes {A.shape} and {B.shape} do not match")
        K = np.empty((A.shape[0], B.shape[0]))
        for start in range(0, A.shape[0], ROW_BLOCK):
            stop = min(start + ROW_BLOCK, A.shape[0])
            np.matmul(A[start:stop], B.T, out=K[start:stop])
        return K

    def gradient(self, A, B, weights):
        A, B, w = _check_gradient_args(A, B, weights)
        return np.broadcast_to(w @ B, A.shape).copy()


KERNELS: dict[str, type[Kernel]] = {
    k.name: k for k in (GaussianKernel, LaplacianKernel, Matern32Kernel, Matern52Kernel, LinearKernel)
}


def make_kernel(name: str, sigma: float = 1.0) -> Kernel:
    """The kernel called ``name`` (one of :data:`KERNELS`) with width ``sigma``."""
    try:
        cls = KERNELS[name]
    except KeyError:
        raise InvalidInputError(f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}") from None
    return cls(sigma)


def _active_squared_distances(A, B, b_sqnorms, n_active):
    """(A[:, :p], B[:, :p], squared distances) using only the first p = n_active columns of B.

    Exact when A[:, p:] = 0: ‖a − b‖² = ‖a_p‖² + ‖b‖² − 2 a_p·b_p with ‖b‖² over all columns.
    """
    if n_active is None or n_active >= A.shape[1]:
        return A, B, squared_distances(A, B, b_sqnorms=b_sqnorms)
    p = int(n_active)
    if b_sqnorms is None:
        b_sqnorms = np.einsum("ij,ij->i", B, B)
    Ap, Bp = A[:, :p], B[:, :p]
    return Ap, Bp, squared_distances(Ap, Bp, b_sqnorms=b_sqnorms)


def _check_gradient_args(A, B, weights):
    A = np.atleast_2d(np.asarray(A, dtype=np.float64))
    B = np.asarray(B, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ShapeMismatchError(f"feature matrices of shapes {A.shape} and {B.shape} do not match")
    if w.shape[0] != B.shape[0]:
        raise ShapeMismatchError(f"{w.shape[0]} weights for {B.shape[0]} reference rows")
    return A, B, w
