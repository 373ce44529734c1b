"""Large-n solvers for kernel ridge regression: FALKON (Nyström + preconditioned CG), and its Dask scale-out
(:mod:`molkrr.solvers.dask`, needs the ``dask`` extra)."""

from .falkon import FalkonResult, choose_centers, default_n_centers, falkon_solve

__all__ = ["FalkonResult", "choose_centers", "default_n_centers", "falkon_solve"]
