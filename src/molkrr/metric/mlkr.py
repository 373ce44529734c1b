"""Metric learning for kernel regression (MLKR; Weinberger & Tesauro 2007; Fabregat et al. eqs 3–5).

Nadaraya–Watson leave-one-out estimator with the molkrr Gaussian k = exp(−‖A(a − b)‖²/(2σ²)):

    ŷ_i = Σ_{j≠i} p_ij y_j,   p_ij = k_ij / Σ_{l≠i} k_il,   L = Σ_i (ŷ_i − y_i)²,
    ∂L/∂A = (2/σ²) A Σ_ij W_ij x_ij x_ijᵀ,   W_ij = (ŷ_i − y_i)(ŷ_i − y_j) p_ij,

assembled with lemma 1 of the paper as (2/σ²) [Zᵀ diag(rowsum W + colsum W) X − Zᵀ (W + Wᵀ) X],
Z = X Aᵀ. metric-learn's MLKR uses exp(−‖A(a − b)‖²), i.e. σ = 1/√2 here.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from ..backends import get_backend
from ..errors import InvalidInputError, NumericalError, ShapeMismatchError
from ..kernels.blocks import STREAM_BLOCK, embed
from ..linalg import gemm
from . import _array_objectives
from ._util import as_float_matrix, as_float_vector, check_positive
from .base_metric import MetricLearner


def _softmax_rows(L: np.ndarray, R: np.ndarray) -> np.ndarray:
    """p_ij ∝ exp(L_i·R_j) over j ≠ i (rows sum to 1), computed stably (row max subtracted)."""
    E = gemm(L, R, trans_b=True)
    np.fill_diagonal(E, -np.inf)
    E -= E.max(axis=1)[:, None]
    np.exp(E, out=E)
    E /= E.sum(axis=1)[:, None]
    return E


def _mlkr(A, X, y, sigma, want_aux=False):
    c = A.shape[0]
    L, R = embed(X, A / sigma)
    Z = np.ascontiguousarray(L[:, :c])
    P = _softmax_rows(L, R)
    del R, L
    yhat = gemm(P, y[:, None])[:, 0]
    r = yhat - y
    loss = float(r @ r)
    # W = diag(r) P ∘ (ŷ 1ᵀ − 1 yᵀ), in place, in row chunks (no n×n temporary)
    W = P
    for a in range(0, W.shape[0], STREAM_BLOCK):
        b = min(a + STREAM_BLOCK, W.shape[0])
        blk = W[a:b]
        blk *= r[a:b, None]
        blk *= yhat[a:b, None] - y[None, :]
    s = W.sum(axis=1) + W.sum(axis=0)
    G = gemm(W, Z)
    gemm(W, Z, trans_a=True, out=G, beta=1.0)
    np.subtract(s[:, None] * Z, G, out=G)
    grad = (2.0 / sigma) * gemm(G, np.ascontiguousarray(X), trans_a=True)  # Z scaled by 1/σ: (2/σ²)·σ
    if not want_aux:
        return loss, grad, {}
    return loss, grad, {"train_mae": float(np.mean(np.abs(r)))}


def objective_on(be: Any):
    """objective(A, X, y, sigma, want_aux=False) → (loss, ∂L/∂A, aux) on the backend ``be``: the version
    written against the array operations (:func:`molkrr.metric._array_objectives.mlkr`), except on numpy,
    which keeps :func:`_mlkr` above for speed (P built once by in-place dgemm, W in place: the generic
    version took 1.28× its time on numpy, n = 1500, d = 200; the two agree to rounding,
    tests/test_torch_backend.py)."""
    if be.name == "numpy":  # kept for speed (docstring); the generic version runs here too
        return _mlkr
    return partial(_array_objectives.mlkr, be)


def mlkr_loss_and_grad(
    A: np.ndarray, X: np.ndarray, y: np.ndarray, sigma: float, *, return_sigma_grad: bool = False,
    backend: str | None = None, device: str | None = None,
) -> tuple[float, np.ndarray] | tuple[float, np.ndarray, float]:
    """MLKR leave-one-out loss Σ_i (ŷ_i − y_i)² and ∂L/∂A (shape of A).

    A (n_components, n_features), X (n, n_features) with n ≥ 2, y (n,), sigma > 0 (units of A x).
    With ``return_sigma_grad`` also ∂L/∂σ = −⟨∂L/∂A, A⟩/σ. backend, device: where it is computed
    (see :mod:`molkrr.backends`; None: the process default).
    """
    A = as_float_matrix(A, "A")
    X = as_float_matrix(X, "X")
    if X.shape[1] != A.shape[1]:
        raise ShapeMismatchError(f"A has shape {A.shape} but X has {X.shape[1]} features")
    if X.shape[0] < 2:
        raise InvalidInputError("MLKR needs at least 2 samples")
    y = as_float_vector(y, "y", X.shape[0])
    sigma = check_positive(sigma, "sigma")
    loss, grad, _ = objective_on(get_backend(backend, device))(A, X, y, sigma)
    if not np.isfinite(loss) or not np.isfinite(grad).all():
        raise NumericalError("MLKR loss or gradient is not finite")
    if return_sigma_grad:
        return loss, grad, float(-np.vdot(grad, A) / sigma)
    return loss, grad


def nadaraya_watson_predict(X_new: np.ndarray, X: np.ndarray, y: np.ndarray, A: np.ndarray,
                            sigma: float) -> np.ndarray:
    """Σ_j p(x, x_j) y_j for the rows x of X_new (all training points, eq. 4 of the paper)."""
    As = A / sigma
    Ln, _ = embed(X_new, As, right=False)
    _, R = embed(X, As)
    E = gemm(Ln, R, trans_b=True)
    E -= E.max(axis=1)[:, None]
    np.exp(E, out=E)
    E /= E.sum(axis=1)[:, None]
    return E @ y


class MLKR(MetricLearner):
    """Metric learning for kernel regression (Weinberger & Tesauro), a scikit-learn transformer.

    Same API as :class:`~molkrr.metric.MLKRR` without the α/A split: one L-BFGS-B run on the
    leave-one-out Nadaraya–Watson loss of the whole training set. Parameters: n_components, init
    ('identity', 'pca', 'random' or an array), sigma (our convention; metric-learn's equals
    sigma = 1/√2), learn_sigma (a gauge direction, as for MLKRR), max_iter, tol, random_state,
    verbose, callback, validation_every (with ``fit(..., validation_data=...)``: Nadaraya–Watson
    prediction from all training points). NW is shift-equivariant in y, so there is no centring.
    MLKR is the paper's baseline and keeps its Gaussian kernel. backend, device: where the objective
    is evaluated ('numpy' or 'torch'; 'cpu', 'cuda', 'cuda:N'; None: the process default).

    Fitted attributes: components_, sigma_, n_iter_, history_ (as MLKRR), seed_, n_features_in_.
    """

    def __init__(
        self,
        n_components=None,
        init="identity",
        sigma=1.0,
        learn_sigma=False,
        max_iter=100,
        tol=None,
        random_state=None,
        verbose=0,
        callback=None,
        validation_every=1,
        backend=None,
        device=None,
    ):
        self.n_components = n_components
        self.init = init
        self.sigma = sigma
        self.learn_sigma = learn_sigma
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.validation_every = validation_every
        self.backend = backend
        self.device = device

    def fit(self, X, y, *, validation_data=None):
        """Learn A from X (n, n_features) and y (n,); validation_data (X_val, y_val) is traced in ``history_``."""
        get_backend(self.backend, self.device)  # an unknown backend or a missing device fails here
        return self._fit(X, y, validation_data=validation_data)

    def _segment_length(self) -> int:
        return max(int(self.max_iter), 1)

    def _segment_objective(self, X, y, segment, seed):
        be = get_backend(self.backend, self.device)
        objective = objective_on(be)
        Xd, yd = be.asarray(X), be.asarray(y)  # the data goes to the device once

        def fn(A, sigma):
            return objective(A, Xd, yd, sigma, want_aux=True)

        def predictor(Xv, A, sigma, aux):
            return nadaraya_watson_predict(Xv, X, y, A, sigma)

        return fn, predictor
