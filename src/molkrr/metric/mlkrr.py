"""Metric learning for kernel ridge regression (MLKRR; Fabregat et al. 2022, eqs 6–10 and 13).

Kernel k(a, b) = exp(−‖A(a − b)‖² / (2σ²)) (no prefactor; the paper's σ_p = √2 σ and its
prefactor 1/(√(2π)σ_p) only rescales λ). With the training set split into an α part and an A part,

    H = K_αα + λI,   α = H⁻¹ y_α,   ŷ_A = Q α with Q = k(X_A, X_α),   L = Σ (ŷ_A − y_A)².

The gradient is assembled in the transformed space (see docs/mlkrr.md for the derivation):

    ∂L/∂A = −(2/σ²) (G_Aᵀ X_A + G_αᵀ X_α),   r = ŷ − y_A,  u = Qᵀ r,  β = H⁻¹ u,
    G_A = (r∘ŷ) ∘ Z_A − r ∘ Q(α∘Z_α),
    G_α = (α∘u − β∘Kα − α∘Kβ) ∘ Z_α − α ∘ Qᵀ(r∘Z_A) + β ∘ K(α∘Z_α) + α ∘ K(β∘Z_α),

with Z = X Aᵀ and "v ∘ M" scaling the rows of M. One Cholesky factorisation H = UᵀU serves
both solves (α and the adjoint β) and the products K V = Uᵀ(U V) − λV, so K itself is never kept;
Q is streamed in row blocks (each block gives its rows of ŷ, r and G_A and its share of Qᵀ[r∘Z_A, r])
and never stored. The only n²-sized array is the Cholesky buffer.
"""

from __future__ import annotations

import json
import mmap
from functools import partial
from typing import Any

import numpy as np
from scipy.linalg import cho_solve
from scipy.linalg.blas import dtrmm

from ..backends import get_backend
from ..errors import InvalidInputError, NumericalError, ShapeMismatchError
from ..kernels import Gaussian, Kernel, StationaryKernel, make_kernel
from ..kernels.blocks import STREAM_BLOCK, embed, embedded_blocks
from ..linalg import cholesky_lower_inplace, gemm
from ..schema import Int, Number, Schema, fail, number, show
from . import _array_objectives
from ._util import as_float_matrix, as_float_vector, check_int, check_positive
from .base_metric import MetricLearner


_VALIDATION_STREAM = 0x7A11D  # seed-sequence key of stochastic MLKRR's fixed validation reference batch


def _lazy_square(m: int) -> np.ndarray:
    """An uninitialised (m, m) float64 C array whose pages are only backed once written.

    An anonymous mmap without MADV_HUGEPAGE (numpy advises huge pages for its own large buffers):
    the strict upper triangle of the Cholesky buffer is never touched, so it never costs RSS.
    """
    if m < 512:
        return np.empty((m, m))
    buf = mmap.mmap(-1, m * m * 8)
    return np.frombuffer(buf, dtype=np.float64).reshape(m, m)


def _factor_upper(Hbuf: np.ndarray) -> np.ndarray:
    """Factor H = UᵀU in place (H in the lower triangle of the C-ordered Hbuf); returns U as the
    F-ordered view Hbuf.T (U in its upper triangle, the rest of the buffer is garbage)."""
    try:
        cholesky_lower_inplace(Hbuf)
    except np.linalg.LinAlgError as exc:
        raise NumericalError(
            f"the regularised kernel matrix K_αα + λI is not numerically positive definite ({exc}); increase lam"
        ) from exc
    return Hbuf.T


def metric_kernel(kernel: "str | Kernel") -> StationaryKernel:
    """The kernel of a metric-learning objective: a stationary kernel (its σ is the learner's, not the object's)."""
    k = make_kernel(kernel)
    if not isinstance(k, StationaryKernel):
        raise InvalidInputError(
            f"metric learning needs a kernel of ‖A(a − b)‖² with a gradient (gaussian, matern32, matern52, "
            f"or any StationaryKernel); {k.name!r} is not one"
            + (" (the Laplacian's gradient in A jumps wherever a component of A(a − b) changes sign)"
               if k.name == "laplacian" else "")
        )
    return k


def _mlkrr(A, Xa, ya, XA, yA, sigma, lam, want_aux=False):
    """Loss, ∂L/∂A and (if want_aux) {'alpha', 'train_mae'}; inputs already validated."""
    c = A.shape[0]
    m = Xa.shape[0]
    nA = XA.shape[0]
    As = A / sigma
    La, Ra = embed(Xa, As)  # La[:, :c] = Z_α/σ
    LA, _ = embed(XA, As, right=False)  # LA[:, :c] = Z_A/σ
    Za = La[:, :c]
    ZA = LA[:, :c]

    # H = K_αα + λI in the lower triangle of a lazily backed C buffer, factored in place
    Hbuf = _lazy_square(m)
    embedded_blocks(La, Ra, Hbuf, lower=True)
    Hbuf.flat[:: m + 1] = 1.0 + lam  # K_aa = exp(0) exactly
    U = _factor_upper(Hbuf)
    del Hbuf
    alpha = cho_solve((U, False), ya, check_finite=False)

    # Q = k(X_A, X_α) is streamed in row blocks of the A part and never stored. Row i of Q gives
    # ŷ_i and r_i, so each block is used twice while it is hot:
    #   P_b = Q_b [α∘Z_α, α] = [Q(α∘Z_α), ŷ]_b,   R += Q_bᵀ [r∘Z_A, r]_b   (R = [Qᵀ(r∘Z_A), Qᵀr])
    # and G_A = (r∘ŷ)∘Z_A − r∘Q(α∘Z_α) is assembled block by block.
    V = np.empty((m, c + 1))
    np.multiply(Za, alpha[:, None], out=V[:, :c])
    V[:, c] = alpha
    B = min(STREAM_BLOCK, nA)
    q_work = np.empty(B * m)
    p_work = np.empty(B * (c + 1))
    Wb = np.empty((B, c + 1))
    R = np.zeros((m, c + 1))
    GA = np.empty((nA, c))
    yhat = np.empty(nA)
    for i0 in range(0, nA, B):
        i1 = min(i0 + B, nA)
        b = i1 - i0
        Qb = q_work[: b * m].reshape(b, m)
        gemm(LA[i0:i1], Ra, trans_b=True, out=Qb)
        np.exp(Qb, out=Qb)  # one thread: BLAS workers are spinning between the GEMMs
        Pb = gemm(Qb, V, out=p_work[: b * (c + 1)].reshape(b, c + 1))
        yh = Pb[:, c]
        rb = yh - yA[i0:i1]
        yhat[i0:i1] = yh
        Gb = GA[i0:i1]
        np.multiply(Pb[:, :c], -rb[:, None], out=Gb)
        Gb += (rb * yh)[:, None] * ZA[i0:i1]
        np.multiply(ZA[i0:i1], rb[:, None], out=Wb[:b, :c])
        Wb[:b, c] = rb
        gemm(Qb, Wb[:b], trans_a=True, out=R, beta=1.0)
    del q_work, p_work, Wb, V, Ra, La
    r = yhat - yA
    loss = float(np.einsum("i,i->", r, r))
    u = R[:, c].copy()
    beta = cho_solve((U, False), u, check_finite=False)
    M = gemm(GA, XA, trans_a=True)  # G_Aᵀ X_A
    del GA, LA, ZA

    # K [α∘Z_α, β∘Z_α, α, β] = Uᵀ(U V) − λV  (two triangular products, no copy of K kept).
    # T is C-ordered (m, 2c + 2); BLAS sees the F-ordered Tᵀ and computes Tᵀ ← Tᵀ Uᵀ U in place.
    T = np.empty((m, 2 * c + 2))
    np.multiply(Za, alpha[:, None], out=T[:, :c])
    np.multiply(Za, beta[:, None], out=T[:, c : 2 * c])
    T[:, 2 * c] = alpha
    T[:, 2 * c + 1] = beta
    Tt = dtrmm(1.0, U, T.T, side=1, lower=0, trans_a=1, overwrite_b=1)
    Tt = dtrmm(1.0, U, Tt, side=1, lower=0, trans_a=0, overwrite_b=1)
    T = Tt.T
    del U
    if lam != 0.0:
        T[:, :c] -= (lam * alpha)[:, None] * Za
        T[:, c : 2 * c] -= (lam * beta)[:, None] * Za
        T[:, 2 * c] -= lam * alpha
        T[:, 2 * c + 1] -= lam * beta
    coef = alpha * u - beta * T[:, 2 * c] - alpha * T[:, 2 * c + 1]
    # G_α = coef∘Z_α − α∘Qᵀ(r∘Z_A) + β∘K(α∘Z_α) + α∘K(β∘Z_α)
    G = np.multiply(T[:, :c], beta[:, None])
    G += alpha[:, None] * T[:, c : 2 * c]
    G -= alpha[:, None] * R[:, :c]
    G += coef[:, None] * Za
    del T, R
    M += gemm(G, Xa, trans_a=True)
    # Z was scaled by 1/σ, so G(Z) = σ G(Z/σ) and ∂L/∂A = −(2/σ²) σ M
    M *= -2.0 / sigma
    if not want_aux:
        return loss, M, {}
    return loss, M, {"alpha": alpha, "train_mae": float(np.mean(np.abs(r)))}



def _profile_value(kernel: StationaryKernel):
    """T = −u/2 block ↦ kernel values g(u), in place where the profile allows."""

    def value(T: np.ndarray) -> np.ndarray:
        np.multiply(T, -2.0, out=T)
        np.maximum(T, 0.0, out=T)
        return kernel.profile(T)[0]

    return value


def _mlkrr_stationary(kernel, A, Xa, ya, XA, yA, sigma, lam, want_aux=False):
    """Loss, ∂L/∂A and aux for any stationary kernel k = g(u), u = ‖A(a − b)‖²/σ² (the Gaussian has
    its own faster path, :func:`_mlkrr`, which uses g′ = −g/2 to reuse the factor of H for K V).

    With P = W ∘ g′(U) for the weights W of dL = Σ W_ij dk_ij (W_Q = 2 r αᵀ, W_K = −2 β αᵀ) and
    du_ij = (2/σ)(z_i − z_j)ᵀ dA (x_i − x_j) (z = A x/σ):

        ∂L/∂A = (2/σ) (G_Aᵀ X_A + G_αᵀ X_α),
        G_A = (P_Q 1)∘Z_A − P_Q Z_α,
        G_α = (P_Qᵀ1)∘Z_α − P_Qᵀ Z_A + (P_K 1 + P_Kᵀ1)∘Z_α − (P_K + P_Kᵀ) Z_α,

    where P_K Z_α = −2 β∘K′(α∘Z_α) and P_Kᵀ Z_α = −2 α∘K′(β∘Z_α) (K′ = g′(U_αα) symmetric): K′ is
    streamed in row blocks once more after the factorisation, Q and Q′ once.
    """
    c = A.shape[0]
    m = Xa.shape[0]
    nA = XA.shape[0]
    As = A / sigma
    La, Ra = embed(Xa, As)
    LA, _ = embed(XA, As, right=False)
    Za = La[:, :c]
    ZA = LA[:, :c]
    g0 = float(kernel.profile(np.zeros(1))[0][0])

    Hbuf = _lazy_square(m)
    embedded_blocks(La, Ra, Hbuf, lower=True, value=_profile_value(kernel))
    Hbuf.flat[:: m + 1] = g0 + lam
    U = _factor_upper(Hbuf)
    del Hbuf
    alpha = cho_solve((U, False), ya, check_finite=False)

    # stream Q = g(U_Aα) and Q′ = g′(U_Aα): ŷ, r, G_A, R = [P_Qᵀ Z_A, P_Qᵀ 1] and u = Qᵀ r
    B = min(STREAM_BLOCK, nA)
    R = np.zeros((m, c + 1))
    u = np.zeros(m)
    GA = np.empty((nA, c))
    yhat = np.empty(nA)
    Wb = np.empty((B, c + 1))
    for i0 in range(0, nA, B):
        i1 = min(i0 + B, nA)
        b = i1 - i0
        T = gemm(LA[i0:i1], Ra, trans_b=True)
        np.multiply(T, -2.0, out=T)
        np.maximum(T, 0.0, out=T)
        Qb, Q1b = kernel.profile(T, 1)
        yh = Qb @ alpha
        rb = yh - yA[i0:i1]
        yhat[i0:i1] = yh
        Pb = Q1b
        Pb *= alpha[None, :]
        Pb *= 2.0 * rb[:, None]  # P_Q block = 2 r αᵀ ∘ Q′
        GA[i0:i1] = Pb.sum(axis=1)[:, None] * ZA[i0:i1] - gemm(Pb, Za)
        np.copyto(Wb[:b, :c], ZA[i0:i1])
        Wb[:b, c] = 1.0
        gemm(Pb, Wb[:b], trans_a=True, out=R, beta=1.0)
        u += gemm(Qb, rb[:, None], trans_a=True)[:, 0]
    r = yhat - yA
    loss = float(np.einsum("i,i->", r, r))
    beta = cho_solve((U, False), u, check_finite=False)
    M = gemm(GA, XA, trans_a=True)
    del GA, U

    # K′ V with V = [α∘Z_α, β∘Z_α, α, β], K′ = g′(U_αα) streamed in row blocks
    V = np.empty((m, 2 * c + 2))
    np.multiply(Za, alpha[:, None], out=V[:, :c])
    np.multiply(Za, beta[:, None], out=V[:, c : 2 * c])
    V[:, 2 * c] = alpha
    V[:, 2 * c + 1] = beta
    KV = np.empty_like(V)
    for i0 in range(0, m, STREAM_BLOCK):
        i1 = min(i0 + STREAM_BLOCK, m)
        T = gemm(La[i0:i1], Ra, trans_b=True)
        np.multiply(T, -2.0, out=T)
        np.maximum(T, 0.0, out=T)
        K1 = kernel.profile(T, 1)[1]
        gemm(K1, V, out=KV[i0:i1])
    PK_Z = -2.0 * (beta[:, None] * KV[:, :c])          # P_K Z_α
    PKt_Z = -2.0 * (alpha[:, None] * KV[:, c : 2 * c])  # P_Kᵀ Z_α
    PK_1 = -2.0 * beta * KV[:, 2 * c]                   # P_K 1
    PKt_1 = -2.0 * alpha * KV[:, 2 * c + 1]             # P_Kᵀ 1
    Ga = (R[:, c] + PK_1 + PKt_1)[:, None] * Za - R[:, :c] - PK_Z - PKt_Z
    M += gemm(Ga, Xa, trans_a=True)
    M *= 2.0 / sigma
    if not want_aux:
        return loss, M, {}
    return loss, M, {"alpha": alpha, "train_mae": float(np.mean(np.abs(r)))}


def _objective(kernel: StationaryKernel):
    """The numpy MLKRR objective for ``kernel``: the Gaussian's specialised one, or the stationary one."""
    if type(kernel) is Gaussian:
        return _mlkrr
    return lambda *args, **kw: _mlkrr_stationary(kernel, *args, **kw)


def objective_on(be: Any, kernel: StationaryKernel):
    """objective(A, Xa, ya, XA, yA, sigma, lam, want_aux=False) → (loss, ∂L/∂A, aux) on the backend ``be``.

    Every backend runs the objective written against the array operations
    (:func:`molkrr.metric._array_objectives.mlkrr`) except numpy, which keeps the BLAS-level functions
    above for memory: the Cholesky buffer is lazily backed and only its lower triangle is ever written
    (about half the resident memory of the generic version's full K_αα), and the Gaussian's K V reuses
    the factor in place (dtrmm). Speed on numpy was not distinguishable on a loaded 2-core machine
    (n = 2000, d = 200). The two agree to rounding (tests/test_torch_backend.py).
    """
    if be.name == "numpy":  # kept for memory (docstring); the generic version runs here too
        return _objective(kernel)
    return partial(_array_objectives.mlkrr, be, kernel)


def mlkrr_loss_and_grad(
    A: np.ndarray,
    X_alpha: np.ndarray,
    y_alpha: np.ndarray,
    X_A: np.ndarray,
    y_A: np.ndarray,
    sigma: float,
    lam: float,
    kernel: "str | Kernel" = "gaussian",
    *,
    return_sigma_grad: bool = False,
    backend: str | None = None,
    device: str | None = None,
) -> tuple[float, np.ndarray] | tuple[float, np.ndarray, float]:
    """MLKRR loss L = Σ_A (ŷ − y)² and its gradient ∂L/∂A (same shape as A).

    kernel : a name or a stationary kernel object (Gaussian by default; Matérn 3/2 and 5/2 work
        too); its own σ is ignored: the kernel is k = g(‖A(a − b)‖²/σ²) with this ``sigma``.

    A (n_components, n_features); X_alpha (n_α, n_features), y_alpha (n_α,): the points that
    define the KRR coefficients α = (K_αα + λI)⁻¹ y_α; X_A (n_A, n_features), y_A (n_A,): the
    points on which the squared error is measured. sigma > 0 in the units of A x; lam ≥ 0.
    Targets are used as given (no centring). With ``return_sigma_grad`` also returns ∂L/∂σ
    (= −⟨∂L/∂A, A⟩/σ: the kernel depends on A/σ only).
    backend, device : where it is computed ('numpy' or 'torch'; 'cpu', 'cuda', 'cuda:N'; None: the
    process default), see :mod:`molkrr.backends`; the result is numpy either way.
    """
    A = as_float_matrix(A, "A")
    Xa = as_float_matrix(X_alpha, "X_alpha")
    XA = as_float_matrix(X_A, "X_A")
    if Xa.shape[1] != A.shape[1] or XA.shape[1] != A.shape[1]:
        raise ShapeMismatchError(
            f"A has shape {A.shape} but X_alpha has {Xa.shape[1]} and X_A {XA.shape[1]} features"
        )
    if Xa.shape[0] < 1 or XA.shape[0] < 1:
        raise InvalidInputError("X_alpha and X_A need at least one row each")
    ya = as_float_vector(y_alpha, "y_alpha", Xa.shape[0])
    yA = as_float_vector(y_A, "y_A", XA.shape[0])
    sigma = check_positive(sigma, "sigma")
    lam = check_positive(lam, "lam", allow_zero=True)
    kern = metric_kernel(kernel)
    loss, grad, _ = objective_on(get_backend(backend, device), kern)(A, Xa, ya, XA, yA, sigma, lam)
    if not np.isfinite(loss) or not np.isfinite(grad).all():
        raise NumericalError("MLKRR loss or gradient is not finite; increase lam")
    if return_sigma_grad:
        return loss, grad, float(-np.einsum("ij,ij->", grad, A) / sigma)
    return loss, grad


def krr_alpha_transformed(X: np.ndarray, y: np.ndarray, A: np.ndarray, sigma: float, lam: float,
                          kernel: "str | Kernel" = "gaussian") -> np.ndarray:
    """KRR coefficients α (n,) = (K + λI)⁻¹ y of the kernel on A x with width σ (Cholesky, lower triangle only)."""
    k = metric_kernel(kernel)
    La, Ra = embed(X, A / sigma)
    n = X.shape[0]
    Hbuf = _lazy_square(n)
    gaussian = type(k) is Gaussian
    embedded_blocks(La, Ra, Hbuf, lower=True, value=None if gaussian else _profile_value(k))
    g0 = 1.0 if gaussian else float(k.profile(np.zeros(1))[0][0])
    Hbuf.flat[:: n + 1] = g0 + lam
    U = _factor_upper(Hbuf)
    return cho_solve((U, False), y, check_finite=False)


def krr_predict_transformed(X_new: np.ndarray, X_alpha: np.ndarray, alpha: np.ndarray, A: np.ndarray,
                            sigma: float, kernel: "str | Kernel" = "gaussian") -> np.ndarray:
    """Σ_j α_j k(x, x_j) for the rows x of X_new (kernel on A x with width σ)."""
    k = metric_kernel(kernel)
    As = A / sigma
    Ln, _ = embed(X_new, As, right=False)
    _, Ra = embed(X_alpha, As)
    out = np.empty((Ln.shape[0], Ra.shape[0]))
    return embedded_blocks(Ln, Ra, out, lower=False, value=None if type(k) is Gaussian else _profile_value(k)) @ alpha


class MLKRR(MetricLearner):
    """Metric learning for kernel ridge regression (Fabregat et al. 2022), a scikit-learn transformer.

    Learns A (n_components, n_features) so that KRR with the kernel k = g(‖A(a−b)‖²/σ²) (Gaussian:
    exp(−‖A(a−b)‖²/(2σ²))) trained on a random α part of the training set predicts the other (A) part well. The split is
    redrawn every ``shuffle_every`` L-BFGS-B iterations (a *segment*; L-BFGS-B restarts there).

    Parameters
    ----------
    kernel : str or Kernel — 'gaussian' (default), 'matern32', 'matern52' or a stationary kernel
        object; the object's own σ is ignored (``sigma`` below is the width). The Laplacian is refused.
    backend, device : str or None — where the objective is evaluated ('numpy' or 'torch'; 'cpu', 'cuda',
        'cuda:N'; None: the process default), see :mod:`molkrr.backends`. The optimiser, validation
        and checkpoints run on numpy; a checkpoint resumes on any backend.
    n_components : int or None — rows of A (None: n_features). Fewer rows reduce the dimension.
    init : 'identity' (default, the paper's choice; truncated if n_components < n_features),
        'pca', 'random' (N(0, 1/n_features) entries) or an array (n_components, n_features).
    sigma : float or 'auto' — kernel width in the units of A x (the paper's σ_p = √2 σ). 'auto' (the
        default): 13 × the median pairwise distance of A₀ x over (up to) 1,000 training rows, where
        validation-tuned KRR on QM9 FCHL19 puts σ (docs/mlkrr.md §7); the value used is ``sigma_``.
    learn_sigma : bool — also optimise log σ. The loss depends on A/σ only, so this is a gauge
        direction: it changes the L-BFGS path, not the set of reachable kernels.
    lam : float — ridge λ added to K_αα.
    alpha_fraction : float in (0, 1) — share of the training set in the α part (paper: 0.5).
    shuffle_every : int — L-BFGS-B iterations per segment (paper: 30).
    max_iter : int — total L-BFGS-B iterations.
    tol : float or None — L-BFGS-B tolerance (scipy ``minimize(tol=...)``); the fit stops when a
        segment converges.
    center_y : bool — subtract the training mean of y (stored as ``y_offset_``) before fitting;
        a Gaussian KRR without intercept decays to 0 away from the data, so an offset would
        otherwise dominate the loss.
    random_state : int, RandomState or None — draws one integer seed (``seed_``); the split of
        segment s is a function of (seed_, s) only, which makes checkpoint resume exact.
    verbose : 0 silent, 1 tqdm progress bar.
    callback : callable(info: dict) -> bool or None, called after every iteration with keys
        iteration, segment, loss, train_mae, val_mae, sigma, components; return True to stop.
    validation_every : int — with ``fit(..., validation_data=(X_val, y_val))``, every that many
        iterations record the MAE on X_val of the KRR model of the current objective (trained on the
        current α part with the current A, σ, λ). Computed in the iteration callback, never in the
        objective; validation data is a fit argument, so it is never saved in a model file.
    batch_size : int or None — stochastic MLKRR: every segment draws a fresh batch of this many rows
        from the whole training set and splits it into α (``alpha_fraction`` of it) and A parts, so a
        step costs O(m²c + m³) for m = batch_size whatever n is. None: every segment splits all n rows.
    early_stopping : bool — needs ``validation_data``: the fitted A is the one with the lowest
        validation MAE seen at the validation points (every ``validation_every`` iterations).
    patience : int or None — with early stopping, stop after this many validation points without a
        new best (None: run to ``max_iter``).
    averaging : float in (0, 1) or None — exponential moving average of the iterates,
        Ā ← averaging·Ā + (1 − averaging)·A after every iteration (0.95 averages over about 20);
        the fitted A (and, with validation, the validation MAE) is that of Ā.

    Fitted attributes: components_, sigma_, n_iter_, n_segments_, seed_, y_offset_, history_ (dict of
    lists: iteration, segment, loss (on the current split), train_mae (MAE on the A part), sigma,
    seconds (wall time of the iteration), val_iteration, val_mae), n_features_in_.
    """

    def __init__(
        self,
        n_components=None,
        init="identity",
        sigma="auto",
        learn_sigma=False,
        lam=1e-9,
        alpha_fraction=0.5,
        shuffle_every=30,
        max_iter=100,
        tol=1e-6,
        center_y=True,
        random_state=None,
        verbose=0,
        callback=None,
        validation_every=1,
        kernel="gaussian",
        backend=None,
        device=None,
        # --- stochastic MLKRR (issue 11): batches, early stopping, iterate averaging ---
        batch_size=None,
        early_stopping=False,
        patience=None,
        averaging=None,
        # --- end stochastic MLKRR ---
    ):
        self.n_components = n_components
        self.init = init
        self.sigma = sigma
        self.learn_sigma = learn_sigma
        self.lam = lam
        self.alpha_fraction = alpha_fraction
        self.shuffle_every = shuffle_every
        self.max_iter = max_iter
        self.tol = tol
        self.center_y = center_y
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.validation_every = validation_every
        self.kernel = kernel
        self.backend = backend
        self.device = device
        # --- stochastic MLKRR (issue 11) ---
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.patience = patience
        self.averaging = averaging
        # --- end stochastic MLKRR ---

    _checkpoint_keys = ("n_components", "sigma", "learn_sigma", "lam", "alpha_fraction", "shuffle_every", "tol",
                        "center_y")

    def fit(self, X, y, checkpoint=None, checkpoint_every=None, *, validation_data=None):
        """Learn A from X (n, n_features) and y (n,).

        validation_data : (X_val, y_val) or None — recorded in ``history_`` every ``validation_every``
            iterations: the MAE of the current objective's KRR model (full batch), or with
            ``batch_size`` of a KRR on one fixed reference batch of the training set (a function of
            the seed), so that validation MAEs of different segments compare.
        checkpoint : path or None — if given, the state (A, σ, iteration, segment, seed, history) is
            written there atomically at segment boundaries; if the file exists, fitting resumes from
            it (same data and parameters required) and ends exactly where an uninterrupted run ends.
        checkpoint_every : int or None — write at the first segment boundary at least this many
            iterations after the previous checkpoint (None: every segment). Always written at the end.
        """
        check_positive(self.lam, "lam", allow_zero=True)
        if not (0.0 < check_positive(self.alpha_fraction, "alpha_fraction") < 1.0):
            raise InvalidInputError(f"alpha_fraction must be in (0, 1), got {self.alpha_fraction!r}")
        check_int(self.shuffle_every, "shuffle_every", 1)
        if self.batch_size is not None:
            check_int(self.batch_size, "batch_size", 2)
        metric_kernel(self.kernel)
        get_backend(self.backend, self.device)  # an unknown backend or a missing device fails here
        return self._fit(X, y, validation_data=validation_data, checkpoint=checkpoint, checkpoint_every=checkpoint_every)

    @classmethod
    def model_file_schema(cls) -> Schema:
        """A metric learner's fields (:mod:`molkrr.schema`) and MLKRR's own parameters."""
        return super().model_file_schema().extend(params={
            "lam": Number(lo=0.0), "alpha_fraction": Number(then=_check_alpha_fraction), "shuffle_every": Int(1)})

    def _segment_length(self) -> int:
        return int(self.shuffle_every)

    def split(self, n: int, segment: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(α indices, A indices) of segment ``segment``: a function of (seed, segment) only.

        Without ``batch_size`` (or with batch_size ≥ n) all n rows are split; otherwise a batch of
        m = batch_size rows is drawn from all n afresh for every segment (the first m of the same
        permutation), so one step costs O(m²c + m³) whatever n is.
        """
        m = n if self.batch_size is None else min(int(self.batch_size), n)
        n_alpha = int(round(float(self.alpha_fraction) * m))
        n_alpha = min(max(n_alpha, 1), m - 1)
        perm = np.random.default_rng([seed, segment]).permutation(n)
        return np.sort(perm[:n_alpha]), np.sort(perm[n_alpha:m])

    def reference_rows(self, n: int, seed: int) -> np.ndarray:
        """Rows (sorted) of the fixed batch whose KRR gives stochastic MLKRR's validation MAE: batch_size
        of the n training rows, a function of the seed only (all n rows without a smaller batch_size)."""
        if self.batch_size is None or int(self.batch_size) >= n:
            return np.arange(n)
        return np.sort(np.random.default_rng([seed, _VALIDATION_STREAM]).permutation(n)[: int(self.batch_size)])

    def _segment_objective(self, X, y, segment, seed):
        ia, iA = self.split(X.shape[0], segment, seed)
        Xa, ya, XA, yA = X[ia], y[ia], X[iA], y[iA]
        lam = float(self.lam)

        kernel = metric_kernel(self.kernel)
        be = get_backend(self.backend, self.device)
        objective = objective_on(be, kernel)
        data = tuple(be.asarray(v) for v in (Xa, ya, XA, yA))  # the segment's data goes to the device once

        def fn(A, sigma):
            return objective(A, *data, sigma, lam, want_aux=True)

        n = X.shape[0]
        if self.batch_size is not None and int(self.batch_size) < n:
            # Stochastic: the α part changes every segment, so its KRR's validation MAE would mix the
            # metric's progress with the draw's luck. Validate instead with a KRR on one fixed
            # reference batch (batch_size rows, a function of the seed only): comparable across segments.
            ref = self.reference_rows(n, seed)
            Xr, yr = X[ref], y[ref]

            def predictor(Xv, A, sigma, aux):
                alpha = krr_alpha_transformed(Xr, yr, A, sigma, lam, kernel)
                return krr_predict_transformed(Xv, Xr, alpha, A, sigma, kernel)

            return fn, predictor

        def predictor(Xv, A, sigma, aux):
            alpha = aux.get("alpha")
            if alpha is None:
                alpha = fn(A, sigma)[2]["alpha"]
            return krr_predict_transformed(Xv, Xa, alpha, A, sigma, kernel)

        return fn, predictor

    # --- stochastic MLKRR (issue 11) ---
    def _checkpoint_params(self) -> dict:
        out = super()._checkpoint_params()
        defaults = {"batch_size": None, "early_stopping": False, "patience": None, "averaging": None}
        extra = {k: getattr(self, k) for k, v in defaults.items() if getattr(self, k) != v}
        if extra:  # checkpoints of the full-batch defaults read as before these options existed
            out.update(extra)
            out["validation_every"] = self.validation_every
        return json.loads(json.dumps(out, default=float))
    # --- end stochastic MLKRR ---


def _check_alpha_fraction(frac, where, node) -> None:
    if not 0.0 < number(frac, where) < 1.0:
        raise fail(where, f"must lie in (0, 1), got {show(frac)}")
