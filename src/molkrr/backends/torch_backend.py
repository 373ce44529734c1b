"""The torch backend: the kernel layer, KRR and the metric-learning objectives on torch tensors.

The formulas are those of the numpy code, not re-derived: stationary kernels are evaluated through
their ``profile(u, order, xp=torch)`` (:mod:`molkrr.kernels.base`), the KRR solve follows the jitter
policy of :func:`molkrr.linalg.spd_factor`, and the MLKRR objective ports the closed-form gradients
of :mod:`molkrr.metric.mlkrr`: ``_mlkrr_stationary`` (any profile g, g′) and, for the Gaussian,
``_mlkrr`` (K = exp(L Rᵀ) straight from the embedded rows; K V from the matrix the factorisation keeps).

Memory discipline: kernel matrices are built in row blocks of at most :data:`BLOCK_ELEMENTS`
elements (:data:`CPU_BLOCK_ELEMENTS` on the CPU, where blocks should stay in cache); the MLKRR
objective keeps two n_α × n_α matrices (K_αα + λI and its Cholesky factor) and streams
Q = k(X_A, X_α) in row blocks, so n = 20,000 (n_α = 10,000) needs about 2 GB. Before a CUDA
computation the memory it needs is compared with the free device memory, and an out-of-memory
failure during it is turned into a :class:`~molkrr.errors.DeviceMemoryError` that says which size fits.

Precision: float64 unless the backend is built with ``dtype="float32"`` (docs/gpu.md).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
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
from ..kernels.gaussian import Gaussian
from ..kernels.laplacian import Laplacian
from ..kernels.linear import Linear
from ..linalg import JITTER_STEPS, JitterWarning

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


class TorchBackend:
    """The compute backend on torch tensors (device 'cpu', 'cuda' or 'cuda:N'); see :mod:`molkrr.backends`."""

    name = "torch"

    def __init__(self, device: str | None = None, dtype: str = "float64") -> None:
        if dtype not in _DTYPES:
            raise InvalidInputError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.dtype = _DTYPES[dtype]
        self.block_elements = BLOCK_ELEMENTS if self.torch_device.type == "cuda" else CPU_BLOCK_ELEMENTS

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

    def _pair(self, A: Any, B: Any) -> tuple[torch.Tensor, torch.Tensor]:
        A, B = self.asarray(A), self.asarray(B)
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
            raise ShapeMismatchError(f"feature matrices of shapes {tuple(A.shape)} and {tuple(B.shape)} do not match")
        return A, B

    def _rows_per_block(self, n_cols: int) -> int:
        return max(1, self.block_elements // max(1, n_cols))

    # ------------------------------------------------------------------------------ memory
    def free_memory(self) -> int | None:
        """Free bytes on a CUDA device (None on the CPU, where the operating system decides)."""
        if self.torch_device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(self.torch_device)
        return int(free)

    def _itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @contextlib.contextmanager
    def _memory_guard(self, what: str, need: int, fits: Callable[[int], str]) -> Iterator[None]:
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
        step = self._rows_per_block(n_b)
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
        """Lower Cholesky factor of K + λI with the jitter policy of :func:`molkrr.linalg.spd_factor`.

        build : returns a fresh symmetric (n, n) K on the device (called again if a jitter is needed).
        Returns (L, λ used). Growing relative jitters (:data:`molkrr.linalg.JITTER_STEPS`) with a
        :class:`~molkrr.linalg.JitterWarning`, or :class:`~molkrr.errors.NumericalError`.
        """
        K = build()
        if K.ndim != 2 or K.shape[0] != K.shape[1]:
            raise ValueError(f"kernel matrix must be square, got {tuple(K.shape)}")
        if not bool(torch.isfinite(K).all()):
            raise NumericalError("kernel matrix contains NaN or infinity (check sigma and the features)")
        n = K.shape[0]
        scale = float(torch.mean(torch.abs(torch.diagonal(K)))) or 1.0
        eps = torch.finfo(self.dtype).eps
        extra = 0.0
        for attempt, rel in enumerate((0.0,) + JITTER_STEPS):
            extra = rel * scale
            if attempt > 0:
                del K
                K = build()
            K.diagonal().add_(lam + extra)
            L, info = torch.linalg.cholesky_ex(K)
            if int(info) != 0:
                continue
            if float(torch.min(torch.diagonal(L))) ** 2 <= n * eps * scale:
                continue  # a pivot at rounding level: numerically singular, α would be noise
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

    @staticmethod
    def spd_solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Solve (L Lᵀ) x = b for b of shape (n,) or (n, t)."""
        return torch.cholesky_solve(b[:, None] if b.ndim == 1 else b, L).reshape(b.shape)

    # ------------------------------------------------------------------------------ KRR
    def _krr_bytes(self, n: int, d: int) -> int:
        return self._itemsize() * (2 * n * n + 4 * self._rows_per_block(n) * n + 2 * n * d)

    def _krr_fits(self, d: int) -> Callable[[int], str]:
        def fits(avail: int) -> str:
            n = int(math.sqrt(max(avail / self._itemsize() - 2 * d, 0) / 2.0) * 0.9)
            return f"a KRR fit of up to about n = {n:,} training rows fits there"
        return fits

    def krr_fit(self, kernel: Kernel, X: Any, y: Any, lam: float) -> tuple[np.ndarray, float]:
        """(α = (K + λ'I)⁻¹ y, λ' used) by Cholesky on the device; y (n,) or (n, t)."""
        X, y = self.asarray(X), self.asarray(y)
        n, d = X.shape
        with self._memory_guard(f"KRR fit with n={n:,}", self._krr_bytes(n, d), self._krr_fits(d)):
            L, lam_used = self.spd_factor(lambda: self._kernel_matrix(kernel, X), float(lam))
            alpha = self.spd_solve(L, y)
            del L
        return self.numpy(alpha), float(lam_used)

    def rows(self, X: Any) -> DeviceRows:
        """Training rows on the device with their squared norms (a fitted model caches this)."""
        X = self.asarray(X)
        return DeviceRows(X, self._sq_norms(X))

    def krr_predict(self, kernel: Kernel, X: Any, rows: DeviceRows, alpha: Any) -> np.ndarray:
        """Σ_m α_m k(x_i, x_m) for the rows of X, shape (n_q,) or (n_q, t), in row blocks."""
        X, a = self.asarray(X), self.asarray(alpha)
        out = torch.empty((X.shape[0],) + tuple(a.shape[1:]), device=self.torch_device, dtype=self.dtype)
        step = self._rows_per_block(rows.X.shape[0])
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
        step = self._rows_per_block(rows.X.shape[0])
        for i0 in range(0, X.shape[0], step):
            i1 = min(i0 + step, X.shape[0])
            values[i0:i1], grads[i0:i1] = self._value_and_gradient(
                kernel, X[i0:i1], rows.X, a, rows.sq_norms, n_active)
        return self.numpy(values), self.numpy(grads)

    # ------------------------------------------------------------------------------ MLKRR
    def _embed(self, X: torch.Tensor, As: torch.Tensor, right: bool = True):
        """L = [Z, ½‖z‖², 1] and R = [Z, −1, −½‖z‖²], Z = X Asᵀ: L_i · R_j = −u_ij/2 (as kernels.blocks.embed)."""
        n, c = X.shape[0], As.shape[0]
        L = torch.empty((n, c + 2), device=self.torch_device, dtype=self.dtype)
        torch.matmul(X, As.T, out=L[:, :c])
        h = 0.5 * self._sq_norms(L[:, :c])
        L[:, c] = h
        L[:, c + 1] = 1.0
        if not right:
            return L, None
        R = L.clone()
        R[:, c] = -1.0
        R[:, c + 1] = -h
        return L, R

    @staticmethod
    def _u_from_embedded(T: torch.Tensor) -> torch.Tensor:
        """T = L Rᵀ = −u/2 ↦ u ≥ 0, in place."""
        return T.mul_(-2.0).clamp_(min=0.0)

    def mlkrr_bytes(self, m: int, n_A: int, c: int, d: int) -> int:
        """Device bytes of one MLKRR evaluation with n_α = m, n_A, c components and d features."""
        rows = self._rows_per_block(m)
        return self._itemsize() * (
            2 * m * m  # K_αα + λI and its Cholesky factor
            + 6 * min(rows, max(m, n_A)) * m  # a streamed block and its profile temporaries
            + (m + n_A) * (2 * d + 2 * (c + 2))  # data, embeddings
            + 8 * m * (c + 1)  # V, K′V, R, gradients
        )

    def _mlkrr_fits(self, n_A: int, c: int, d: int) -> Callable[[int], str]:
        def fits(avail: int) -> str:
            lo, hi = 1, 1 << 22
            while hi - lo > 1:  # largest m with an even split that fits
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if self.mlkrr_bytes(mid, mid, c, d) <= 0.9 * avail else (lo, mid)
            return f"the MLKRR objective fits there up to about n_α = {lo:,} (n = {2 * lo:,} with alpha_fraction=0.5)"
        return fits

    def mlkrr(self, kernel: StationaryKernel, A: Any, Xa: Any, ya: Any, XA: Any, yA: Any, sigma: float,
              lam: float, want_aux: bool = False) -> tuple[float, np.ndarray, dict]:
        """(L, ∂L/∂A, aux) of the MLKRR objective (see :func:`molkrr.metric.mlkrr._mlkrr_stationary`).

        aux (if want_aux): {'alpha': α (n_α,), 'train_mae': MAE on the A part}. Inputs as validated by
        :func:`molkrr.metric.mlkrr_loss_and_grad` (numpy arrays or tensors of this backend).
        """
        A, Xa, XA = self.asarray(A), self.asarray(Xa), self.asarray(XA)
        ya, yA = self.asarray(ya), self.asarray(yA)
        m, nA, c, d = Xa.shape[0], XA.shape[0], A.shape[0], A.shape[1]
        what = f"MLKRR objective with n_α={m:,}, n_A={nA:,}, {c} components"
        with self._memory_guard(what, self.mlkrr_bytes(m, nA, c, d), self._mlkrr_fits(nA, c, d)):
            loss, M, alpha, r = self._mlkrr(kernel, A, Xa, ya, XA, yA, float(sigma), float(lam))
        grad = self.numpy(M)
        if not want_aux:
            return loss, grad, {}
        return loss, grad, {"alpha": self.numpy(alpha), "train_mae": float(torch.mean(torch.abs(r)))}

    def _factor(self, H: torch.Tensor) -> torch.Tensor:
        """Lower Cholesky factor of H = K_αα + λI (only H's lower triangle is read), else NumericalError."""
        U, info = torch.linalg.cholesky_ex(H)
        if int(info) != 0:
            raise NumericalError(
                f"the regularised kernel matrix K_αα + λI is not numerically positive definite (minor {int(info)}); "
                "increase lam"
            )
        return U

    def _mlkrr(self, kernel, A, Xa, ya, XA, yA, sigma, lam):
        """(loss, ∂L/∂A, α, r) on tensors: the Gaussian's closed form or the stationary one."""
        c = A.shape[0]
        As = A / sigma
        La, Ra = self._embed(Xa, As)  # La[:, :c] = Z_α/σ
        LA, _ = self._embed(XA, As, right=False)  # LA[:, :c] = Z_A/σ
        if type(kernel) is Gaussian:
            return self._mlkrr_gaussian(La, Ra, LA, c, Xa, ya, XA, yA, sigma, lam)
        return self._mlkrr_stationary(kernel, La, Ra, LA, c, Xa, ya, XA, yA, sigma, lam)

    def _mlkrr_gaussian(self, La, Ra, LA, c, Xa, ya, XA, yA, sigma, lam):
        """Port of :func:`molkrr.metric.mlkrr._mlkrr`: K = exp(L Rᵀ) needs no other elementwise work on its
        blocks, and K V = H V − λV comes from H = K_αα + λI, which the (out-of-place) factorisation keeps."""
        m, nA = La.shape[0], LA.shape[0]
        Za, ZA = La[:, :c], LA[:, :c]
        H = torch.matmul(La, Ra.T).exp_()
        H.diagonal().fill_(1.0 + lam)  # K_aa = exp(0) exactly
        U = self._factor(H)
        alpha = self.spd_solve(U, ya)

        # Q = k(X_A, X_α) streamed in row blocks: P_b = Q_b [α∘Z_α, α] = [Q(α∘Z_α), ŷ]_b,
        # R += Q_bᵀ [r∘Z_A, r]_b, G_A = (r∘ŷ)∘Z_A − r∘Q(α∘Z_α)
        V = torch.cat([Za * alpha[:, None], alpha[:, None]], dim=1)
        R = torch.zeros((m, c + 1), device=self.torch_device, dtype=self.dtype)
        GA = torch.empty((nA, c), device=self.torch_device, dtype=self.dtype)
        yhat = torch.empty(nA, device=self.torch_device, dtype=self.dtype)
        step = self._rows_per_block(m)
        for i0 in range(0, nA, step):
            i1 = min(i0 + step, nA)
            Qb = torch.matmul(LA[i0:i1], Ra.T).exp_()
            Pb = Qb @ V
            yh = Pb[:, c]
            rb = yh - yA[i0:i1]
            yhat[i0:i1] = yh
            ZAb = ZA[i0:i1]
            GA[i0:i1] = (rb * yh)[:, None] * ZAb - rb[:, None] * Pb[:, :c]
            R.addmm_(Qb.T, torch.cat([ZAb * rb[:, None], rb[:, None]], dim=1))
            del Qb, Pb
        r = yhat - yA
        loss = float(r @ r)
        u = R[:, c]
        beta = self.spd_solve(U, u)
        del U
        M = GA.T @ XA
        del GA

        # K [α∘Z_α, β∘Z_α, α, β] = (H − λI) T
        T = torch.cat([Za * alpha[:, None], Za * beta[:, None], alpha[:, None], beta[:, None]], dim=1)
        KT = H @ T
        del H
        if lam != 0.0:
            KT.sub_(T, alpha=lam)
        coef = alpha * u - beta * KT[:, 2 * c] - alpha * KT[:, 2 * c + 1]
        # G_α = coef∘Z_α − α∘Qᵀ(r∘Z_A) + β∘K(α∘Z_α) + α∘K(β∘Z_α)
        G = beta[:, None] * KT[:, :c] + alpha[:, None] * KT[:, c : 2 * c] - alpha[:, None] * R[:, :c]
        G += coef[:, None] * Za
        M.addmm_(G.T, Xa)
        M.mul_(-2.0 / sigma)  # Z was scaled by 1/σ: ∂L/∂A = −(2/σ²) σ M
        return loss, M, alpha, r

    def _mlkrr_stationary(self, kernel, La, Ra, LA, c, Xa, ya, XA, yA, sigma, lam):
        """Port of :func:`molkrr.metric.mlkrr._mlkrr_stationary` (any profile g, g′), with the scalings of
        P = diag(2r) Q′ diag(α) moved onto thin matrices, so a streamed block needs only its profile:

            P 1 = 2r∘(Q′α),  P Z_α = 2r∘Q′(α∘Z_α),  Pᵀ[Z_A, 1] = α∘(Q′ᵀ[2r∘Z_A, 2r]).
        """
        m, nA = La.shape[0], LA.shape[0]
        Za, ZA = La[:, :c], LA[:, :c]
        g0 = float(kernel.profile(np.zeros(1))[0][0])
        step = self._rows_per_block(m)

        # H = K_αα + λI: only the lower triangle is built (the factorisation reads nothing else)
        H = torch.empty((m, m), device=self.torch_device, dtype=self.dtype)
        for i0 in range(0, m, step):
            i1 = min(i0 + step, m)
            H[i0:i1, :i1] = kernel.profile(self._u_from_embedded(La[i0:i1] @ Ra[:i1].T), 0, xp=torch)[0]
        H.diagonal().fill_(g0 + lam)
        U = self._factor(H)
        del H
        alpha = self.spd_solve(U, ya)

        # stream Q = g(U_Aα), Q′ = g′(U_Aα): ŷ, r, G_A, R = [P_Qᵀ Z_A, P_Qᵀ 1] and u = Qᵀ r
        V = torch.cat([Za * alpha[:, None], alpha[:, None]], dim=1)
        R = torch.zeros((m, c + 1), device=self.torch_device, dtype=self.dtype)
        u = torch.zeros(m, device=self.torch_device, dtype=self.dtype)
        GA = torch.empty((nA, c), device=self.torch_device, dtype=self.dtype)
        yhat = torch.empty(nA, device=self.torch_device, dtype=self.dtype)
        for i0 in range(0, nA, step):
            i1 = min(i0 + step, nA)
            Qb, Q1b = kernel.profile(self._u_from_embedded(LA[i0:i1] @ Ra.T), 1, xp=torch)
            yh = Qb @ alpha
            rb = yh - yA[i0:i1]
            yhat[i0:i1] = yh
            u.addmv_(Qb.T, rb)
            S = Q1b @ V  # [Q′(α∘Z_α), Q′α]
            r2 = 2.0 * rb
            ZAb = ZA[i0:i1]
            GA[i0:i1] = r2[:, None] * (S[:, c : c + 1] * ZAb - S[:, :c])
            R.addmm_(Q1b.T, torch.cat([ZAb * r2[:, None], r2[:, None]], dim=1))
            del Qb, Q1b
        R.mul_(alpha[:, None])
        r = yhat - yA
        loss = float(r @ r)
        beta = self.spd_solve(U, u)
        del U
        M = GA.T @ XA
        del GA

        # K′ V with V = [α∘Z_α, β∘Z_α, α, β], K′ = g′(U_αα) streamed in row blocks
        V = torch.cat([Za * alpha[:, None], Za * beta[:, None], alpha[:, None], beta[:, None]], dim=1)
        KV = torch.empty_like(V)
        for i0 in range(0, m, step):
            i1 = min(i0 + step, m)
            KV[i0:i1] = kernel.profile(self._u_from_embedded(La[i0:i1] @ Ra.T), 1, xp=torch)[1] @ V
        PK_Z = -2.0 * (beta[:, None] * KV[:, :c])  # P_K Z_α
        PKt_Z = -2.0 * (alpha[:, None] * KV[:, c : 2 * c])  # P_Kᵀ Z_α
        PK_1 = -2.0 * beta * KV[:, 2 * c]  # P_K 1
        PKt_1 = -2.0 * alpha * KV[:, 2 * c + 1]  # P_Kᵀ 1
        Ga = (R[:, c] + PK_1 + PKt_1)[:, None] * Za - R[:, :c] - PK_Z - PKt_Z
        M.addmm_(Ga.T, Xa)
        M.mul_(2.0 / sigma)
        return loss, M, alpha, r

    # ------------------------------------------------------------------------------ MLKR
    def mlkr(self, A: Any, X: Any, y: Any, sigma: float, want_aux: bool = False) -> tuple[float, np.ndarray, dict]:
        """(L, ∂L/∂A, aux) of the MLKR leave-one-out objective (see :func:`molkrr.metric.mlkr._mlkr`),
        with P streamed in row blocks (memory O(n · block), not O(n²))."""
        A, X, y = self.asarray(A), self.asarray(X), self.asarray(y)
        n, d = X.shape
        c = A.shape[0]
        per_row = 2 * d + 3 * c + 8  # data, embeddings, gradient buffers per training row
        need = self._itemsize() * (4 * self._rows_per_block(n) * n + n * per_row)

        def fits(avail: int) -> str:
            n_max = int(max(avail / self._itemsize() - 4 * self.block_elements, 0) / per_row * 0.9)
            return f"the MLKR objective fits there up to about n = {n_max:,}"

        with self._memory_guard(f"MLKR objective with n={n:,}", need, fits):
            L, R = self._embed(X, A / sigma)
            Z = L[:, :c]
            yhat = torch.empty(n, device=self.torch_device, dtype=self.dtype)
            s = torch.zeros(n, device=self.torch_device, dtype=self.dtype)
            G = torch.zeros((n, c), device=self.torch_device, dtype=self.dtype)
            step = self._rows_per_block(n)
            for i0 in range(0, n, step):
                i1 = min(i0 + step, n)
                E = L[i0:i1] @ R.T
                E.diagonal(offset=i0).fill_(-math.inf)
                E.sub_(E.max(dim=1, keepdim=True).values)
                E.exp_()
                E.div_(E.sum(dim=1, keepdim=True))
                yh = E @ y
                yhat[i0:i1] = yh
                rb = yh - y[i0:i1]
                W = E.mul_(rb[:, None]).mul_(yh[:, None] - y[None, :])  # W = diag(r) P ∘ (ŷ 1ᵀ − 1 yᵀ)
                s[i0:i1] += W.sum(dim=1)
                s += W.sum(dim=0)
                G[i0:i1] += W @ Z
                G.addmm_(W.T, Z[i0:i1])
                del E, W
            r = yhat - y
            loss = float(r @ r)
            G = s[:, None] * Z - G
            grad = (2.0 / sigma) * (G.T @ X)  # Z scaled by 1/σ: (2/σ²)·σ
        out = self.numpy(grad)
        if not want_aux:
            return loss, out, {}
        return loss, out, {"train_mae": float(torch.mean(torch.abs(r)))}


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
