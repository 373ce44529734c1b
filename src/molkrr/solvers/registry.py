"""The solver registry: how :class:`molkrr.KernelRidge` finds α, by name.

A solver module registers a fit function under a name::

    from .registry import SolverFit, register_solver

    def fit_dense(est, kernel, X, y, *, backend, progress=False):
        K = kernel(X)
        K[np.diag_indices_from(K)] += est.lam
        return SolverFit(X_fit=X, alpha=np.linalg.solve(K, y), lam=float(est.lam))

    register_solver("dense", fit_dense, description="numpy.linalg.solve of K + λI")

Everything that needs the list reads this registry: ``KernelRidge.fit`` (the fit itself, and what
``solver='auto'`` resolves to), the ``--solver`` choices of ``molkrr train``, the model-file checks of
``solver`` and ``solver_`` (:mod:`molkrr.persistence`) and the predictive std (:mod:`molkrr.uncertainty`
refuses solvers that are not ``exact``). Adding a solver is therefore one new module in
``molkrr/solvers/`` (plus its tests): the registry imports every module of the package the first time it
is asked (:func:`discover`), except those in :data:`_NOT_KERNEL_RIDGE_SOLVERS`.

The fit function's contract
---------------------------
``fit(est, kernel, X, y, *, backend, progress=False) -> SolverFit`` with ``est`` the KernelRidge being
fitted (read its parameters: ``est.lam``, and those named in ``params``), ``kernel`` its kernel object (σ
resolved), X the validated (n, d) float64 training rows, y the targets (n,) or (n, t) with the training
mean already subtracted, ``backend`` the compute backend (:func:`molkrr.backends.get_backend`). The model
it returns must predict as ŷ(x) = ȳ + Σ_m α_m k(x, x_m) over the rows ``X_fit`` (all training rows, or
centres), so predictions, forces and model files work unchanged.

``solver='auto'`` resolves to the first solver (in name order) whose ``auto_when(n)`` is true for n
training rows, else to :data:`DEFAULT_SOLVER` (the exact solve).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError

__all__ = [
    "AUTO",
    "DEFAULT_SOLVER",
    "SolverFit",
    "SolverSpec",
    "discover",
    "get_solver",
    "register_solver",
    "resolve_solver",
    "solver_names",
]

#: The name that lets the registry choose (:func:`resolve_solver`).
AUTO = "auto"
#: What ``'auto'`` gives when no solver's ``auto_when`` claims the problem.
DEFAULT_SOLVER = "cholesky"
#: Modules of the package that are not KernelRidge solvers: the registry itself, the Dask scale-out of FALKON
#: (imports the optional ``distributed`` package; it fits through :func:`molkrr.solvers.dask.fit_molecular_krr_dask`)
#: and the sparse local solver (a solver of :class:`molkrr.derivative_krr.DerivativeKRR`, chosen by ``n_sparse``).
_NOT_KERNEL_RIDGE_SOLVERS = frozenset({"registry", "dask", "sparse_local"})


@dataclass
class SolverFit:
    """What a solver's fit function returns.

    Attributes
    ----------
    X_fit : ndarray (m, d)
        The rows the model expands over: the training rows, or centres.
    alpha : ndarray (m,) or (m, t)
    lam : float
        The ridge actually used (``lam_``; larger than ``est.lam`` when a jitter was needed).
    attributes : dict
        Further fitted attributes to set on the estimator (e.g. ``{"n_iter_": 37}``).
    factor : ndarray or None
        The lower Cholesky factor of K(X_fit) + λ_I, kept in memory for ``predict(return_std=True)``
        (:func:`molkrr.krr_posterior.remember_factor`); None when the solver has none.
    """

    X_fit: Any
    alpha: Any
    lam: float
    attributes: dict = field(default_factory=dict)
    factor: Any = None


@dataclass(frozen=True)
class SolverSpec:
    """One registered solver.

    Attributes
    ----------
    name : str
        The value of ``KernelRidge(solver=...)`` and ``molkrr train --solver``.
    fit : callable
        The fit function (module docstring).
    params : tuple of str
        The estimator parameters the fit function reads besides ``lam`` (e.g. ``n_centers``); they must be
        constructor parameters of :class:`molkrr.KernelRidge` (checked when the solver is used).
    description : str
        One line for docs and messages.
    exact : bool
        α solves (K(X, X) + λI) α = y over all training rows: the GP posterior of :mod:`molkrr.uncertainty`
        (predictive std) applies.
    auto_when : callable or None
        ``auto_when(n)`` true: ``solver='auto'`` takes this solver for n training rows.
    """

    name: str
    fit: Callable[..., SolverFit]
    params: tuple[str, ...] = ()
    description: str = ""
    exact: bool = False
    auto_when: Callable[[int], bool] | None = None


_SOLVERS: dict[str, SolverSpec] = {}
_lock = threading.RLock()
_discovered = False


def register_solver(
    name: str,
    fit: Callable[..., SolverFit],
    *,
    params: tuple[str, ...] | list[str] = (),
    description: str = "",
    exact: bool = False,
    auto_when: Callable[[int], bool] | None = None,
) -> SolverSpec:
    """Register ``fit`` as the solver ``name`` (see :class:`SolverSpec` for the arguments); returns the spec.

    Raises
    ------
    ValueError
        ``name`` is not a lower-case word (letters, digits, '-', '_'), is ``'auto'``, or is already registered
        to another fit function.
    """
    if not isinstance(name, str) or not name or name != name.lower() or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"register_solver: the name must be a lower-case word, got {name!r}")
    if name == AUTO:
        raise ValueError(f"register_solver: {AUTO!r} is reserved (it lets the registry choose)")
    if not callable(fit):
        raise ValueError(f"register_solver({name!r}): fit must be callable, got {fit!r}")
    spec = SolverSpec(name, fit, tuple(params), description, bool(exact), auto_when)
    with _lock:
        old = _SOLVERS.get(name)
        if old is not None and not _same(old, spec):
            raise ValueError(f"solver name {name!r} is already registered to {old.fit.__module__}.{old.fit.__qualname__}")
        _SOLVERS[name] = spec
    return spec


def _same(a: SolverSpec, b: SolverSpec) -> bool:
    # a module imported twice (e.g. reloaded) registers an equal function again
    return a.fit is b.fit or (a.fit.__module__, a.fit.__qualname__) == (b.fit.__module__, b.fit.__qualname__)


def discover() -> None:
    """Import every solver module of :mod:`molkrr.solvers` once (they register themselves).

    Modules whose optional dependency is missing (``ModuleNotFoundError`` for a package other than molkrr)
    are left out; any other import error is raised.
    """
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        package = importlib.import_module(__package__)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith("_") or info.name in _NOT_KERNEL_RIDGE_SOLVERS:
                continue
            try:
                importlib.import_module(f"{__package__}.{info.name}")
            except ModuleNotFoundError as exc:
                if exc.name is None or exc.name.split(".")[0] == "molkrr":
                    raise
        _discovered = True


def solver_names(include_auto: bool = False) -> tuple[str, ...]:
    """The registered solvers, sorted; with ``include_auto``, ``'auto'`` first (the values
    ``KernelRidge(solver=...)`` accepts)."""
    discover()
    names = tuple(sorted(_SOLVERS))
    return (AUTO, *names) if include_auto else names


def get_solver(name: str) -> SolverSpec:
    """The :class:`SolverSpec` registered as ``name``; :class:`~molkrr.errors.InvalidInputError` listing the
    accepted values otherwise (``'auto'`` is resolved by :func:`resolve_solver`, not here)."""
    discover()
    try:
        return _SOLVERS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown solver {name!r}; choose one of {list(solver_names(include_auto=True))}") from None


def resolve_solver(name: str, n: int) -> SolverSpec:
    """The solver ``KernelRidge(solver=name)`` uses for n training rows: ``name`` itself, or for ``'auto'`` the
    first solver (by name) whose ``auto_when(n)`` holds, else :data:`DEFAULT_SOLVER`."""
    if name != AUTO:
        return get_solver(name)
    discover()
    for key in sorted(_SOLVERS):
        spec = _SOLVERS[key]
        if spec.auto_when is not None and spec.auto_when(n):
            return spec
    return get_solver(DEFAULT_SOLVER)
