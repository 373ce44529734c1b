"""Kernel blocks: pairwise squared distances and streamed Gram products, the one place that builds them.

Two block sizes, both here:

* :data:`ROW_BLOCK` — rows per block when a whole kernel matrix is materialised (KRR fit, predict,
  σ selection): keeps temporaries small and never hands BLAS a syrk on a huge matrix (see
  :mod:`molkrr.linalg` for the BLAS policy).
* :data:`STREAM_BLOCK` — rows per block when a kernel matrix is *streamed* (the metric-learning
  objectives): a (block × n) temporary that stays in cache while it is used twice.

Embedded (Gram-trick) form: for a linear map As = A/σ (c × d), :func:`embed` returns
L = [Z, ½‖z‖², 1] and R = [Z, −1, −½‖z‖²] with Z = X Asᵀ, so that L_i · R_j = −½‖z_i − z_j‖²: one GEMM
gives the (scaled) squared distances of a block, and a kernel profile turns them into values.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ShapeMismatchError
from ..linalg import gemm

#: Rows per block when a kernel matrix is materialised.
ROW_BLOCK = 2048
#: Rows per block when a kernel matrix is streamed (metric-learning objectives).
STREAM_BLOCK = 256

_N_THREADS = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8))
_EXECUTOR: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=_N_THREADS, thread_name_prefix="molkrr-exp")
    return _EXECUTOR


def _forget_executor() -> None:
    global _EXECUTOR
    _EXECUTOR = None  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_executor)


def check_pair(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A and B as float64 2-D arrays with the same number of columns, else :class:`ShapeMismatchError`."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ShapeMismatchError(f"feature matrices of shapes {A.shape} and {B.shape} do not match")
    return A, B


def squared_distances(
    A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None, *, b_sqnorms: np.ndarray | None = None
) -> np.ndarray:
    """Squared Euclidean distances (n_a, n_b), by the Gram trick in row blocks, clipped at 0.

    b_sqnorms : precomputed ‖b_m‖² (n_b,), e.g. of a training set, saving one pass over B.
    When B is A (the same object) the result is made exactly symmetric with a zero diagonal, so
    that kernel matrices built from it are symmetric to the last bit.
    """
    same = B is A
    A, B = check_pair(A, B)
    if out is None:
        out = np.empty((A.shape[0], B.shape[0]))
    a2 = np.einsum("ij,ij->i", A, A)
    b2 = (a2 if same else np.einsum("ij,ij->i", B, B)) if b_sqnorms is None else b_sqnorms
    for start in range(0, A.shape[0], ROW_BLOCK):
        stop = min(start + ROW_BLOCK, A.shape[0])
        blk = out[start:stop]
        np.matmul(A[start:stop], B.T, out=blk)
        blk *= -2.0
        blk += a2[start:stop, None]
        blk += b2[None, :]
        np.maximum(blk, 0.0, out=blk)
    if same:
        symmetrize_lower(out)
        np.einsum("ii->i", out)[:] = 0.0
    return out


def symmetrize_lower(M: np.ndarray) -> np.ndarray:
    """Copy the lower triangle of the square M onto its upper triangle, in row blocks (no n×n temporary)."""
    n = M.shape[0]
    for start in range(0, n, STREAM_BLOCK):  # small blocks: numpy copies each transposed source block once
        stop = min(start + STREAM_BLOCK, n)
        M[start:stop, stop:] = M[stop:, start:stop].T
        blk = M[start:stop, start:stop]
        iu = np.triu_indices(stop - start, 1)
        blk[iu] = blk.T[iu]
    return M


def active_squared_distances(
    A: np.ndarray, B: np.ndarray, b_sqnorms: np.ndarray | None, n_active: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A[:, :p], B[:, :p], squared distances) reading only the first p = n_active columns of B.

    Exact when A[:, p:] = 0: ‖a − b‖² = ‖a_p‖² + ‖b‖² − 2 a_p·b_p with ‖b‖² over all columns.
    """
    if n_active is None or n_active >= A.shape[1]:
        return A, B, squared_distances(A, B, b_sqnorms=b_sqnorms)
    p = int(n_active)
    if b_sqnorms is None:
        b_sqnorms = np.einsum("ij,ij->i", B, B)
    Ap, Bp = A[:, :p], B[:, :p]
    return Ap, Bp, squared_distances(Ap, Bp, b_sqnorms=b_sqnorms)


# ------------------------------------------------------------------------------ embedded (Gram-trick) form
def embed(X: np.ndarray, As: np.ndarray, right: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Augmented embeddings of X (n, d) under As = A/σ (c, d).

    Returns L = [Z, ½‖z‖², 1] and (if ``right``) R = [Z, −1, −½‖z‖²], both (n, c + 2), with
    Z = X Asᵀ, so that L_i · R_j = −½‖z_i − z_j‖² = −u_ij/2. ``L[:, :c]`` is the scaled embedding Z.
    """
    c, d = As.shape
    As_aug = np.zeros((c + 2, d))
    As_aug[:c] = As
    L = gemm(np.ascontiguousarray(X), As_aug, trans_b=True)  # [Z, 0, 0]
    Z = L[:, :c]
    h = 0.5 * np.einsum("ij,ij->i", Z, Z)
    L[:, c] = h
    L[:, c + 1] = 1.0
    if not right:
        return L, None
    R = L.copy()
    R[:, c] = -1.0
    R[:, c + 1] = -h
    return L, R


def exp_into(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[...] = exp(src), rows split over threads for large arrays.

    Use it only where no BLAS call has just returned: OpenBLAS's idle workers busy-wait for a short
    while after each call, and exp threads competing with them on few cores were measured slower
    than a single one. Between GEMM blocks, plain ``np.exp`` is used instead.
    """
    n = src.shape[0]
    if _N_THREADS == 1 or src.size < 200_000:
        np.exp(src, out=dst)
        return
    cuts = np.linspace(0, n, _N_THREADS + 1).astype(int)
    futures = [_executor().submit(np.exp, src[a:b], out=dst[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    for f in futures:
        f.result()


def embedded_blocks(
    L: np.ndarray, R: np.ndarray, out: np.ndarray, lower: bool, value: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Kernel values from embedded rows: out = value(L Rᵀ), in :data:`STREAM_BLOCK` row blocks.

    value : maps a block T = L Rᵀ = −u/2 to kernel values (it may overwrite T); None is the
        Gaussian, exp(T).
    lower : only the lower triangle (with the diagonal, rounded up to whole row blocks) of a
        symmetric kernel is written (L, R from one X), about half the flops; the strict upper
        triangle of ``out`` is left untouched (it may be lazily backed memory).
    """
    n, w_full = out.shape
    block = STREAM_BLOCK
    if not lower:
        # full rows are contiguous: GEMM straight into them, then one threaded exp pass (measured
        # ~10% faster than alternating GEMM and exp, whose threads then meet the spinning BLAS ones)
        for i0 in range(0, n, block):
            gemm(L[i0 : i0 + block], R, trans_b=True, out=out[i0 : i0 + block])
        if value is None:
            exp_into(out, out)
        else:
            for i0 in range(0, n, ROW_BLOCK):
                out[i0 : i0 + ROW_BLOCK] = value(out[i0 : i0 + ROW_BLOCK])
        return out
    work = np.empty(min(block, n) * w_full)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        tmp = work[: (i1 - i0) * i1].reshape(i1 - i0, i1)
        gemm(L[i0:i1], R[:i1], trans_b=True, out=tmp)
        if value is None:
            np.exp(tmp, out=out[i0:i1, :i1])  # single thread between GEMMs, see exp_into
        else:
            out[i0:i1, :i1] = value(tmp)
    return out
