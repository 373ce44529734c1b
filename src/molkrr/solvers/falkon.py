"""Large-n kernel ridge regression: Nyström centres and a preconditioned conjugate-gradient solve (FALKON).

The model keeps the form :class:`molkrr.KernelRidge` predicts with, ŷ(x) = ȳ + Σ_j α_j k(x, c_j), over m
centres c_j (rows of X chosen uniformly at random). α minimises the Nyström ridge objective

    ‖y − K_nm α‖² + λ αᵀ K_mm α      ⇔      H α = K_nmᵀ y,   H = K_nmᵀ K_nm + λ K_mm,

with K_nm = k(X, C) of shape (n, m) and K_mm = k(C, C). With λ in molkrr's convention ((K + λI) α = y for
the exact solver) and the centres equal to all training rows, α is exactly the exact solver's α (H = K (K + λI)).

The system is solved by conjugate gradients, preconditioned as in FALKON (Rudi, Carratino & Rosasco 2017;
Meanti et al. 2020): with K_mm + εI = TᵀT (T upper triangular, Cholesky; ε = m·2.2e-16 × mean diagonal, more
only if that fails, reported as ``FalkonResult.jitter``) and the approximation K_nmᵀK_nm ≈ (n/m) K_mm²,
H ≈ P = Tᵀ (n/m · T Tᵀ + λI) T = Tᵀ AᵀA T, A = chol(n/m · T Tᵀ + λI). CG runs on

    W β = Bᵀ K_nmᵀ y,   W = A⁻ᵀ (T⁻ᵀ K_nmᵀ K_nm T⁻¹ + λI) A⁻¹,   B = T⁻¹A⁻¹ (B Bᵀ = P⁻¹),   α = B β,

which is H α = K_nmᵀ y with λ K_mm replaced by λ TᵀT = λ (K_mm + εI): as in FALKON, the ridge acts as λI in
the whitened coordinates, which keeps CG stable at the small λ and large σ molecules need (applying λ K_mm
itself squares K_mm's condition number, and CG then stalls in rounding). ε is at rounding level of K_mm.
Each iteration: two passes over K_nm (K_nm v, then K_nmᵀ of that), O(nm) flops, and four m×m triangular
solves, O(m²); the preconditioner costs O(m³) once.

K_nm is never n×n: it is held in row blocks (:class:`NystromBlocks`, n·m numbers in float64 or, when asked,
float32), or recomputed block by block at every iteration when it should not be held (``store=False``:
memory O(block·m), time O(nmd) per iteration).

Stopping rule: CG stops when ‖r_k‖ ≤ tol · ‖r_0‖ for every right-hand side, r_k the residual of the
preconditioned system in β (r_0 = Bᵀ K_nmᵀ y since β_0 = 0), or after ``max_iter`` iterations with a
:class:`sklearn.exceptions.ConvergenceWarning`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg as sla

from ..errors import InvalidInputError, NumericalError, ShapeMismatchError
from .registry import SolverFit, register_solver

#: Default relative residual tolerance of the preconditioned CG (see the module docstring).
DEFAULT_TOL = 1e-6
#: Default iteration cap of the preconditioned CG.
DEFAULT_MAX_ITER = 500
#: Rows of X per kernel block K[rows, :m].
BLOCK_ROWS = 2048
#: Relative jitters ε (× mean diagonal of K_mm, at least m × machine epsilon) tried for the Cholesky of
#: K_mm + εI, smallest first (module docstring: the solved ridge is λ (K_mm + εI)).
PRECONDITIONER_JITTERS = (0.0, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6)


# ----------------------------------------------------------------------------- kernel blocks
class NystromBlocks:
    """K_nm = k(X, C) in row blocks, with the products the CG needs.

    Parameters
    ----------
    kernel : callable
        ``kernel(A, B)`` → (n_a, n_b) kernel matrix (a :class:`molkrr.kernels.Kernel`).
    X : ndarray (n, d)
        Rows of this block set (the whole training set, or one worker's shard of it).
    centers : ndarray (m, d)
    block_rows : int
        Rows per block.
    store : bool
        Keep the blocks (memory n·m·itemsize) or recompute them at every product (memory block_rows·m).
    dtype : numpy dtype
        Storage type of kept blocks (float64 or float32); products accumulate into float64 vectors.
    """

    def __init__(
        self,
        kernel: Callable[[np.ndarray, np.ndarray], np.ndarray],
        X: np.ndarray,
        centers: np.ndarray,
        *,
        block_rows: int = BLOCK_ROWS,
        store: bool = True,
        dtype: Any = np.float64,
    ) -> None:
        self.kernel = kernel
        self.X = X
        self.centers = centers
        self.block_rows = int(block_rows)
        self.store = bool(store)
        self.dtype = np.dtype(dtype)
        self.slices = [slice(s, min(s + self.block_rows, X.shape[0])) for s in range(0, X.shape[0], self.block_rows)]
        self._blocks: list[np.ndarray] | None = None
        if self.store:
            self._blocks = [self._compute(s) for s in self.slices]

    @property
    def n_rows(self) -> int:
        return self.X.shape[0]

    @property
    def nbytes(self) -> int:
        """Memory held by the stored blocks (0 when recomputed)."""
        return 0 if self._blocks is None else sum(b.nbytes for b in self._blocks)

    def _compute(self, s: slice) -> np.ndarray:
        K = np.asarray(self.kernel(self.X[s], self.centers))
        return K if K.dtype == self.dtype else K.astype(self.dtype)

    def _iter_blocks(self):
        if self._blocks is not None:
            yield from zip(self.slices, self._blocks)
        else:
            for s in self.slices:
                yield s, self._compute(s)

    def rmatvec(self, Y: np.ndarray) -> np.ndarray:
        """K_nmᵀ Y: Y (n,) or (n, t) → (m,) or (m, t)."""
        out = np.zeros((self.centers.shape[0],) + Y.shape[1:])
        for s, K in self._iter_blocks():
            out += _dot(K.T, Y[s])
        return out

    def gram_matvec(self, V: np.ndarray) -> np.ndarray:
        """K_nmᵀ (K_nm V): V (m,) or (m, t) → same shape, one pass over the blocks."""
        out = np.zeros_like(V, dtype=np.float64)
        for _, K in self._iter_blocks():
            out += _dot(K.T, _dot(K, V))
        return out


def _dot(K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """K @ V in K's precision, returned as float64 (float32 blocks: one rounding per product)."""
    if K.dtype == np.float64:
        return K @ V
    return (K @ V.astype(K.dtype)).astype(np.float64)


# ----------------------------------------------------------------------------- preconditioner
class FalkonPreconditioner:
    """B = T⁻¹A⁻¹ with K_mm + εI = TᵀT and AᵀA = (n/m) T Tᵀ + λI (module docstring); B Bᵀ ≈ H⁻¹.

    Parameters
    ----------
    K_mm : ndarray (m, m), or a zero-argument callable returning a fresh one
        The centres' kernel matrix. A callable's matrix is factorised in place (memory 2·m² in all, not
        3·m²) and called again if a larger jitter is needed; an array is copied and left unchanged.
    n : int
        Number of training rows (the scale n/m of the approximation K_nmᵀK_nm ≈ (n/m) K_mm²).
    lam : float
    """

    def __init__(self, K_mm: np.ndarray | Callable[[], np.ndarray], n: int, lam: float) -> None:
        from ..linalg import cholesky_lower_inplace

        build = K_mm if callable(K_mm) else (lambda: np.array(K_mm, dtype=np.float64, order="C"))
        L = np.ascontiguousarray(build(), dtype=np.float64)
        m = L.shape[0]
        if L.ndim != 2 or L.shape[1] != m:
            raise ShapeMismatchError(f"K_mm must be square, got {L.shape}")
        scale = float(np.mean(np.diagonal(L))) or 1.0
        for attempt, rel in enumerate(PRECONDITIONER_JITTERS):
            if attempt > 0:
                L = np.ascontiguousarray(build(), dtype=np.float64)
            np.einsum("ii->i", L)[:] += max(rel * scale, m * np.finfo(np.float64).eps * scale)
            try:
                cholesky_lower_inplace(L)  # lower L = Tᵀ
            except np.linalg.LinAlgError:
                continue
            self.jitter = max(rel * scale, m * np.finfo(np.float64).eps * scale)
            break
        else:
            raise NumericalError(f"the {m} x {m} centre kernel matrix is not positive definite even with a jitter")
        _zero_upper(L)
        # M = (n/m) LᵀL + λI, built by row blocks of GEMMs (never the threaded SYRK path, see linalg.py)
        M = np.empty_like(L)
        for s in range(0, m, BLOCK_ROWS):
            e = min(s + BLOCK_ROWS, m)
            M[s:e] = np.ascontiguousarray(L[:, s:e].T) @ L
        M *= n / m
        np.einsum("ii->i", M)[:] += lam
        try:
            cholesky_lower_inplace(M)
        except np.linalg.LinAlgError:
            raise NumericalError("the FALKON preconditioner could not be factorised (lam too small?)") from None
        _zero_upper(M)
        self.L = L  # Tᵀ
        self.LA = M  # Aᵀ

    def apply(self, V: np.ndarray) -> np.ndarray:
        """B V = T⁻¹ A⁻¹ V = L⁻ᵀ LA⁻ᵀ V."""
        return solve_lower_t(self.L, solve_lower_t(self.LA, V))

    def apply_t(self, V: np.ndarray) -> np.ndarray:
        """Bᵀ V = A⁻ᵀ T⁻ᵀ V = LA⁻¹ L⁻¹ V."""
        return solve_lower(self.LA, solve_lower(self.L, V))


# C-ordered lower factors are read by LAPACK as their F-ordered transposes (upper): no m×m copy per solve.
def solve_lower(L: np.ndarray, V: np.ndarray) -> np.ndarray:
    """L⁻¹ V for a C-ordered lower-triangular L."""
    return sla.solve_triangular(L.T, V, lower=False, trans="T", check_finite=False)


def solve_lower_t(L: np.ndarray, V: np.ndarray) -> np.ndarray:
    """L⁻ᵀ V for a C-ordered lower-triangular L."""
    return sla.solve_triangular(L.T, V, lower=False, trans="N", check_finite=False)


def _zero_upper(A: np.ndarray) -> None:
    """Zero the strict upper triangle of A in place, a row block at a time (no m×m index arrays)."""
    m = A.shape[0]
    for s in range(0, m, BLOCK_ROWS):
        e = min(s + BLOCK_ROWS, m)
        A[s:e, e:] = 0.0
        blk = A[s:e, s:e]
        blk[np.triu_indices(e - s, 1)] = 0.0


# ----------------------------------------------------------------------------- CG
@dataclass
class FalkonResult:
    """Outcome of :func:`falkon_solve` / :func:`preconditioned_cg`."""

    alpha: np.ndarray  # (m,) or (m, t) coefficients of the centres
    n_iter: int
    relative_residual: float  # max over right-hand sides of ‖r_k‖/‖r_0‖
    converged: bool
    residuals: list[float] = field(default_factory=list, repr=False)  # per iteration
    jitter: float = 0.0  # ε added to K_mm's diagonal in T (module docstring)


def preconditioned_cg(
    gram_matvec: Callable[[np.ndarray], np.ndarray],
    rhs: np.ndarray,
    K_mm: np.ndarray,
    n: int,
    lam: float,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    progress: bool = False,
) -> FalkonResult:
    """Solve (K_nmᵀK_nm + λ (K_mm + εI)) α = rhs by FALKON-preconditioned CG (ε: module docstring).

    gram_matvec : V (m,)/(m, t) ↦ K_nmᵀ K_nm V (local blocks, or a map-reduce over Dask workers).
    rhs : K_nmᵀ y, (m,) or (m, t).
    K_mm : (m, m) kernel of the centres (not modified), or a callable building it (see
        :class:`FalkonPreconditioner`). n : number of training rows.
    """
    precond = FalkonPreconditioner(K_mm, n, lam)

    def W(V: np.ndarray) -> np.ndarray:  # Bᵀ H B V = A⁻ᵀ (T⁻ᵀ K_nmᵀK_nm T⁻¹ + λI) A⁻¹ V
        Z = solve_lower_t(precond.LA, V)  # A⁻¹ V
        U = solve_lower_t(precond.L, Z)  # T⁻¹ Z
        G = solve_lower(precond.L, gram_matvec(U))  # T⁻ᵀ K_nmᵀK_nm U
        return solve_lower(precond.LA, G + lam * Z)

    b = precond.apply_t(rhs)
    b2 = b.reshape(b.shape[0], -1)
    norm0 = np.linalg.norm(b2, axis=0)
    norm0[norm0 == 0] = 1.0
    beta = np.zeros_like(b2)
    r = b2.copy()
    p = r.copy()
    rr = np.einsum("ij,ij->j", r, r)
    residuals: list[float] = []
    rel = float(np.max(np.sqrt(rr) / norm0))
    converged = rel <= tol
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc="FALKON CG", unit="it", file=sys.stderr, dynamic_ncols=True)
    it = 0
    try:
        while not converged and it < max_iter:
            Wp = W(p.reshape(b.shape)).reshape(b2.shape)
            pWp = np.einsum("ij,ij->j", p, Wp)
            step = np.divide(rr, pWp, out=np.zeros_like(rr), where=pWp > 0)
            beta += step * p
            r -= step * Wp
            rr_new = np.einsum("ij,ij->j", r, r)
            p = r + np.divide(rr_new, rr, out=np.zeros_like(rr), where=rr > 0) * p
            rr = rr_new
            it += 1
            rel = float(np.max(np.sqrt(rr) / norm0))
            residuals.append(rel)
            converged = rel <= tol
            if bar is not None:
                bar.update(1)
                bar.set_postfix(residual=f"{rel:.2e}")
    finally:
        if bar is not None:
            bar.close()
    if not converged:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(
            f"FALKON CG stopped after {it} iterations at relative residual {rel:.2e} > tol={tol:g}; "
            "raise max_iter or tol, or use more centres",
            ConvergenceWarning,
            stacklevel=3,
        )
    alpha = precond.apply(beta.reshape(b.shape))
    return FalkonResult(alpha, it, rel, converged, residuals, precond.jitter)


def check_solver_args(
    X: np.ndarray | None, y: np.ndarray, lam: float, centers: np.ndarray, tol: float, max_iter: int
) -> None:
    """Typed errors for bad solver input (shared by the single-process and the Dask solver; X=None when the
    rows live on Dask workers)."""
    if centers.ndim != 2 or (X is not None and (X.ndim != 2 or X.shape[1] != centers.shape[1])):
        raise ShapeMismatchError(f"X of shape {getattr(X, 'shape', '?')} and centers of shape {centers.shape} do not match")
    if y.ndim not in (1, 2) or (X is not None and y.shape[0] != X.shape[0]):
        raise ShapeMismatchError(f"X of shape {getattr(X, 'shape', '?')} and y of shape {y.shape} do not match")
    if centers.shape[0] < 1:
        raise InvalidInputError("need at least one centre")
    if not (np.isfinite(lam) and lam >= 0):
        raise InvalidInputError(f"lam must be a finite number ≥ 0, got {lam}")
    if not (np.isfinite(tol) and tol > 0):
        raise InvalidInputError(f"tol must be a positive number, got {tol}")
    if int(max_iter) < 1:
        raise InvalidInputError(f"max_iter must be ≥ 1, got {max_iter}")
    for name, a in (("X", X), ("y", y), ("centers", centers)):
        if a is not None and not np.isfinite(a).all():
            raise InvalidInputError(f"{name} contains NaN or infinity")


def falkon_solve(
    kernel: Callable[[np.ndarray, np.ndarray], np.ndarray],
    X: Any,
    y: Any,
    lam: float,
    centers: Any,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    progress: bool = False,
    store: bool = True,
    dtype: Any = np.float64,
    block_rows: int = BLOCK_ROWS,
) -> FalkonResult:
    """Nyström KRR coefficients α (m,) or (m, t) by FALKON-preconditioned CG (module docstring).

    Parameters
    ----------
    kernel : callable ``kernel(A, B)`` → (n_a, n_b), e.g. ``molkrr.make_kernel('gaussian', sigma)``.
    X : (n, d) training features. y : (n,) or (n, t) targets (already centred if wanted).
    lam : ridge λ ≥ 0 in molkrr's convention. centers : (m, d), usually rows of X.
    tol, max_iter : CG stopping rule (relative residual of the preconditioned system).
    progress : tqdm bar with the residual.
    store, dtype, block_rows : how K_nm is held (:class:`NystromBlocks`). float32 halves the memory and
        rounds every kernel value to 6e-8 relative: harmless at moderate σ and λ, fatal in the regime QM9
        needs (σ ≈ 13× the median distance, λ = 1e-10: kernel values within 1e-3 of 1, so float32 keeps only
        a few digits of 1 − k; measured at n = 20,000, m = 5,000: CG does not converge and the MAE is 100×
        worse, docs/large-n.md). Keep float64 there; check float32 against float64 at a smaller n first.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    C = np.ascontiguousarray(centers, dtype=np.float64)
    check_solver_args(X, y, lam, C, tol, max_iter)
    if np.dtype(dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidInputError(f"dtype must be float64 or float32, got {dtype}")
    blocks = NystromBlocks(kernel, X, C, block_rows=block_rows, store=store, dtype=dtype)
    rhs = blocks.rmatvec(y)
    return preconditioned_cg(
        blocks.gram_matvec, rhs, lambda: kernel(C, C), X.shape[0], float(lam), tol=tol, max_iter=max_iter, progress=progress
    )


def choose_centers(n: int, n_centers: int, random_state: Any = 0) -> np.ndarray:
    """Sorted indices of ``n_centers`` rows drawn uniformly without replacement from n (all rows if n_centers ≥ n)."""
    if int(n_centers) < 1:
        raise InvalidInputError(f"n_centers must be ≥ 1, got {n_centers}")
    if n_centers >= n:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=int(n_centers), replace=False))


def default_n_centers(n: int) -> int:
    """Centres used when none are asked for: all rows up to 2,000, then 2,000 + √n·20, capped at 15,000."""
    return int(min(n, max(2000, min(15000, 2000 + 20 * np.sqrt(n)))))


__all__: Sequence[str] = (
    "DEFAULT_MAX_ITER",
    "DEFAULT_TOL",
    "FalkonPreconditioner",
    "FalkonResult",
    "NystromBlocks",
    "choose_centers",
    "default_n_centers",
    "falkon_solve",
    "preconditioned_cg",
)


# ----------------------------------------------------------------------------- KernelRidge hook
#: ``solver='auto'`` uses the exact solver up to this many training rows ...
AUTO_MAX_EXACT_N = 20_000
#: ... and while one n×n float64 matrix takes at most this fraction of the physical memory; beyond, FALKON
#: (its ``auto_when`` in the solver registry, :mod:`molkrr.solvers.registry`).
AUTO_MEMORY_FRACTION = 0.25


def __getattr__(name: str) -> Any:
    if name == "SOLVERS":  # ("auto", "cholesky", "falkon", ...): kept for callers, read from the solver registry
        from .registry import solver_names

        return solver_names(include_auto=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def exact_fits(n: int) -> bool:
    """Whether the exact solver's n×n float64 matrix fits comfortably (:data:`AUTO_MAX_EXACT_N`,
    :data:`AUTO_MEMORY_FRACTION`)."""
    mem = physical_memory_bytes()
    return n <= AUTO_MAX_EXACT_N and (mem is None or 8.0 * n * n <= AUTO_MEMORY_FRACTION * mem)


def auto_solver(solver: str, n: int) -> str:
    """The solver ``KernelRidge(solver=...)`` uses for n training rows (:func:`molkrr.solvers.registry.resolve_solver`):
    'cholesky' or 'falkon' for 'auto'."""
    from .registry import resolve_solver

    return resolve_solver(solver, n).name


def fit_falkon(
    est: Any, kernel: Callable, X: np.ndarray, y: np.ndarray, *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, int]:
    """(centres (m, d), α, CG iterations) for a KernelRidge-like ``est`` (reads n_centers, lam, cg_tol,
    cg_max_iter, random_state); y already centred."""
    m = default_n_centers(X.shape[0]) if est.n_centers is None else est.n_centers
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool):
        raise InvalidInputError(f"n_centers must be a positive integer, got {m!r}")
    idx = choose_centers(X.shape[0], int(m), est.random_state)
    C = np.ascontiguousarray(X[idx])
    result = falkon_solve(
        kernel, X, y, float(est.lam), C, tol=float(est.cg_tol), max_iter=int(est.cg_max_iter), progress=progress
    )
    return C, result.alpha, result.n_iter


def _fit_kernel_ridge(est: Any, kernel: Callable, X: np.ndarray, y: np.ndarray, *, backend: Any,
                      progress: bool = False) -> SolverFit:
    """The registry's fit function (:mod:`molkrr.solvers.registry`): :func:`fit_falkon`, numpy backend only."""
    from ..backends import is_numpy

    if not is_numpy(backend):  # a capability check, not a compute branch: FALKON is written for numpy only
        raise InvalidInputError("solver='falkon' runs on the numpy backend only (backend='numpy')")
    C, alpha, n_iter = fit_falkon(est, kernel, X, y, progress=progress)
    return SolverFit(X_fit=C, alpha=alpha, lam=float(est.lam), attributes={"n_iter_": n_iter})


register_solver("falkon", _fit_kernel_ridge, params=("n_centers", "cg_tol", "cg_max_iter", "random_state"),
                description="Nyström KRR", auto_when=lambda n: not exact_fits(n))
