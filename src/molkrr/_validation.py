"""Parameter and array checks shared by every molkrr estimator.

Each helper returns the value in canonical form (a Python float or int, a float64 array) or raises
a typed error of :mod:`molkrr.errors` naming the parameter. Estimators call these rather than
writing their own ``if ...: raise ValueError`` so that the messages and the error classes agree
everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import InvalidInputError, MolkrrError, ShapeMismatchError

__all__ = [
    "MAX_ABS_TARGET",
    "as_float_matrix",
    "as_float_vector",
    "as_molkrr_error",
    "check_bool",
    "check_choice",
    "check_finite",
    "check_int",
    "check_model_params",
    "check_positive",
    "check_targets",
]

#: Largest |y| accepted as a training target. Kernel ridge regression forms y − ȳ, α ≈ (K + λI)⁻¹ y
#: (α can exceed y by 1/λ, up to 1e10 here) and sums of |α| k; targets above 1e100 would overflow those
#: sums to inf or NaN and give a model that predicts NaN, so they are refused when training.
MAX_ABS_TARGET = 1e100


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


def check_finite(value: Any, name: str) -> float:
    """A finite real number (bools and strings rejected) as a float, else :class:`InvalidInputError`."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        raise InvalidInputError(f"{name} must be finite, got an integer too large for a float") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a number, got {value!r:.60}") from exc
    if not np.isfinite(v):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")
    return v


def check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    """A finite float > 0 (or ≥ 0), else :class:`InvalidInputError`."""
    try:
        v = check_finite(value, name)
    except InvalidInputError:
        v = None
    if v is None or v < 0 or (v == 0 and not allow_zero):
        raise InvalidInputError(f"{name} must be {'≥' if allow_zero else '>'} 0 and finite, got {value!r}")
    return v


def check_int(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum] (bools rejected), else :class:`InvalidInputError`."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f"≥ {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise InvalidInputError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """True or False (numpy bools accepted), else :class:`InvalidInputError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else :class:`InvalidInputError` listing them."""
    choices = tuple(choices)
    if not isinstance(value, (str, int, float, type(None))) or value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_targets(y: Any, name: str = "energies") -> np.ndarray:
    """Training targets as a finite float64 array with every |y| ≤ :data:`MAX_ABS_TARGET`.

    Raises InvalidInputError naming the first offending entry: a target that is NaN, infinite or
    so large that the regression would overflow gives a model that predicts NaN.
    """
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be numbers: {exc}") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise InvalidInputError(f"{name} contain NaN or infinity (entry {i}: {arr.reshape(-1)[i]})")
    big = np.abs(arr) > MAX_ABS_TARGET
    if big.any():
        i = int(np.flatnonzero(big.reshape(-1))[0])
        raise InvalidInputError(
            f"{name} entry {i} is {arr.reshape(-1)[i]:.3g}; training needs |value| ≤ {MAX_ABS_TARGET:g} "
            "(larger targets overflow the regression)"
        )
    return arr


def check_model_params(model: Any) -> None:
    """The constructor parameters of a :class:`~molkrr.MolecularKRR`, checked before any work in ``fit``."""
    from .kernels import kernel_names

    if isinstance(model.kernel, str):  # a kernel object checks its own parameters
        check_choice(model.kernel, "kernel", kernel_names())
    if model.sigma is not None:
        check_positive(model.sigma, "sigma")
    if model.lam is not None:
        check_positive(model.lam, "lam", allow_zero=True)
    check_bool(model.prefit_metric, "prefit_metric")
    if getattr(model, "n_sparse", None) is not None:
        check_int(model.n_sparse, "n_sparse", minimum=1)
    check_bool(model.center, "center")
    if model.energy_unit is not None and (not isinstance(model.energy_unit, str) or len(model.energy_unit) > 256):
        raise InvalidInputError(f"energy_unit must be a string of at most 256 characters or None, got {model.energy_unit!r:.60}")


def as_molkrr_error(exc: ValueError) -> MolkrrError:
    """A scikit-learn input-validation ValueError as the matching molkrr error (message kept)."""
    if isinstance(exc, MolkrrError):
        return exc
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip() and not ln.strip().startswith("array=")]
    if not lines:
        lines = [type(exc).__name__]
    # one line: scikit-learn's advice on imputing missing values is dropped, its advice on reshaping kept
    msg = lines[0] if "missing values" in " ".join(lines[1:]) else " ".join(lines)
    shape_words = ("features", "inconsistent numbers", "Expected 2D", "dimension", "shape", "with dim ")
    if "NaN" not in msg and "infinity" not in msg and any(w in msg for w in shape_words):
        return ShapeMismatchError(msg)
    return InvalidInputError(msg)
