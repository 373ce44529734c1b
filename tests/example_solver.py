"""A complete KernelRidge solver in one module, as a new one would be written (used by test_solver_registry.py).

α = (K + λI)⁻¹ y by ``scipy.linalg.solve`` with ``assume_a="pos"`` (LAPACK's dposv): the exact solution, by a
route other than molkrr's Cholesky. The registry test copies this file into the ``molkrr.solvers`` package and
checks that nothing else needs an edit: the name appears in the registry, ``KernelRidge(solver=...)`` and
``MolecularKRR(solver=...)`` fit with it, model files keep it, and ``molkrr train --solver`` offers it. It is
not imported by the package itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg as sla

from molkrr.solvers.registry import SolverFit, register_solver


def fit_dense(est: Any, kernel: Any, X: np.ndarray, y: np.ndarray, *, backend: Any, progress: bool = False) -> SolverFit:
    """α for a KernelRidge-like ``est`` (reads ``lam``); y already centred. numpy backend only."""
    K = kernel(X)
    K[np.diag_indices_from(K)] += float(est.lam)
    return SolverFit(X_fit=X, alpha=sla.solve(K, y, assume_a="pos"), lam=float(est.lam))


register_solver("dense-solve", fit_dense, description="scipy.linalg.solve of K + λI (a worked example)", exact=True)
