"""Input checks of the metric learners: typed errors from :mod:`molkrr.errors`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError, MolkrrError, ShapeMismatchError


def as_float_matrix(a: Any, name: str) -> np.ndarray:
    """``a`` as a finite float64 2-D array, or a typed error."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a numeric array: {exc}") from exc
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name} must be 2-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinity")
    return arr


def as_float_vector(a: Any, name: str, n: int) -> np.ndarray:
    """``a`` as a finite float64 vector of length n, or a typed error."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a numeric array: {exc}") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeMismatchError(f"{name} must have shape ({n},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinity")
    return arr


def check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    """A finite float > 0 (or ≥ 0), else :class:`InvalidInputError`."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from exc
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InvalidInputError(f"{name} must be {'≥' if allow_zero else '>'} 0 and finite, got {value!r}")
    return v


def check_int(value: Any, name: str, minimum: int) -> int:
    """An integer ≥ minimum (bools rejected), else :class:`InvalidInputError`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def typed_error(exc: ValueError) -> MolkrrError:
    """Map a scikit-learn validation ValueError to the molkrr hierarchy (message kept)."""
    if isinstance(exc, MolkrrError):
        return exc
    msg = str(exc)
    shape_words = ("features", "inconsistent numbers", "Expected 2D", "dimension", "shape")
    if "NaN" not in msg and "infinity" not in msg and any(w in msg for w in shape_words):
        return ShapeMismatchError(msg)
    return InvalidInputError(msg)


def check_validation_data(validation_data: Any, n_features: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(X_val, y_val) checked against the training features, or None."""
    if validation_data is None:
        return None
    try:
        Xv, yv = validation_data
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("validation_data must be a pair (X_val, y_val)") from exc
    Xv = as_float_matrix(Xv, "X_val")
    if Xv.shape[1] != n_features:
        raise ShapeMismatchError(f"X_val has {Xv.shape[1]} features, training data has {n_features}")
    return Xv, as_float_vector(yv, "y_val", Xv.shape[0])
