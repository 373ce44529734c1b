"""The metric-learner mixin: a learned linear map x ↦ A x as a scikit-learn transformer.

``transform(X) = X Aᵀ``, ``vjp(G) = G A`` (the map's vector–Jacobian product, how forces pass back
through a learned metric), ``get_mahalanobis_matrix() = AᵀA``, initialisation of A, and ``_fit``:
validate, start or resume, run the segmented optimiser (:mod:`molkrr.metric.driver`), store the
fitted attributes. Subclasses give the objective of a segment.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import InvalidInputError, ShapeMismatchError
from ..schema import MAX_ABS_FEATURE, Custom, FloatArray, Int, Number, Schema, Sigma, fail
from ._util import as_float_matrix, check_int, check_positive, check_validation_data, typed_error
from .driver import SegmentedLBFGS


class MetricLearner(TransformerMixin, BaseEstimator):
    """Base class: a learned linear map x ↦ A x (A = ``components_``, shape (n_components, n_features)).

    Subclasses implement ``_segment_objective(X, y, segment, seed)`` → (fn(A, σ) → (loss, grad, aux),
    validation predictor) and ``_segment_length()``, and list in ``_checkpoint_keys`` the parameters a
    checkpoint must agree on.
    """

    _checkpoint_keys: tuple[str, ...] = ("n_components", "sigma", "learn_sigma")

    # --- scikit-learn plumbing -------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.one_d_labels = True
        return tags

    def _validate_fit_input(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        if y is None:
            raise InvalidInputError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        try:
            X, y = validate_data(self, X, y, y_numeric=True, ensure_min_samples=2, dtype=np.float64)
        except ValueError as exc:
            raise typed_error(exc) from exc
        return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def transform(self, X) -> np.ndarray:
        """X (n, n_features) ↦ X Aᵀ (n, n_components), in the units of X."""
        check_is_fitted(self, "components_")
        try:
            X = validate_data(self, X, reset=False, dtype=np.float64)
        except ValueError as exc:
            raise typed_error(exc) from exc
        return X @ self.components_.T

    def vjp(self, G: np.ndarray) -> np.ndarray:
        """Vector–Jacobian product of :meth:`transform`: G = ∂E/∂z (n, n_components) ↦ ∂E/∂x = G A (n, n_features)."""
        check_is_fitted(self, "components_")
        G = np.asarray(G, dtype=np.float64)
        if G.ndim != 2 or G.shape[1] != self.components_.shape[0]:
            raise ShapeMismatchError(f"G must have shape (n, {self.components_.shape[0]}), got {G.shape}")
        return G @ self.components_

    def output_support(self, input_support: int | None) -> int | None:
        """Leading output features that can depend on positions when only the first ``input_support``
        input features do: a learned A mixes every feature, so all of them (None)."""
        return None

    def get_mahalanobis_matrix(self) -> np.ndarray:
        """M = AᵀA (n_features, n_features): d(a, b)² = (a − b)ᵀ M (a − b)."""
        check_is_fitted(self, "components_")
        return self.components_.T @ self.components_

    # --- initialisation --------------------------------------------------------------------
    def _initial_components(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, d = X.shape
        c = d if self.n_components is None else check_int(self.n_components, "n_components", 1)
        init = self.init
        if isinstance(init, str):
            if init == "identity":
                if c > d:
                    raise InvalidInputError(f"init='identity' needs n_components ≤ n_features ({c} > {d})")
                return np.eye(c, d)
            if init == "pca":
                if c > min(n, d):
                    raise InvalidInputError(f"init='pca' needs n_components ≤ min(n_samples, n_features) = {min(n, d)}")
                from sklearn.decomposition import PCA

                return PCA(n_components=c, svd_solver="full").fit(X).components_.copy()
            if init == "random":
                # N(0, 1/d) entries: ‖A x‖ ≈ ‖x‖ on average, like the identity.
                return rng.standard_normal((c, d)) / np.sqrt(d)
            raise InvalidInputError(f"init must be 'identity', 'pca', 'random' or an array, got {init!r}")
        A0 = as_float_matrix(init, "init")
        if A0.shape[1] != d or (self.n_components is not None and A0.shape[0] != self.n_components):
            raise ShapeMismatchError(f"init has shape {A0.shape}, expected ({c}, {d}) (n_components, n_features)")
        return A0.copy()

    # --- fitting ---------------------------------------------------------------------------
    def _segment_length(self) -> int:
        raise NotImplementedError

    def _segment_objective(self, X, y, segment: int, seed: int):
        raise NotImplementedError

    def _check_common_params(self) -> None:
        if not (isinstance(self.sigma, str) and self.sigma == "auto"):  # "auto": resolved by the driver's start
            check_positive(self.sigma, "sigma")
        check_int(self.max_iter, "max_iter", 0)
        if self.tol is not None:
            check_positive(self.tol, "tol")
        if self.validation_every is not None:
            check_int(self.validation_every, "validation_every", 1)
        if self.callback is not None and not callable(self.callback):
            raise InvalidInputError("callback must be callable or None")

    def _fit(self, X, y, *, validation_data=None, checkpoint=None, checkpoint_every=None) -> "MetricLearner":
        """Validate, initialise or resume, run the segments, store the fitted attributes."""
        X, y = self._validate_fit_input(X, y)
        self._check_common_params()
        validation = check_validation_data(validation_data, X.shape[1])
        if checkpoint_every is not None:
            check_int(checkpoint_every, "checkpoint_every", 1)
        y_offset = float(y.mean()) if getattr(self, "center_y", False) else 0.0
        runner = SegmentedLBFGS(self, X, y - y_offset, validation=validation, y_offset=y_offset,
                                checkpoint=checkpoint, checkpoint_every=checkpoint_every, raw_y=y)
        state = runner.run(runner.start())
        self.components_, sigma = state.result()
        self.sigma_ = float(sigma)
        self.n_iter_ = int(state.n_iter)
        self.n_segments_ = int(state.segment)
        self.seed_ = int(state.seed)
        self.y_offset_ = float(y_offset)
        self.history_ = state.history
        if state.best_A is not None:  # early stopping: where the fitted A was taken
            self.best_iteration_ = int(state.best_iteration)
            self.best_val_mae_ = float(state.best_val_mae)
        return self

    @classmethod
    def model_file_schema(cls) -> Schema:
        """The fields a model file holds for a metric learner, and their checks (:mod:`molkrr.schema`)."""
        return _SCHEMA

    def _checkpoint_params(self) -> dict:
        """Parameters that must agree between a checkpoint and the estimator resuming it."""
        params = self.get_params()
        out = {k: params[k] for k in self._checkpoint_keys if k in params}
        init = params.get("init")
        out["init"] = init if isinstance(init, str) else "array"
        kernel = params.get("kernel")
        if kernel is not None and kernel != "gaussian":  # Gaussian checkpoints read as before kernels were options
            out["kernel"] = kernel if isinstance(kernel, str) else kernel.name
        return json.loads(json.dumps(out))


# --- model files ----------------------------------------------------------------------------
def _check_components(A, where, node) -> None:
    if A.shape[0] < 1 or A.shape[1] < 1:
        raise fail(where, f"must have at least one row and column, got shape {A.shape}")


def _check_n_features_in(n_in, where, node) -> None:
    if n_in != node.dims["d"]:
        raise fail(where, f"is {n_in} but components_ has {node.dims['d']} columns")


def _check_history(history, where, node) -> None:
    if not isinstance(history, dict) or not all(isinstance(h, list) for h in history.values()):
        raise fail(where, "must map names to lists")
    for key, values in history.items():
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
            raise fail(f"{where}.{key}", "must hold numbers only")


_SCHEMA = Schema(
    params_check=lambda est: est._check_common_params(),
    fitted={
        "components_": FloatArray(2, dims=("c", "d"), max_abs=MAX_ABS_FEATURE, then=_check_components),
        "n_features_in_": Int(1, then=_check_n_features_in),
        "sigma_": Sigma(),
        "n_iter_": Int(0),
        "n_segments_": Int(0, required=False),
        "seed_": Int(0, required=False),
        "y_offset_": Number(required=False),
        "history_": Custom(_check_history, required=False),
        "best_iteration_": Int(0, required=False),  # early stopping: where the fitted A was taken
        "best_val_mae_": Number(lo=0.0, required=False),
    },
)


class IdentityMetric:
    """The metric of a model without metric learning: z = x, vjp(G) = G, padding passes through."""

    def transform(self, X: np.ndarray) -> np.ndarray:
        """X unchanged."""
        return X

    def vjp(self, G: np.ndarray) -> np.ndarray:
        """G unchanged."""
        return G

    def output_support(self, input_support: int | None) -> int | None:
        """The input's support: zero padded features stay zero and position-independent."""
        return input_support


class LinearMetric:
    """A fitted linear map given only by ``components_`` (any transformer with that attribute)."""

    def __init__(self, fitted: Any) -> None:
        self.fitted = fitted

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The fitted transformer's transform."""
        return self.fitted.transform(X)

    def vjp(self, G: np.ndarray) -> np.ndarray:
        """G A with A = components_."""
        return np.asarray(G) @ np.asarray(self.fitted.components_)

    def output_support(self, input_support: int | None) -> int | None:
        """All features (a linear map mixes them)."""
        return None


def as_metric(metric: Any) -> Any:
    """A link of the derivative chain for a fitted metric (or None): transform, vjp, output_support."""
    if metric is None:
        return IdentityMetric()
    if all(hasattr(metric, a) for a in ("transform", "vjp", "output_support")):
        return metric
    return LinearMetric(metric)
