"""Solvers of kernel ridge regression, by name (:mod:`molkrr.solvers.registry`): the exact Cholesky
(:mod:`molkrr.solvers.cholesky`), FALKON for large n (Nyström + preconditioned CG, :mod:`molkrr.solvers.falkon`)
and its Dask scale-out (:mod:`molkrr.solvers.dask`, needs the ``dask`` extra); the sparse local solver of
:class:`molkrr.derivative_krr.DerivativeKRR` (:mod:`molkrr.solvers.sparse_local`)."""

from .falkon import FalkonResult, choose_centers, default_n_centers, falkon_solve
from .registry import SolverFit, get_solver, register_solver, solver_names

__all__ = [
    "FalkonResult",
    "SolverFit",
    "choose_centers",
    "default_n_centers",
    "falkon_solve",
    "get_solver",
    "register_solver",
    "solver_names",
]
