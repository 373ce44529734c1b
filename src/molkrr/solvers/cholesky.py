"""The exact solver of :class:`molkrr.KernelRidge`: α = (K + λI)⁻¹ y by one Cholesky factorisation.

The compute backend's ``krr_fit`` (:mod:`molkrr.backends`) factorises with the one jitter policy,
:func:`molkrr.linalg.spd_factor` (blocked above a size threshold on numpy, a jitter with a warning when
K + λI is not numerically positive definite: ``lam_`` then reports the λ used); the numpy backend hands
back the factor, kept in memory for the predictive std (:mod:`molkrr.uncertainty`). Memory: one n×n float64 matrix, which is why
``solver='auto'`` hands large n to FALKON (:mod:`molkrr.solvers.falkon`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .registry import SolverFit, register_solver

__all__ = ["fit_cholesky"]


def fit_cholesky(est: Any, kernel: Any, X: np.ndarray, y: np.ndarray, *, backend: Any, progress: bool = False) -> SolverFit:
    """The exact KRR solve for a KernelRidge-like ``est`` (reads ``lam``); y already centred."""
    alpha, lam, factor = backend.krr_fit(kernel, X, y, float(est.lam), return_factor=True)
    return SolverFit(X_fit=X, alpha=alpha, lam=lam, factor=factor)


register_solver("cholesky", fit_cholesky, description="exact: one Cholesky of K + λI", exact=True)
