"""The MLKRR and MLKR objectives written once against a compute backend's array operations.

``be`` is any backend of :mod:`molkrr.backends` (``NumpyBackend``, ``TorchBackend`` on the CPU or a
GPU): the functions below use only its operations (``matmul``, ``exp_``, ``cholesky``, ``spd_solve``,
``spd_matmul``, ``sum``, ``rows_per_block``, ``memory_guard``, ...), the operators ``@ + - * /`` and
slicing, which numpy arrays and torch tensors share. The closed-form gradients are those of
:func:`molkrr.metric.mlkrr._mlkrr` (Gaussian), :func:`molkrr.metric.mlkrr._mlkrr_stationary` (any
profile g, g′) and :func:`molkrr.metric.mlkr._mlkr`; docs/mlkrr.md derives them.

On the numpy backend molkrr keeps its BLAS-level versions in :mod:`molkrr.metric.mlkrr` and
:mod:`molkrr.metric.mlkr` (in-place dgemm/dtrmm into preallocated buffers, a lazily backed Cholesky
buffer whose upper triangle never costs memory); these functions run on numpy too, and the tests check
that they agree with those versions (tests/test_torch_backend.py), which is what makes a new backend
one module: it implements the operations, and these objectives run on it.

Memory: the MLKRR objective keeps two n_α × n_α matrices on torch (K_αα + λI and its Cholesky factor;
one on numpy, factored in place) and streams Q = k(X_A, X_α) in row blocks, so n = 20,000 (n_α =
10,000) needs about 2 GB; MLKR streams P in row blocks (O(n · block)). The memory a computation needs
is checked against the device's free memory before it starts (``be.memory_guard``), and an
out-of-memory failure during it becomes a :class:`~molkrr.errors.DeviceMemoryError` that says which
size fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import NumericalError
from ..kernels import Gaussian, StationaryKernel


# ------------------------------------------------------------------------------ memory estimates
def mlkrr_bytes(be: Any, m: int, n_A: int, c: int, d: int) -> int:
    """Device bytes of one MLKRR evaluation with n_α = m, n_A, c components and d features."""
    rows = be.rows_per_block(m)
    return be.itemsize() * (
        2 * m * m  # K_αα + λI and its Cholesky factor
        + 6 * min(rows, max(m, n_A)) * m  # a streamed block and its profile temporaries
        + (m + n_A) * (2 * d + 2 * (c + 2))  # data, embeddings
        + 8 * m * (c + 1)  # V, K′V, R, gradients
    )


def _mlkrr_fits(be: Any, n_A: int, c: int, d: int) -> Callable[[int], str]:
    def fits(avail: int) -> str:
        lo, hi = 1, 1 << 22
        while hi - lo > 1:  # largest m with an even split that fits
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if mlkrr_bytes(be, mid, mid, c, d) <= 0.9 * avail else (lo, mid)
        return f"the MLKRR objective fits there up to about n_α = {lo:,} (n = {2 * lo:,} with alpha_fraction=0.5)"
    return fits


# ------------------------------------------------------------------------------ shared pieces
def embed(be: Any, X: Any, As: Any, right: bool = True) -> tuple[Any, Any]:
    """L = [Z, ½‖z‖², 1] and R = [Z, −1, −½‖z‖²] (n, c + 2), Z = X Asᵀ: L_i · R_j = −u_ij/2
    (as :func:`molkrr.kernels.blocks.embed`)."""
    n, c = X.shape[0], As.shape[0]
    L = be.empty((n, c + 2))
    L[:, :c] = be.matmul(X, As, trans_b=True)
    h = 0.5 * be.sq_norms(L[:, :c])
    L[:, c] = h
    L[:, c + 1] = 1.0
    if not right:
        return L, None
    R = be.copy(L)
    R[:, c] = -1.0
    R[:, c + 1] = -h
    return L, R


def _u_from_embedded(be: Any, T: Any) -> Any:
    """T = L Rᵀ = −u/2 ↦ u ≥ 0, in place."""
    T *= -2.0
    return be.clamp_min_(T, 0.0)


def _factor(be: Any, H: Any) -> Any:
    """Lower Cholesky factor of H = K_αα + λI (only H's lower triangle is read), else NumericalError."""
    try:
        return be.cholesky(H)
    except NumericalError as exc:
        raise NumericalError(
            f"the regularised kernel matrix K_αα + λI is not numerically positive definite ({exc}); increase lam"
        ) from exc


# ------------------------------------------------------------------------------ MLKRR
def mlkrr(be: Any, kernel: StationaryKernel, A: Any, Xa: Any, ya: Any, XA: Any, yA: Any, sigma: float,
          lam: float, want_aux: bool = False) -> tuple[float, np.ndarray, dict]:
    """(L, ∂L/∂A (c, d) as numpy, aux) of the MLKRR objective on the backend ``be``.

    aux (if want_aux): {'alpha': α (n_α,), 'train_mae': MAE on the A part}. Inputs as validated by
    :func:`molkrr.metric.mlkrr_loss_and_grad` (numpy arrays or arrays of this backend).
    """
    A, Xa, XA = be.asarray(A), be.asarray(Xa), be.asarray(XA)
    ya, yA = be.asarray(ya), be.asarray(yA)
    m, nA, c, d = Xa.shape[0], XA.shape[0], A.shape[0], A.shape[1]
    what = f"MLKRR objective with n_α={m:,}, n_A={nA:,}, {c} components"
    with be.memory_guard(what, mlkrr_bytes(be, m, nA, c, d), _mlkrr_fits(be, nA, c, d)):
        loss, M, alpha, r = _mlkrr(be, kernel, A, Xa, ya, XA, yA, float(sigma), float(lam))
    grad = be.to_numpy(M)
    if not want_aux:
        return loss, grad, {}
    return loss, grad, {"alpha": be.to_numpy(alpha), "train_mae": be.mean_abs(r)}


def _mlkrr(be, kernel, A, Xa, ya, XA, yA, sigma, lam):
    """(loss, ∂L/∂A, α, r) on the backend's arrays: the Gaussian's closed form or the stationary one."""
    c = A.shape[0]
    As = A / sigma
    La, Ra = embed(be, Xa, As)  # La[:, :c] = Z_α/σ
    LA, _ = embed(be, XA, As, right=False)  # LA[:, :c] = Z_A/σ
    if type(kernel) is Gaussian:
        return _mlkrr_gaussian(be, La, Ra, LA, c, Xa, ya, XA, yA, sigma, lam)
    return _mlkrr_stationary(be, kernel, La, Ra, LA, c, Xa, ya, XA, yA, sigma, lam)


def _mlkrr_gaussian(be, La, Ra, LA, c, Xa, ya, XA, yA, sigma, lam):
    """K = exp(L Rᵀ) needs no other elementwise work on its blocks, and K V = H V − λV comes from
    H = K_αα + λI and its factor (``be.spd_matmul``)."""
    m, nA = La.shape[0], LA.shape[0]
    Za, ZA = La[:, :c], LA[:, :c]
    H = be.exp_(be.matmul(La, Ra, trans_b=True))
    be.fill_diagonal(H, 1.0 + lam)  # K_aa = exp(0) exactly
    U = _factor(be, H)
    alpha = be.spd_solve(U, ya)

    # Q = k(X_A, X_α) streamed in row blocks: P_b = Q_b [α∘Z_α, α] = [Q(α∘Z_α), ŷ]_b,
    # R += Q_bᵀ [r∘Z_A, r]_b, G_A = (r∘ŷ)∘Z_A − r∘Q(α∘Z_α)
    V = be.concat([Za * alpha[:, None], alpha[:, None]], axis=1)
    R = be.zeros((m, c + 1))
    GA = be.empty((nA, c))
    yhat = be.empty((nA,))
    step = be.rows_per_block(m)
    for i0 in range(0, nA, step):
        i1 = min(i0 + step, nA)
        Qb = be.exp_(be.matmul(LA[i0:i1], Ra, trans_b=True))
        Pb = be.matmul(Qb, V)
        yh = Pb[:, c]
        rb = yh - yA[i0:i1]
        yhat[i0:i1] = yh
        ZAb = ZA[i0:i1]
        GA[i0:i1] = (rb * yh)[:, None] * ZAb - rb[:, None] * Pb[:, :c]
        be.matmul(Qb, be.concat([ZAb * rb[:, None], rb[:, None]], axis=1), trans_a=True, out=R, beta=1.0)
        del Qb, Pb
    r = yhat - yA
    loss = float(r @ r)
    u = be.copy(R[:, c])
    beta = be.spd_solve(U, u)
    M = be.matmul(GA, XA, trans_a=True)
    del GA

    # K [α∘Z_α, β∘Z_α, α, β] = (H − λI) T
    T = be.concat([Za * alpha[:, None], Za * beta[:, None], alpha[:, None], beta[:, None]], axis=1)
    KT = be.spd_matmul(H, U, T)
    del H, U
    if lam != 0.0:
        KT -= lam * T
    coef = alpha * u - beta * KT[:, 2 * c] - alpha * KT[:, 2 * c + 1]
    # G_α = coef∘Z_α − α∘Qᵀ(r∘Z_A) + β∘K(α∘Z_α) + α∘K(β∘Z_α)
    G = beta[:, None] * KT[:, :c] + alpha[:, None] * KT[:, c : 2 * c] - alpha[:, None] * R[:, :c]
    G += coef[:, None] * Za
    be.matmul(G, Xa, trans_a=True, out=M, beta=1.0)
    M *= -2.0 / sigma  # Z was scaled by 1/σ: ∂L/∂A = −(2/σ²) σ M
    return loss, M, alpha, r


def _mlkrr_stationary(be, kernel, La, Ra, LA, c, Xa, ya, XA, yA, sigma, lam):
    """Any profile g, g′, with the scalings of P = diag(2r) Q′ diag(α) moved onto thin matrices, so a
    streamed block needs only its profile:

        P 1 = 2r∘(Q′α),  P Z_α = 2r∘Q′(α∘Z_α),  Pᵀ[Z_A, 1] = α∘(Q′ᵀ[2r∘Z_A, 2r]).
    """
    m, nA = La.shape[0], LA.shape[0]
    Za, ZA = La[:, :c], LA[:, :c]
    xp = be.xp
    g0 = float(kernel.profile(np.zeros(1))[0][0])
    step = be.rows_per_block(m)

    # H = K_αα + λI: only the lower triangle is built (the factorisation reads nothing else)
    H = be.empty((m, m))
    for i0 in range(0, m, step):
        i1 = min(i0 + step, m)
        H[i0:i1, :i1] = kernel.profile(_u_from_embedded(be, be.matmul(La[i0:i1], Ra[:i1], trans_b=True)), 0, xp=xp)[0]
    be.fill_diagonal(H, g0 + lam)
    U = _factor(be, H)
    del H
    alpha = be.spd_solve(U, ya)

    # stream Q = g(U_Aα), Q′ = g′(U_Aα): ŷ, r, G_A, R = [P_Qᵀ Z_A, P_Qᵀ 1] and u = Qᵀ r
    V = be.concat([Za * alpha[:, None], alpha[:, None]], axis=1)
    R = be.zeros((m, c + 1))
    u = be.zeros((m,))
    GA = be.empty((nA, c))
    yhat = be.empty((nA,))
    for i0 in range(0, nA, step):
        i1 = min(i0 + step, nA)
        Qb, Q1b = kernel.profile(_u_from_embedded(be, be.matmul(LA[i0:i1], Ra, trans_b=True)), 1, xp=xp)
        yh = Qb @ alpha
        rb = yh - yA[i0:i1]
        yhat[i0:i1] = yh
        u += rb @ Qb
        S = be.matmul(Q1b, V)  # [Q′(α∘Z_α), Q′α]
        r2 = 2.0 * rb
        ZAb = ZA[i0:i1]
        GA[i0:i1] = r2[:, None] * (S[:, c : c + 1] * ZAb - S[:, :c])
        be.matmul(Q1b, be.concat([ZAb * r2[:, None], r2[:, None]], axis=1), trans_a=True, out=R, beta=1.0)
        del Qb, Q1b
    R *= alpha[:, None]
    r = yhat - yA
    loss = float(r @ r)
    beta = be.spd_solve(U, u)
    del U
    M = be.matmul(GA, XA, trans_a=True)
    del GA

    # K′ V with V = [α∘Z_α, β∘Z_α, α, β], K′ = g′(U_αα) streamed in row blocks
    V = be.concat([Za * alpha[:, None], Za * beta[:, None], alpha[:, None], beta[:, None]], axis=1)
    KV = be.empty(tuple(V.shape))
    for i0 in range(0, m, step):
        i1 = min(i0 + step, m)
        K1 = kernel.profile(_u_from_embedded(be, be.matmul(La[i0:i1], Ra, trans_b=True)), 1, xp=xp)[1]
        KV[i0:i1] = be.matmul(K1, V)
    PK_Z = -2.0 * (beta[:, None] * KV[:, :c])  # P_K Z_α
    PKt_Z = -2.0 * (alpha[:, None] * KV[:, c : 2 * c])  # P_Kᵀ Z_α
    PK_1 = -2.0 * beta * KV[:, 2 * c]  # P_K 1
    PKt_1 = -2.0 * alpha * KV[:, 2 * c + 1]  # P_Kᵀ 1
    Ga = (R[:, c] + PK_1 + PKt_1)[:, None] * Za - R[:, :c] - PK_Z - PKt_Z
    be.matmul(Ga, Xa, trans_a=True, out=M, beta=1.0)
    M *= 2.0 / sigma
    return loss, M, alpha, r


# ------------------------------------------------------------------------------ MLKR
def mlkr(be: Any, A: Any, X: Any, y: Any, sigma: float, want_aux: bool = False) -> tuple[float, np.ndarray, dict]:
    """(L, ∂L/∂A (c, d) as numpy, aux) of the MLKR leave-one-out objective on the backend ``be``,
    with P streamed in row blocks (memory O(n · block), not O(n²))."""
    A, X, y = be.asarray(A), be.asarray(X), be.asarray(y)
    n, d = X.shape
    c = A.shape[0]
    per_row = 2 * d + 3 * c + 8  # data, embeddings, gradient buffers per training row
    block = be.rows_per_block(n) * n
    need = be.itemsize() * (4 * block + n * per_row)

    def fits(avail: int) -> str:
        n_max = int(max(avail / be.itemsize() - 4 * block, 0) / per_row * 0.9)
        return f"the MLKR objective fits there up to about n = {n_max:,}"

    with be.memory_guard(f"MLKR objective with n={n:,}", need, fits):
        L, R = embed(be, X, A / sigma)
        Z = L[:, :c]
        yhat = be.empty((n,))
        s = be.zeros((n,))
        G = be.zeros((n, c))
        step = be.rows_per_block(n)
        for i0 in range(0, n, step):
            i1 = min(i0 + step, n)
            E = be.matmul(L[i0:i1], R, trans_b=True)
            be.fill_diagonal(E, -math.inf, offset=i0)
            E -= be.row_max(E)[:, None]
            be.exp_(E)
            E /= be.sum(E, axis=1)[:, None]
            yh = E @ y
            yhat[i0:i1] = yh
            rb = yh - y[i0:i1]
            E *= rb[:, None]
            E *= yh[:, None] - y[None, :]  # W = diag(r) P ∘ (ŷ 1ᵀ − 1 yᵀ)
            W = E
            s[i0:i1] += be.sum(W, axis=1)
            s += be.sum(W, axis=0)
            G[i0:i1] += be.matmul(W, Z)
            be.matmul(W, Z[i0:i1], trans_a=True, out=G, beta=1.0)
            del E, W
        r = yhat - y
        loss = float(r @ r)
        G = s[:, None] * Z - G
        grad = be.matmul(G, X, trans_a=True)
        grad *= 2.0 / sigma  # Z scaled by 1/σ: (2/σ²)·σ
    out = be.to_numpy(grad)
    if not want_aux:
        return loss, out, {}
    return loss, out, {"train_mae": be.mean_abs(r)}


__all__ = ["embed", "mlkr", "mlkrr", "mlkrr_bytes"]
