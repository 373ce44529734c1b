"""Kernel ridge regression on feature matrices (σ/λ selection: :mod:`molkrr.selection`, re-exported here).

The model is ŷ(x) = ȳ + Σ_m α_m k(x, x_m) with α = (K + λI)⁻¹ (y − ȳ), found by a solver of the
registry (:mod:`molkrr.solvers.registry`; the exact one is a Cholesky, :mod:`molkrr.solvers.cholesky`);
ȳ is the training mean when ``center=True`` and 0 otherwise. Kernels and the σ convention are those of
:mod:`molkrr.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import as_molkrr_error
from .backends import get_backend
from .errors import InvalidInputError, ShapeMismatchError
from .kernels import Kernel, KernelField, make_kernel
from .schema import (MAX_ABS_COEFFICIENT, MAX_ABS_FEATURE, Bool, Choice, Custom, FloatArray, Int, Number, Schema, Sigma,
                     Text, fail, float_array, number)



class KernelRidge(RegressorMixin, BaseEstimator):
    """Kernel ridge regression with a Cholesky solve.

    Parameters
    ----------
    kernel : str or Kernel
        A registered name ('gaussian', 'laplacian', 'matern32', 'matern52', 'linear') or a kernel
        object such as ``molkrr.kernels.Matern(nu=2.5, sigma=3.0)``.
    sigma : float or None
        Kernel width (see :mod:`molkrr.kernels` for the convention). None: the kernel object's own σ
        (1.0 for a name); a number replaces the object's σ.
    lam : float
        Ridge added to the kernel diagonal (λ ≥ 0).
    center : bool
        Subtract the training mean of y before solving (and add it back in ``predict``).
    solver : {'auto', 'cholesky', 'falkon'} or another registered name
        A name of the solver registry (:func:`molkrr.solvers.registry.solver_names`).
        'cholesky': the exact n×n solve (:mod:`molkrr.solvers.cholesky`). 'falkon': Nyström KRR over
        ``n_centers`` random training rows by preconditioned CG (:mod:`molkrr.solvers.falkon`), never n×n; the
        fitted model has the same form (``X_fit_`` holds the centres), so predictions, forces and model files
        work unchanged. 'auto': 'cholesky' while an n×n float64 matrix fits comfortably, else 'falkon'
        (:func:`molkrr.solvers.registry.resolve_solver`).
    n_centers : int, optional
        Nyström centres m for 'falkon' (default :func:`molkrr.solvers.falkon.default_n_centers`).
    cg_tol, cg_max_iter : CG stopping rule of 'falkon' (relative residual of the preconditioned system).
    random_state : int
        Seed of the centre draw.
    backend, device : str or None
        Where fit, predict and predict_with_gradient compute: backend 'numpy' or 'torch', device
        'cpu', 'cuda' or 'cuda:N'; None: the process default (:func:`molkrr.set_backend`, numpy
        unless set). See :mod:`molkrr.backends`. Results are numpy arrays either way.

    Fitted attributes: ``X_fit_`` (n, d) (the centres (m, d) for 'falkon'), ``alpha_`` (n,) or (n, t),
    ``y_mean_``, ``lam_`` (λ actually used, larger than ``lam`` if a jitter was needed), ``n_features_in_``,
    ``solver_`` (the solver used) and, for 'falkon', ``n_iter_``.
    """

    def __init__(
        self,
        kernel: "str | Kernel" = "gaussian",
        sigma: float | None = None,
        lam: float = 1e-8,
        center: bool = True,
        solver: str = "auto",
        n_centers: int | None = None,
        cg_tol: float = 1e-6,
        cg_max_iter: int = 500,
        random_state: int = 0,
        backend: str | None = None,
        device: str | None = None,
    ) -> None:
        self.kernel = kernel
        self.sigma = sigma
        self.lam = lam
        self.center = center
        self.solver = solver
        self.n_centers = n_centers
        self.cg_tol = cg_tol
        self.cg_max_iter = cg_max_iter
        self.random_state = random_state
        self.backend = backend
        self.device = device

    @property
    def kernel_(self) -> Kernel:
        """The kernel object in use (σ resolved); a fitted model's kernel."""
        return make_kernel(self.kernel, self.sigma)

    def _kernel(self) -> Kernel:  # kept for callers of the first release
        return self.kernel_

    def fit(self, X: Any, y: Any, *, progress: bool = False) -> "KernelRidge":
        """Fit on X (n, d) and y (n,) or (n, t). progress: a CG progress bar (solver 'falkon')."""
        # C order throughout: BLAS results then do not depend on the caller's layout (a DataFrame is
        # F-ordered), so a reloaded model predicts bitwise-equal values
        try:  # molkrr._validation: scikit-learn's input errors as MolkrrError subclasses
            X, y = validate_data(self, X, y, dtype=np.float64, order="C", multi_output=True, y_numeric=True)
        except ValueError as exc:
            raise as_molkrr_error(exc) from None
        if not (np.isfinite(self.lam) and self.lam >= 0):
            raise InvalidInputError(f"lam must be a finite number ≥ 0, got {self.lam}")
        kernel = self.kernel_
        from .krr_posterior import forget_factor  # predictive std: the kept Cholesky factor

        forget_factor(self)
        self.y_mean_ = np.mean(y, axis=0) if self.center else np.zeros(y.shape[1:])
        # ---- the solver, by name (molkrr.solvers.registry: 'cholesky', 'falkon', and any registered module)
        from .solvers.registry import resolve_solver

        spec = resolve_solver(self.solver, X.shape[0])
        for name in spec.params:
            if not hasattr(self, name):
                raise InvalidInputError(
                    f"solver {spec.name!r} reads the parameter {name!r}, which {type(self).__name__} does not have"
                )
        be = get_backend(self.backend, self.device)
        result = spec.fit(self, kernel, X, y - self.y_mean_, backend=be, progress=progress)
        return self.set_fitted_solution(result, solver=spec.name, y_mean=self.y_mean_)

    def set_fitted_solution(self, result: Any, *, solver: str, y_mean: Any) -> "KernelRidge":
        """Become the model ŷ(x) = y_mean + Σ_m α_m k(x, x_m) that a solver found: the one place a fit's
        attributes are set, used by :meth:`fit` and by solvers that run outside it (:mod:`molkrr.solvers.dask`).

        result : a :class:`molkrr.solvers.registry.SolverFit` (rows X_fit (m, d), α (m,) or (m, t), the λ used,
            further attributes, optionally the Cholesky factor); solver : its name (``solver_``);
            y_mean : the mean added back in predictions (0 for ``center=False``). Returns self.
        """
        from .krr_posterior import forget_factor, remember_factor  # predictive std: the kept Cholesky factor

        forget_factor(self)
        shape, alpha_shape = np.shape(result.X_fit), np.shape(result.alpha)
        if len(shape) != 2 or alpha_shape[:1] != shape[:1]:
            raise ShapeMismatchError(f"a solution needs X_fit (m, d) and alpha (m,) or (m, t), got {shape} and {alpha_shape}")
        self.n_features_in_ = int(shape[1])
        self.solver_ = solver
        self.y_mean_ = y_mean
        self.X_fit_, self.alpha_, self.lam_ = result.X_fit, result.alpha, result.lam
        for name, value in result.attributes.items():
            setattr(self, name, value)
        self._train_sq_norms()
        if result.factor is not None:
            remember_factor(self, result.factor)  # kept for predict(return_std=True) (krr_posterior), never saved
        return self

    def predict(self, X: Any, return_std: bool = False) -> Any:
        """Predictions for X (n_q, d): shape (n_q,) or (n_q, t).

        return_std : also return the posterior standard deviation (same shape), as ``(predictions, std)``:
            the GP view of KRR with the maximum-likelihood scale, see :mod:`molkrr.uncertainty` (exact
            solver only; else :class:`~molkrr.errors.UncertaintyNotSupportedError`).
        """
        if return_std:  # molkrr.krr_posterior (the feature level of molkrr.uncertainty)
            from .krr_posterior import krr_std

            pred = self.predict(X)
            return pred, krr_std(self, validate_data(self, X, dtype=np.float64, order="C", reset=False))
        check_is_fitted(self)
        try:  # molkrr._validation: scikit-learn's input errors as MolkrrError subclasses
            X = validate_data(self, X, dtype=np.float64, order="C", reset=False)
        except ValueError as exc:
            raise as_molkrr_error(exc) from None
        be = get_backend(self.backend, self.device)
        return be.krr_predict(self.kernel_, X, self._backend_rows(be), self.alpha_) + self.y_mean_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # y of shape (n, t) is fitted natively
        return tags

    def predict_gradient(self, X: Any) -> np.ndarray:
        """∂ŷ/∂x for every row of X (n_q, d) → (n_q, d). Single-output models only."""
        return self.predict_with_gradient(X)[1]

    def predict_with_gradient(self, X: Any, *, n_active: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ŷ (n_q,), ∂ŷ/∂x (n_q, d)) from one kernel evaluation per block of query rows.

        n_active : the gradient columns the caller needs are the first n_active (the others may be
            returned as 0). Used only where X[:, n_active:] = 0 (checked, not trusted): then only
            the first n_active columns of the training matrix are read (padded Coulomb matrices);
            see :meth:`molkrr.kernels.Kernel.value_and_gradient`.
        """
        check_is_fitted(self)
        X = np.ascontiguousarray(np.atleast_2d(np.asarray(X, dtype=np.float64)))
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ShapeMismatchError(f"X must have shape (n, {self.n_features_in_}), got {X.shape}")
        if not np.isfinite(X).all():
            raise InvalidInputError("X contains NaN or infinity")
        if self.alpha_.ndim != 1:
            raise ShapeMismatchError("gradients need a single-output model (y of shape (n,))")
        if n_active is not None and np.any(X[:, n_active:]):
            n_active = None  # the promise does not hold: use every column
        be = get_backend(self.backend, self.device)
        values, grads = be.krr_value_and_gradient(self.kernel_, X, self._backend_rows(be), self.alpha_, n_active)
        return values + self.y_mean_, grads

    @classmethod
    def model_file_schema(cls) -> Schema:
        """The fields a model file holds for a KernelRidge, and their checks (:mod:`molkrr.schema`)."""
        return _SCHEMA

    def _derived(self, key: str, build: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """build(X_fit_), computed once per fitted X_fit_ (derived state, not saved in model files)."""
        cached = self.__dict__.get(key)
        if cached is None or cached[0] is not self.X_fit_:
            cached = (self.X_fit_, build(self.X_fit_))
            self.__dict__[key] = cached
        return cached[1]

    def _train_sq_norms(self) -> np.ndarray:
        """‖x_m‖² of the training rows (n,), as the numpy backend keeps them."""
        return self._backend_rows(get_backend("numpy")).sq_norms

    def _backend_rows(self, be: Any) -> Any:
        """The training rows as a compute backend keeps them (on its device), uploaded once per fit (issue 13)."""
        return self._derived(f"_rows_{be.name}_{be.device}_{be.dtype}", be.rows)


# ----------------------------------------------------------------------------- model files
class _RegisteredSolvers:
    """The solver names of :mod:`molkrr.solvers.registry`, read when a model file is checked (a solver module
    added later is accepted without touching this file)."""

    def __init__(self, include_auto: bool) -> None:
        self.include_auto = include_auto

    def __contains__(self, name: object) -> bool:
        return name in self.__iter__()

    def __iter__(self):
        from .solvers.registry import solver_names

        return iter(solver_names(include_auto=self.include_auto))


#: The solver's and the backend's parameters (molkrr.solvers.falkon, molkrr.backends) as model files check them.
SOLVER_PARAMS = {
    "solver": Choice(_RegisteredSolvers(include_auto=True)),
    "n_centers": Int(1, none_ok=True),
    "cg_tol": Number(lo=0.0, lo_open=True),
    "cg_max_iter": Int(1),
    "random_state": Int(0, none_ok=True),
    "backend": Text(64, none_ok=True),
    "device": Text(64, none_ok=True),
}


def _check_x_fit(X, where, node) -> None:
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise fail(where, f"needs at least one row and one column, got shape {X.shape}")


def _check_y_mean(y_mean, where, node) -> None:
    alpha = node.fitted["alpha_"]
    if alpha.ndim == 1:
        if isinstance(y_mean, np.ndarray):
            float_array(y_mean, where, 0, max_abs=MAX_ABS_COEFFICIENT)
        else:
            number(y_mean, where, max_abs=MAX_ABS_COEFFICIENT)
    else:
        float_array(y_mean, where, 1, shape=(alpha.shape[1],), max_abs=MAX_ABS_COEFFICIENT)
    if not node.params["center"] and np.any(np.asarray(y_mean) != 0):
        raise fail(where, "must be 0 for a model fitted with center=false")


def _check_lam_used(lam_used, where, node) -> None:
    lam = float(node.params["lam"])
    if float(lam_used) < lam:
        raise fail(where, f"λ used ({float(lam_used):g}) is below the requested lam ({lam:g})")


def _check_n_features_in(n_in, where, node) -> None:
    if n_in != node.dims["d"]:
        raise fail(where, f"is {n_in} but X_fit_ has {node.dims['d']} columns")


def _check_feature_names(names, where, node) -> None:
    d = node.dims["d"]
    if not isinstance(names, np.ndarray) or names.dtype.kind != "U" or names.shape != (d,):
        raise fail(where, f"must be {d} strings")


_SCHEMA = Schema(
    params={"kernel": KernelField(), "sigma": Sigma(none_ok=True), "lam": Number(lo=0.0), "center": Bool(),
            **SOLVER_PARAMS},
    fitted={
        "solver_": Choice(_RegisteredSolvers(include_auto=False), required=False),
        "n_iter_": Int(0, required=False),
        "X_fit_": FloatArray(2, dims=("n", "d"), max_abs=MAX_ABS_FEATURE, then=_check_x_fit),
        "alpha_": FloatArray((1, 2), dims=("n",), max_abs=MAX_ABS_COEFFICIENT),
        "y_mean_": Custom(_check_y_mean),
        "lam_": Number(lo=0.0, then=_check_lam_used),
        "n_features_in_": Int(1, then=_check_n_features_in),
        "feature_names_in_": Custom(_check_feature_names, required=False),
    },
)


# ----------------------------------------------------------------------------- selection
# σ/λ selection lives in molkrr.selection (one search for every fit path); its names stay importable from here.
from .selection import DEFAULT_LAMS, SelectionResult, default_sigmas, select_hyperparameters  # noqa: E402,F401
