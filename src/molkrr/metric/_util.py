"""Input checks of the metric learners: the package-wide helpers of :mod:`molkrr._validation`, plus
the check of a (X_val, y_val) pair."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_float_matrix, as_float_vector, as_molkrr_error, check_int, check_positive  # noqa: F401
from ..errors import InvalidInputError, ShapeMismatchError


typed_error = as_molkrr_error


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
