"""The exact solver of :class:`molkrr.KernelRidge`: α = (K + λI)⁻¹ y by one Cholesky factorisation.

On the numpy backend the factorisation is :func:`molkrr.linalg.spd_factor` (blocked above a size threshold,
a jitter with a warning when K + λI is not numerically positive definite: ``lam_`` then reports the λ used)
and the factor is kept in memory for the predictive std (:mod:`molkrr.uncertainty`); other compute backends
solve with their own ``krr_fit`` (:mod:`molkrr.backends`). Memory: one n×n float64 matrix, which is why
``solver='auto'`` hands large n to FALKON (:mod:`molkrr.solvers.falkon`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .registry import SolverFit, register_solver

__all__ = ["fit_cholesky"]


def fit_cholesky(est: Any, kernel: Any, X: np.ndarray, y: np.ndarray, *, backend: Any, progress: bool = False) -> SolverFit:
    """The exact KRR solve for a KernelRidge-like ``est`` (reads ``lam``); y already centred."""
    from ..backends import is_numpy
    from ..linalg import spd_factor, spd_solve

    if not is_numpy(backend):  # compute backend (issue 13)
        alpha, lam = backend.krr_fit(kernel, X, y, float(est.lam))
        return SolverFit(X_fit=X, alpha=alpha, lam=lam)
    L, lam = spd_factor(lambda: kernel(X), float(est.lam))
    return SolverFit(X_fit=X, alpha=spd_solve(L, y), lam=lam, factor=L)


register_solver("cholesky", fit_cholesky, description="exact: one Cholesky of K + λI", exact=True)
