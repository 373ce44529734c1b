"""Exact low-dimensional coordinates for the environments of one element.

The environments of one element in a training set (their features x_f − μ and, when forces are
trained, the columns of their Jacobians J_f) span a subspace of ℝᵈ far smaller than d: FCHL19's
720 features for five elements give about 190 numerically independent directions for the hydrogens
of an ethanol trajectory, 130 for its carbons. Every quantity of a stationary kernel with derivative
observations is an inner product inside that span (‖x_e − x_f‖², J_eᵀ(x_e − x_f), J_eᵀJ_f, w_f·δ with
w_f = J_f β), so an orthonormal basis B (d, r) gives them exactly from coordinates p = Bᵀ(x − μ) and
C = BᵀJ, at r/d of the cost. Directions whose singular value is below :data:`RTOL` × the largest are
dropped: what they carry is round-off of the features themselves.

A query environment outside the span keeps its residual ρ = (x − μ) − Bp: distances to the training
environments are ‖p − p_f‖² + ‖ρ‖² and the gradient gains a ρ term, so predictions stay exact for
any geometry (:class:`ElementBasis` methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

#: Relative singular value below which a direction of the span is dropped (round-off of the features).
RTOL = 1e-12
#: Rows stacked before each QR update of the running triangular factor.
_QR_ROWS = 16_384


@dataclass
class ElementBasis:
    """Orthonormal coordinates of one element's environments.

    mean : (d,) the mean training feature vector μ; active : (a,) the features that are not exactly
    zero in every training row and Jacobian column (the others never enter B); basis : (a, r) the
    orthonormal columns of B restricted to those features (B is zero elsewhere).
    """

    mean: np.ndarray
    active: np.ndarray
    basis: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @property
    def full_basis(self) -> np.ndarray:
        """B as a (d, r) array."""
        B = np.zeros((self.mean.shape[0], self.rank))
        B[self.active] = self.basis
        return B

    def coordinates(self, X: np.ndarray) -> np.ndarray:
        """p = Bᵀ(x − μ) for the rows of X (n, d) → (n, r)."""
        return (X[:, self.active] - self.mean[self.active]) @ self.basis

    def residuals(self, X: np.ndarray, P: np.ndarray) -> np.ndarray:
        """ρ = (x − μ) − B p (n, d): the part of each row outside the span (zero for training rows)."""
        R = X - self.mean
        R[:, self.active] -= P @ self.basis.T
        return R

    def lift(self, V: np.ndarray) -> np.ndarray:
        """B v for the rows of V (n, r) → (n, d)."""
        out = np.zeros((V.shape[0], self.mean.shape[0]))
        out[:, self.active] = V @ self.basis.T
        return out

    def project_columns(self, J: np.ndarray) -> np.ndarray:
        """C = BᵀJ for Jacobians J (..., d, q) → (..., r, q)."""
        return np.einsum("ar,...aq->...rq", self.basis, J[..., self.active, :], optimize=True)

    def project_rows(self, W: np.ndarray) -> np.ndarray:
        """ω = Bᵀw for the rows of W (n, d) in the span → (n, r)."""
        return W[:, self.active] @ self.basis


def fit_element_basis(X: np.ndarray, blocks: Callable[[], Iterable[np.ndarray]] | None = None,
                      rtol: float = RTOL) -> ElementBasis:
    """The basis of span{x − μ} ∪ span{rows of each block} for one element's environments.

    X : (n, d) the element's training features; blocks : None or a function returning (afresh, it is
    called twice) an iterable of further (k, d) arrays whose rows must lie in the span (Jacobian columns
    as rows, gradient weights). The span is found from the triangular factor of all rows stacked (QR in
    bounded slices, never the whole stack), whose SVD gives the directions.
    """
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    mean = X.mean(axis=0) if X.shape[0] else np.zeros(d)
    Xc = X - mean

    def parts():
        yield Xc
        if blocks is not None:
            yield from blocks()

    active = np.zeros(d, dtype=bool)  # features that are exactly zero everywhere stay out of the QR
    for part in parts():
        if part.size:
            active |= np.any(part != 0.0, axis=0)
    cols = np.flatnonzero(active)
    if cols.size == 0:
        return ElementBasis(mean, cols, np.zeros((0, 0)))
    R = np.zeros((0, cols.size))
    pending: list[np.ndarray] = []
    n_pending = 0

    def flush(R):
        stack = np.concatenate([R, *pending]) if pending else R
        return np.linalg.qr(stack, mode="r")  # (min(rows, |cols|), |cols|)

    for part in parts():
        for s in range(0, part.shape[0], _QR_ROWS):
            pending.append(part[s : s + _QR_ROWS][:, cols])
            n_pending += pending[-1].shape[0]
            if n_pending >= _QR_ROWS:
                R = flush(R)
                pending, n_pending = [], 0
    if pending:
        R = flush(R)
    _, s, Vt = np.linalg.svd(R, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return ElementBasis(mean, cols, np.zeros((cols.size, 0)))
    r = int(np.sum(s > rtol * s[0]))
    return ElementBasis(mean, cols, np.ascontiguousarray(Vt[:r].T))


__all__ = ["RTOL", "ElementBasis", "fit_element_basis"]
