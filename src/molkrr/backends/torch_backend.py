"""The torch backend: molkrr's array operations, kernel layer and KRR solve on torch tensors.

The formulas are those of the numpy code, not re-derived: stationary kernels are evaluated through
their ``profile(u, order, xp=torch)`` (:mod:`molkrr.kernels.base`) and the KRR solve follows the one
jitter policy, :func:`molkrr.linalg.spd_factor` (with :class:`TorchFactorOps`). The metric-learning
objectives are written once against the array operations and live with their algorithms
(:mod:`molkrr.metric._array_objectives`); this module imports no algorithm.

Memory discipline: kernel matrices are built in row blocks of at most :data:`BLOCK_ELEMENTS`
elements (:data:`CPU_BLOCK_ELEMENTS` on the CPU, where blocks should stay in cache). Before a CUDA
computation the memory it needs is compared with the free device memory (:meth:`TorchBackend.memory_guard`),
and an out-of-memory failure during it is turned into a :class:`~molkrr.errors.DeviceMemoryError`
that says which size fits.

Precision: float64 unless the backend is built with ``dtype="float32"`` (docs/gpu.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import (
    BackendUnavailableError,
    DeviceMemoryError,
    InvalidInputError,
    NotDifferentiableError,
    NumericalError,
    ShapeMismatchError,
)
from ..kernels.base import Kernel, StationaryKernel
from ..kernels.laplacian import Laplacian
from ..kernels.linear import Linear
from ..linalg import FactorOps, spd_factor

#: Elements of one kernel block on a CUDA device (16 Mi: 128 MB per float64 temporary).
BLOCK_ELEMENTS = 1 << 24
#: Elements of one kernel block on the CPU (a block of a few hundred rows stays in cache).
CPU_BLOCK_ELEMENTS = 1 << 19
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class DeviceRows(NamedTuple):
    """Training rows as the torch backend keeps them: X (n, d) and ‖x_m‖² (n,) on the device."""

    X: torch.Tensor
    sq_norms: torch.Tensor


def resolve_device(device: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or None (a GPU if there is one) as a torch.device that exists here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"device={device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda}); use device='cpu'"
            )
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        dev = torch.device("cuda", index)
    return dev


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


class TorchFactorOps(FactorOps):
    """The jitter policy's operations (:class:`molkrr.linalg.FactorOps`) on tensors; out of place."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.eps = float(torch.finfo(dtype).eps)

    def check(self, K: torch.Tensor) -> tuple[int, float]:
        if K.ndim != 2 or K.shape[0] != K.shape[1]:
            raise ValueError(f"kernel matrix must be square, got {tuple(K.shape)}")
        if not bool(torch.isfinite(K).all()):
            raise NumericalError("kernel matrix contains NaN or infinity (check sigma and the features)")
        return K.shape[0], float(torch.mean(torch.abs(torch.diagonal(K))))

    def try_factor(self, K: torch.Tensor, shift: float) -> torch.Tensor | None:
        K.diagonal().add_(shift)
        L, info = torch.linalg.cholesky_ex(K)
        return None if int(info) != 0 else L

    def min_pivot(self, L: torch.Tensor) -> float:
        return float(torch.min(torch.diagonal(L)))


class TorchBackend:
    """The compute backend on torch tensors (device 'cpu', 'cuda' or 'cuda:N'); see :mod:`molkrr.backends`."""

    name = "torch"
    xp = torch

    def __init__(self, device: str | None = None, dtype: str = "float64") -> None:
        if dtype not in _DTYPES:
            raise InvalidInputError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.dtype = _DTYPES[dtype]
        self.block_elements = BLOCK_ELEMENTS if self.torch_device.type == "cuda" else CPU_BLOCK_ELEMENTS
        self._factor_ops = TorchFactorOps(self.dtype)

    def __repr__(self) -> str:
        return f"TorchBackend(device={self.device!r}, dtype={str(self.dtype).removeprefix('torch.')!r})"

    # ------------------------------------------------------------------------------ conversions
    def asarray(self, x: Any) -> torch.Tensor:
        """x (array-like or tensor) as a tensor of this backend's dtype on its device (never modified in place)."""
        if isinstance(x, torch.Tensor):
            return x.to(device=self.torch_device, dtype=self.dtype)
        return torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.torch_device).to(self.dtype)

    @staticmethod
    def numpy(t: torch.Tensor) -> np.ndarray:
        """A tensor as a float64 numpy array (the public boundary)."""
        return t.detach().to(device="cpu", dtype=torch.float64).numpy()

    to_numpy = numpy

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, device=self.torch_device, dtype=self.dtype)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, device=self.torch_device, dtype=self.dtype)

    @staticmethod
    def concat(arrays: Sequence[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.cat(list(arrays), dim=axis)

    @staticmethod
    def copy(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    # ------------------------------------------------------------------------------ arithmetic
    @staticmethod
    def matmul(a: torch.Tensor, b: torch.Tensor, *, trans_a: bool = False, trans_b: bool = False,
               out: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
        """op(a) @ op(b) (+ beta·out, written into ``out``)."""
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        if out is None:
            return a @ b
        if beta == 0.0:
            return torch.matmul(a, b, out=out)
        return out.addmm_(a, b, beta=beta)

    @staticmethod
    def sq_norms(X: torch.Tensor) -> torch.Tensor:
        """‖x_i‖² of the rows of X (n,)."""
        return torch.einsum("ij,ij->i", X, X)

    def squared_distances(self, A: torch.Tensor, B: torch.Tensor, b_sqnorms: torch.Tensor | None = None) -> torch.Tensor:
        """‖a_i − b_j‖² (n_a, n_b) by the Gram trick, clipped at 0."""
        b2 = self.sq_norms(B) if b_sqnorms is None else b_sqnorms
        return self._block_sq_distances(A, B, self.sq_norms(A), b2)

    @staticmethod
    def exp_(x: torch.Tensor) -> torch.Tensor:
        return x.exp_()

    @staticmethod
    def clamp_min_(x: torch.Tensor, lo: float) -> torch.Tensor:
        return x.clamp_(min=lo)

    @staticmethod
    def fill_diagonal(M: torch.Tensor, value: float, offset: int = 0) -> torch.Tensor:
        M.diagonal(offset=offset).fill_(value)
        return M

    @staticmethod
    def sum(x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
        return x.sum() if axis is None else x.sum(dim=axis)

    @staticmethod
    def row_max(M: torch.Tensor) -> torch.Tensor:
        return M.max(dim=1).values

    @staticmethod
    def mean_abs(x: torch.Tensor) -> float:
        return float(torch.mean(torch.abs(x)))

    # ------------------------------------------------------------------------------ blocks
    def rows_per_block(self, n_cols: int) -> int:
        """Rows of one streamed block with ``n_cols`` columns (:data:`BLOCK_ELEMENTS` elements at most)."""
        return max(1, self.block_elements // max(1, n_cols))

    def _pair(self, A: Any, B: Any) -> tuple[torch.Tensor, torch.Tensor]:
        A, B = self.asarray(A), self.asarray(B)
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
            raise ShapeMismatchError(f"feature matrices of shapes {tuple(A.shape)} and {tuple(B.shape)} do not match")
        return A, B

    # ------------------------------------------------------------------------------ memory
    def free_memory(self) -> int | None:
        """Free bytes on a CUDA device (None on the CPU, where the operating system decides)."""
        if self.torch_device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(self.torch_device)
        return int(free)

    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @contextlib.contextmanager
    def memory_guard(self, what: str, need: int, fits: Callable[[int], str]) -> Iterator[None]:
        """Raise DeviceMemoryError before (need > free) or during (allocation failure) a computation.

        need : bytes the computation needs; fits(available_bytes) → the sentence saying which size fits.
        """
        free = self.free_memory()
        if free is not None and need > free:
            raise DeviceMemoryError(
                f"{what} needs about {need / 1e9:.1f} GB on {self.device}, {free / 1e9:.1f} GB are free; {fits(free)}"
            )
        try:
            yield
        except (RuntimeError, MemoryError) as exc:
            if not (_is_oom(exc) or isinstance(exc, MemoryError)) or isinstance(exc, DeviceMemoryError):
                raise
            # sized by the memory that was free when the computation started (None on the CPU: less than it needed)
            avail = free if free is not None else need // 2
            where = f"{free / 1e9:.1f} GB were free" if free is not None else "the machine's memory ran out"
            raise DeviceMemoryError(
                f"{what} ran out of memory on {self.device} (needs about {need / 1e9:.1f} GB; {where}); {fits(avail)}"
            ) from exc

    # ------------------------------------------------------------------------------ kernel blocks
    @staticmethod
    def _sq_norms(X: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,ij->i", X, X)

    def _kernel_block(self, kernel: Kernel, A: torch.Tensor, B: torch.Tensor, a2, b2, diag: int | None = None):
        """k(A_i, B_j) for a block of rows; ``diag``: the block's rows start at that column of B (B is A),
        where the distance is exactly 0."""
        if isinstance(kernel, StationaryKernel):
            D = self._block_sq_distances(A, B, a2, b2)
            if diag is not None:
                D.diagonal(offset=diag).zero_()
            D.mul_(1.0 / kernel.checked_sigma() ** 2)
            return kernel.profile(D, 0, xp=torch)[0]
        if isinstance(kernel, Laplacian):
            D = torch.cdist(A, B, p=1)
            D.mul_(-1.0 / kernel.checked_sigma())
            return D.exp_()
        if isinstance(kernel, Linear):
            return A @ B.T
        raise InvalidInputError(
            f"kernel {kernel.name!r} has no torch implementation (stationary kernels, laplacian and linear have)"
        )

    @staticmethod
    def _block_sq_distances(A, B, a2, b2):
        D = A @ B.T
        D.mul_(-2.0)
        D.add_(a2[:, None])
        D.add_(b2[None, :])
        return D.clamp_(min=0.0)

    def _kernel_matrix(self, kernel: Kernel, A: torch.Tensor, B: torch.Tensor | None = None,
                       b_sqnorms: torch.Tensor | None = None) -> torch.Tensor:
        """Kernel matrix in row blocks; B None means A, and then only the lower triangle is computed and
        mirrored (exactly symmetric, distances exactly 0 on the diagonal)."""
        same = B is None
        B = A if same else B
        n_a, n_b = A.shape[0], B.shape[0]
        a2 = self._sq_norms(A)
        b2 = a2 if same else (self._sq_norms(B) if b_sqnorms is None else b_sqnorms)
        K = torch.empty((n_a, n_b), device=self.torch_device, dtype=self.dtype)
        step = self.rows_per_block(n_b)
        for i0 in range(0, n_a, step):
            i1 = min(i0 + step, n_a)
            if same:
                K[i0:i1, :i1] = self._kernel_block(kernel, A[i0:i1], B[:i1], a2[i0:i1], b2[:i1], diag=i0)
            else:
                K[i0:i1] = self._kernel_block(kernel, A[i0:i1], B, a2[i0:i1], b2)
        if same:
            symmetrize_lower(K, step)
        return K

    def _stationary_u(self, kernel: StationaryKernel, A, B, b_sqnorms=None):
        """u = ‖a − b‖²/σ² (n_a, n_b) and σ²."""
        s2 = kernel.checked_sigma() ** 2
        b2 = self._sq_norms(B) if b_sqnorms is None else b_sqnorms
        D = self._block_sq_distances(A, B, self._sq_norms(A), b2)
        return D.mul_(1.0 / s2), s2

    def _value_and_gradient(self, kernel: Kernel, A, B, w, b_sqnorms=None, n_active=None):
        """(Σ_m w_m k(a_i, b_m) (n_a,), ∂/∂a_i (n_a, d)) on tensors; see Kernel.value_and_gradient."""
        if isinstance(kernel, StationaryKernel):
            grad = torch.zeros_like(A)
            p = A.shape[1] if n_active is None else min(int(n_active), A.shape[1])
            if b_sqnorms is None and p < A.shape[1]:
                b_sqnorms = self._sq_norms(B)  # over all columns: exact when A[:, p:] = 0
            Ap, Bp = A[:, :p], B[:, :p]
            u, s2 = self._stationary_u(kernel, Ap, Bp, b_sqnorms)
            g, g1 = kernel.profile(u, 1, xp=torch)
            value = g @ w
            g1 = g1 * ((2.0 / s2) * w[None, :])  # ∂/∂a Σ w k = Σ w (2/σ²) g′ (a − b)
            grad[:, :p] = Ap * g1.sum(dim=1)[:, None] - g1 @ Bp
            return value, grad
        if isinstance(kernel, Laplacian):
            K = self._kernel_matrix(kernel, A, B)
            value = K @ w
            K.mul_(w[None, :])
            out = torch.empty_like(A)
            step = max(1, self.block_elements // max(1, B.numel()))
            for i0 in range(0, A.shape[0], step):
                i1 = min(i0 + step, A.shape[0])
                S = torch.sign(A[i0:i1, None, :] - B[None, :, :])
                out[i0:i1] = -torch.einsum("im,imd->id", K[i0:i1], S) / kernel.checked_sigma()
            return value, out
        if isinstance(kernel, Linear):
            wb = w @ B
            return A @ wb, wb.expand(A.shape).clone()
        raise NotDifferentiableError(f"kernel {kernel.name!r} has no gradient on the torch backend")

    # ------------------------------------------------------------------------------ kernel layer (public)
    def kernel_matrix(self, kernel: Kernel, A: Any, B: Any = None) -> np.ndarray:
        """k(a_i, b_j) (n_a, n_b); B omitted: A with itself, exactly symmetric."""
        if B is None:
            A = self.asarray(A)
            A, _ = self._pair(A, A)
            return self.numpy(self._kernel_matrix(kernel, A))
        A, B = self._pair(A, B)
        return self.numpy(self._kernel_matrix(kernel, A, B))

    def value_and_gradient(self, kernel: Kernel, A: Any, B: Any, w: Any, *, b_sqnorms: Any = None,
                           n_active: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Σ_m w_m k(a_i, b_m) (n_a,), its gradient ∂/∂a_i (n_a, d)); see Kernel.value_and_gradient."""
        A = self.asarray(A)
        A = A[None, :] if A.ndim == 1 else A
        A, B = self._pair(A, B)
        w = self.asarray(w).reshape(-1)
        if w.shape[0] != B.shape[0]:
            raise ShapeMismatchError(f"{w.shape[0]} weights for {B.shape[0]} reference rows")
        bn = None if b_sqnorms is None else self.asarray(b_sqnorms)
        value, grad = self._value_and_gradient(kernel, A, B, w, bn, n_active)
        return self.numpy(value), self.numpy(grad)

    def gradient_coefficients(self, kernel: Kernel, A: Any, B: Any) -> np.ndarray:
        """g₁ (n_a, n_b): ∂k(a_i, b_j)/∂a_i = g₁[i, j] (a_i − b_j) (stationary kernels)."""
        if not isinstance(kernel, StationaryKernel):
            raise NotDifferentiableError(f"kernel {kernel.name!r} has no gradient coefficients (not stationary)")
        A, B = self._pair(A, B)
        u, s2 = self._stationary_u(kernel, A, B)
        return self.numpy(kernel.profile(u, 1, xp=torch)[1] * (2.0 / s2))

    def second_derivative_coefficients(self, kernel: Kernel, A: Any, B: Any) -> tuple[np.ndarray, np.ndarray]:
        """(c₁, c₂) (n_a, n_b): ∂²k(a_i, b_j)/∂a_i∂b_jᵀ = c₁ I + c₂ (a_i − b_j)(a_i − b_j)ᵀ."""
        if not isinstance(kernel, StationaryKernel):
            raise NotDifferentiableError(f"kernel {kernel.name!r} has no second derivative blocks")
        A, B = self._pair(A, B)
        u, s2 = self._stationary_u(kernel, A, B)
        _, g1, g2 = kernel.profile(u, 2, xp=torch)
        return self.numpy(g1 * (-2.0 / s2)), self.numpy(g2 * (-4.0 / s2**2))

    # ------------------------------------------------------------------------------ Cholesky
    def spd_factor(self, build: Callable[[], torch.Tensor], lam: float = 0.0) -> tuple[torch.Tensor, float]:
        """Lower Cholesky factor of K + λI with the one jitter policy, :func:`molkrr.linalg.spd_factor`.

        build : returns a fresh symmetric (n, n) K on the device (called again if a jitter is needed).
        Returns (L, λ used).
        """
        return spd_factor(build, lam, ops=self._factor_ops)

    def cholesky(self, H: torch.Tensor) -> torch.Tensor:
        """Lower Cholesky factor of the SPD H (only its lower triangle is read; H is kept), else NumericalError."""
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) != 0:
            raise NumericalError(f"matrix is not numerically positive definite (leading minor {int(info)})")
        return L

    @staticmethod
    def spd_matmul(H: torch.Tensor, L: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """H V for the SPD H with factor L from :meth:`cholesky`: torch keeps H, so one GEMM."""
        return H @ V

    @staticmethod
    def spd_solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Solve (L Lᵀ) x = b for b of shape (n,) or (n, t)."""
        return torch.cholesky_solve(b[:, None] if b.ndim == 1 else b, L).reshape(b.shape)

    # ------------------------------------------------------------------------------ KRR
    def _krr_bytes(self, n: int, d: int) -> int:
        return self.itemsize() * (2 * n * n + 4 * self.rows_per_block(n) * n + 2 * n * d)

    def _krr_fits(self, d: int) -> Callable[[int], str]:
        def fits(avail: int) -> str:
            n = int(math.sqrt(max(avail / self.itemsize() - 2 * d, 0) / 2.0) * 0.9)
            return f"a KRR fit of up to about n = {n:,} training rows fits there"
        return fits

    def krr_fit(self, kernel: Kernel, X: Any, y: Any, lam: float, return_factor: bool = False) -> tuple:
        """(α = (K + λ'I)⁻¹ y, λ' used) by Cholesky on the device; y (n,) or (n, t). With ``return_factor``
        a third entry, None: the factor stays on the device only for the solve (no predictive std here)."""
        X, y = self.asarray(X), self.asarray(y)
        n, d = X.shape
        with self.memory_guard(f"KRR fit with n={n:,}", self._krr_bytes(n, d), self._krr_fits(d)):
            L, lam_used = self.spd_factor(lambda: self._kernel_matrix(kernel, X), float(lam))
            alpha = self.spd_solve(L, y)
            del L
        if return_factor:
            return self.numpy(alpha), float(lam_used), None
        return self.numpy(alpha), float(lam_used)

    def rows(self, X: Any) -> DeviceRows:
        """Training rows on the device with their squared norms (a fitted model caches this)."""
        X = self.asarray(X)
        return DeviceRows(X, self._sq_norms(X))

    def krr_predict(self, kernel: Kernel, X: Any, rows: DeviceRows, alpha: Any) -> np.ndarray:
        """Σ_m α_m k(x_i, x_m) for the rows of X, shape (n_q,) or (n_q, t), in row blocks."""
        X, a = self.asarray(X), self.asarray(alpha)
        out = torch.empty((X.shape[0],) + tuple(a.shape[1:]), device=self.torch_device, dtype=self.dtype)
        step = self.rows_per_block(rows.X.shape[0])
        for i0 in range(0, X.shape[0], step):
            i1 = min(i0 + step, X.shape[0])
            Xi = X[i0:i1]
            out[i0:i1] = self._kernel_block(kernel, Xi, rows.X, self._sq_norms(Xi), rows.sq_norms) @ a
        return self.numpy(out)

    def krr_value_and_gradient(self, kernel: Kernel, X: Any, rows: DeviceRows, alpha: Any,
                               n_active: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Σ_m α_m k(x_i, x_m) (n_q,), its gradient (n_q, d)) in row blocks (α of shape (n,))."""
        X, a = self.asarray(X), self.asarray(alpha)
        values = torch.empty(X.shape[0], device=self.torch_device, dtype=self.dtype)
        grads = torch.empty_like(X)
        step = self.rows_per_block(rows.X.shape[0])
        for i0 in range(0, X.shape[0], step):
            i1 = min(i0 + step, X.shape[0])
            values[i0:i1], grads[i0:i1] = self._value_and_gradient(
                kernel, X[i0:i1], rows.X, a, rows.sq_norms, n_active)
        return self.numpy(values), self.numpy(grads)


def symmetrize_lower(M: torch.Tensor, block: int) -> torch.Tensor:
    """Copy the lower triangle of the square M onto its upper triangle, in row blocks (no n×n temporary)."""
    n = M.shape[0]
    block = max(1, min(block, n))
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        if i1 < n:
            M[i0:i1, i1:] = M[i1:, i0:i1].T
        blk = M[i0:i1, i0:i1]
        blk.copy_(torch.tril(blk) + torch.tril(blk, -1).T)
    return M


__all__ = ["BLOCK_ELEMENTS", "CPU_BLOCK_ELEMENTS", "DeviceRows", "TorchBackend", "resolve_device", "symmetrize_lower"]
