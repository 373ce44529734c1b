"""Model-file schemas: the fields a persisted class saves, and how a file's copy of them is checked.

Every class a model file may hold declares its schema next to its code, as a classmethod
``model_file_schema()`` returning a :class:`Schema`: its parameters and fitted attributes, each with a
field spec (dtype, number of dimensions, shape relations through named dimensions, finiteness, bounds,
allowed values), the checks that relate several fields, and the version of its saved fields.
:mod:`molkrr.persistence` is the container (archive, header, allow-list) and walks these declarations
node by node (:meth:`Schema.check`); it knows no class itself.

A node is read in this order, and the first failure is raised as one
:class:`~molkrr.errors.ModelFileError` naming the field (``model.fitted.krr_.fitted.alpha_: ...``):

1. each declared parameter, in declaration order (parameters a class does not declare are passed to
   its constructor as decoded, as scikit-learn's ``get_params`` gave them);
2. ``params_check``: the class's own parameter check, run on a throw-away instance;
3. if the node is fitted (has any fitted attribute): each declared fitted attribute, in declaration
   order. A field's ``then`` hook runs right after its own check and is where fields are related to
   each other: it gets the :class:`Node`, with every parameter and the fitted attributes checked so
   far (and may read others through :meth:`Node.f`, which marks them as read);
4. fitted attributes neither declared nor read by a hook are refused, unless ``extra`` accepts them.

Nested estimators (a model's representation, metric, KRR) are nodes of their own, read and checked
before the node that holds them; :class:`Nested` checks their kind, the holder's hooks their agreement.

A class without a schema (e.g. a representation written outside molkrr) gets :data:`GENERIC`: its
fitted attributes are accepted as decoded (every float array finite, no pickle).

This module imports only numpy and :mod:`molkrr.errors`, so any module may declare a schema.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import ModelFileError, MolkrrError

#: Largest number of atoms (size of a padded representation, a bag) a model may declare.
MAX_MODEL_ATOMS = 100_000
#: Largest |value| accepted in a feature matrix (``X_fit_``, ``components_``): squared distances of
#: such rows stay finite, so predictions cannot turn into inf − inf = NaN.
MAX_ABS_FEATURE = 1e100
#: Largest |α| accepted (α ≈ y/λ: targets up to 1e100 with λ down to 1e-50), and |ȳ|.
MAX_ABS_COEFFICIENT = 1e150
#: Kernel widths σ outside this range make σ² under- or overflow.
SIGMA_RANGE = (1e-50, 1e50)
#: What :meth:`Node.f` returns for an optional fitted attribute the file does not hold.
ABSENT = object()

Hook = Callable[[Any, str, "Node"], None]


# ----------------------------------------------------------------------------- the node being read
class Node:
    """The decoded params and fitted attributes of one estimator node, with accessors naming the field.

    ``dims`` holds the named dimensions bound so far (``FloatArray(2, dims=("n", "d"))`` binds n and d;
    a later ``dims=("n",)`` must agree).
    """

    def __init__(self, where: str, name: str, cls: type, params: dict, fitted: dict) -> None:
        self.where, self.name, self.cls, self.params, self.fitted = where, name, cls, params, fitted
        self.dims: dict[str, int] = {}
        self.seen: set[str] = set()

    def p(self, key: str) -> tuple[Any, str]:
        return self.params[key], f"{self.where}.params.{key}"

    def f(self, key: str, required: bool = True) -> tuple[Any, str]:
        where = f"{self.where}.fitted.{key}"
        if key not in self.fitted:
            if required:
                raise ModelFileError(f"{where}: missing (a fitted {self.name} has it)")
            return ABSENT, where
        self.seen.add(key)
        return self.fitted[key], where

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)


# ----------------------------------------------------------------------------- field specs
class Spec:
    """One field's check. ``none_ok``: None is accepted; ``required``: a fitted attribute the file must hold
    (optional ones are checked only where present); ``then(value, where, node)``: runs after the check."""

    def __init__(self, *, none_ok: bool = False, required: bool = True, then: Hook | None = None) -> None:
        self.none_ok, self.required, self.then = none_ok, required, then

    def check(self, v: Any, where: str, node: Node) -> Any:
        """The value to keep (normalised where the spec says so), or raise ModelFileError."""
        return v

    def __call__(self, v: Any, where: str, node: Node) -> Any:
        out = v if v is None and self.none_ok else self.check(v, where, node)
        if self.then is not None:
            self.then(out, where, node)
        return out


class Number(Spec):
    """A finite real number (not a bool), optionally ≥ lo (> lo with lo_open) and at most max_abs in magnitude."""

    def __init__(self, *, lo: float | None = None, lo_open: bool = False, max_abs: float | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.lo, self.lo_open, self.max_abs = lo, lo_open, max_abs

    def check(self, v, where, node):
        number(v, where, lo=self.lo, lo_open=self.lo_open, max_abs=self.max_abs)
        return v


class Sigma(Spec):
    """A kernel width: > 0 and within :data:`SIGMA_RANGE`."""

    def check(self, v, where, node):
        sigma(v, where)
        return v


class Int(Spec):
    """An integer (not a bool) in lo..hi."""

    def __init__(self, lo: int, hi: int | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.lo, self.hi = lo, hi

    def check(self, v, where, node):
        integer(v, where, self.lo, self.hi)
        return v


class Bool(Spec):
    def check(self, v, where, node):
        if not isinstance(v, bool):
            raise fail(where, f"must be true or false, got {show(v)}")
        return v


class Choice(Spec):
    """One of ``values`` (strings; any container, read at check time: a registry dict works)."""

    def __init__(self, values: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.values = values

    def check(self, v, where, node):
        return choice(v, where, self.values)


class Text(Spec):
    def __init__(self, max_len: int = 256, **kw: Any) -> None:
        super().__init__(**kw)
        self.max_len = max_len

    def check(self, v, where, node):
        if not isinstance(v, str) or len(v) > self.max_len:
            raise fail(where, f"must be a string of at most {self.max_len} characters, got {show(v)}")
        return v


class FloatArray(Spec):
    """A finite float64 array of ``ndim`` (an int or a tuple of allowed ones) dimensions. ``dims`` names its
    leading dimensions (an int fixes one, a name binds it on first use and must agree afterwards)."""

    def __init__(self, ndim: int | tuple[int, ...], *, dims: tuple = (), max_abs: float | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.ndim, self.dims, self.max_abs = ndim, dims, max_abs

    def check(self, v, where, node):
        shape = tuple(node.dims.get(d) if isinstance(d, str) else d for d in self.dims) or None
        float_array(v, where, self.ndim, shape=shape, max_abs=self.max_abs)
        _bind(node, self.dims, v.shape)
        return v


class IntArray(Spec):
    """An integer array (any integer dtype, kept as int64) of values in lo..hi."""

    def __init__(self, lo: int, hi: int, *, ndim: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.lo, self.hi, self.ndim = lo, hi, ndim

    def check(self, v, where, node):
        return int_array(v, where, self.lo, self.hi, ndim=self.ndim).astype(np.int64)


class Elements(Spec):
    """Distinct atomic numbers in ascending order, at least one (kept as int64)."""

    def check(self, v, where, node):
        return elements(v, where).astype(np.int64)


class Nested(Spec):
    """A nested estimator of a kind (``base``: a class or tuple of classes), already read as its own node;
    ``fitted``: it must have fitted attributes."""

    def __init__(self, kind: str, base: type | tuple[type, ...], *, fitted: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.kind, self.base, self.fitted = kind, base, fitted

    def check(self, v, where, node):
        if not isinstance(v, self.base):
            names = " or ".join(b.__name__ for b in (self.base if isinstance(self.base, tuple) else (self.base,)))
            got = type(v).__name__ if not isinstance(v, (dict, list, str, int, float, bool, type(None))) else repr(v)[:40]
            raise fail(where, f"must be a {self.kind} ({names}), got {got}")
        if self.fitted and not any(k.endswith("_") and not k.startswith("_") for k in vars(v)):
            raise fail(where, f"must be a fitted {type(v).__name__}, got one without fitted attributes")
        return v


class Custom(Spec):
    """A field checked by ``fn(value, where, node)`` alone (which may return a normalised value)."""

    def __init__(self, fn: Hook, **kw: Any) -> None:
        super().__init__(**kw)
        self.fn = fn

    def check(self, v, where, node):
        out = self.fn(v, where, node)
        return v if out is None else out


class Finite(Spec):
    """Anything decoded; float arrays finite (the decoder already refuses NaN and infinity in arrays)."""

    def check(self, v, where, node):
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
            raise fail(where, "contains NaN or infinity")
        return v


def _bind(node: Node, dims: tuple, shape: tuple) -> None:
    for d, s in zip(dims, shape):
        if isinstance(d, str):
            node.dims.setdefault(d, int(s))


# ----------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Schema:
    """The saved fields of one class and their checks (see the module docstring for the order).

    version : the version of this class's saved fields, written with each node; raise it when they
        change: list an added parameter in ``added``, declare an added fitted attribute with
        ``required=False`` (older files lack it).
    added : parameter → (the version that added it, the value that reproduces how nodes of older
        versions were fitted). Nodes older than that version may lack the parameter. Version 0 stands
        for files of model format 2, which record no per-class version.
    extra : the spec of fitted attributes not declared in ``fitted`` (None: they are refused).
    """

    params: Mapping[str, Spec] = field(default_factory=dict)
    fitted: Mapping[str, Spec] = field(default_factory=dict)
    params_check: Callable[[Any], None] | None = None
    version: int = 1
    added: Mapping[str, tuple[int, Any]] = field(default_factory=dict)
    extra: Spec | None = None

    def extend(self, *, params: Mapping[str, Spec] | None = None, fitted: Mapping[str, Spec] | None = None,
               **changes: Any) -> "Schema":
        """This schema with more fields (a subclass's own, checked after the inherited ones) and other settings."""
        return replace(self, params={**self.params, **(params or {})}, fitted={**self.fitted, **(fitted or {})}, **changes)

    def defaults(self, cls: type, given: Mapping[str, Any], version: int, where: str) -> dict[str, Any]:
        """The parameters a node of ``version`` may lack, with the values that reproduce it; raises
        ModelFileError for parameters ``cls`` does not have, and for missing ones it needs."""
        names, name = set(cls._get_param_names()), cls.__name__
        defaults = {k: v for k, (since, v) in self.added.items() if version < since}
        unknown, missing = set(given) - names, names - set(given) - set(defaults)
        if unknown:
            raise ModelFileError(f"{where}: model file gives {name} unknown parameters {sorted(unknown)}")
        if missing:
            raise ModelFileError(f"{where}: model file lacks {name} parameters {sorted(missing)}")
        return defaults

    def build(self, node: Node) -> Any:
        """The estimator of a checked node (:meth:`check`)."""
        self.check(node)
        est = node.cls(**node.params)
        for k, v in node.fitted.items():
            setattr(est, k, v)
        return est

    def check(self, node: Node) -> None:
        """Check every field of ``node`` (normalised values are stored back), or raise ModelFileError."""
        for key, spec in self.params.items():
            if key in node.params:
                node.params[key] = spec(*node.p(key), node)
        if self.params_check is not None:
            try:
                self.params_check(node.cls(**node.params))
            except (MolkrrError, ValueError, TypeError, ArithmeticError) as exc:
                raise fail(f"{node.where}.params", one_line(exc)) from None
        if not node.is_fitted:
            return
        for key, spec in self.fitted.items():
            v, where = node.f(key, required=spec.required)
            if v is not ABSENT:
                node.fitted[key] = spec(v, where, node)
        for key in sorted(set(node.fitted) - node.seen):
            if self.extra is None:
                raise ModelFileError(f"{node.where}.fitted.{key}: {node.name} has no fitted attribute {key!r}")
            node.fitted[key] = self.extra(*node.f(key), node)


#: The schema of a class that declares none: fitted attributes accepted as decoded.
GENERIC = Schema(extra=Finite())


def schema_of(cls: type) -> Schema:
    """``cls.model_file_schema()``, or :data:`GENERIC` for a class that declares none."""
    declared = getattr(cls, "model_file_schema", None)
    schema = declared() if declared is not None else None
    return GENERIC if schema is None else schema


# ----------------------------------------------------------------------------- checks for hooks
def fail(where: str, what: str) -> ModelFileError:
    return ModelFileError(f"{where}: {what}")


def number(v: Any, where: str, *, lo: float | None = None, lo_open: bool = False, none: bool = False,
           max_abs: float | None = None) -> float | None:
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise fail(where, f"must be a number, got {show(v)}")
    try:
        x = float(v)
    except OverflowError:
        raise fail(where, f"must be a finite number, got {show(v)}") from None
    if not math.isfinite(x):
        raise fail(where, f"must be finite, got {show(v)}")
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise fail(where, f"must be {'>' if lo_open else '≥'} {lo:g}, got {show(v)}")
    if max_abs is not None and abs(x) > max_abs:
        raise fail(where, f"must be at most {max_abs:g} in magnitude, got {show(v)}")
    return x


def sigma(v: Any, where: str, *, none: bool = False) -> float | None:
    x = number(v, where, lo=0.0, lo_open=True, none=none)
    if x is not None and not SIGMA_RANGE[0] <= x <= SIGMA_RANGE[1]:
        raise fail(where, f"must lie in [{SIGMA_RANGE[0]:g}, {SIGMA_RANGE[1]:g}], got {show(v)}")
    return x


def integer(v: Any, where: str, lo: int, hi: int | None = None, *, none: bool = False) -> int | None:
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        bound = f"≥ {lo}" if hi is None else f"in {lo}..{hi}"
        raise fail(where, f"must be an integer {bound}, got {show(v)}")
    return int(v)


def choice(v: Any, where: str, choices: Any) -> Any:
    if not isinstance(v, str) or v not in choices:
        raise fail(where, f"must be one of {sorted(choices)}, got {show(v)}")
    return v


def float_array(v: Any, where: str, ndim: int | tuple[int, ...], shape: tuple | None = None,
                max_abs: float | None = None) -> np.ndarray:
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(v, np.ndarray):
        raise fail(where, f"must be an array, got {type(v).__name__}")
    if v.dtype != np.float64:
        raise fail(where, f"must be float64, got {v.dtype}")
    if v.ndim not in ndims:
        raise fail(where, f"must be {' or '.join(map(str, ndims))}-D, got shape {v.shape}")
    if shape is not None and any(s is not None and s != t for s, t in zip(shape, v.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise fail(where, f"has shape {v.shape}, expected {want}")
    if not np.isfinite(v).all():  # also checked on decoding; kept here for arrays built elsewhere
        raise fail(where, "contains NaN or infinity")
    if max_abs is not None and v.size and np.abs(v).max() > max_abs:
        raise fail(where, f"holds values up to {np.abs(v).max():.3g}; at most {max_abs:g} is accepted")
    return v


def int_array(v: Any, where: str, lo: int, hi: int, *, ndim: int = 1) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise fail(where, f"must be an integer array, got {type(v).__name__}")
    if v.dtype.kind not in "iu":
        raise fail(where, f"must be an integer array, got {v.dtype}")
    if v.ndim != ndim:
        raise fail(where, f"must be {ndim}-D, got shape {v.shape}")
    if v.size and (v.min() < lo or v.max() > hi):
        raise fail(where, f"values must lie in {lo}..{hi}, got {v.min()}..{v.max()}")
    return v


def elements(v: Any, where: str) -> np.ndarray:
    from .molecules import MAX_ATOMIC_NUMBER

    arr = int_array(v, where, 1, MAX_ATOMIC_NUMBER)
    if arr.size == 0 or np.any(np.diff(arr) <= 0):
        raise fail(where, f"must list distinct atomic numbers in ascending order, got {arr.tolist()[:20]}")
    return arr


def same(a: Any, b: Any) -> bool:
    """Equality of decoded parameter values (arrays, estimators, containers; NaN equals NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if hasattr(a, "get_params") or hasattr(b, "get_params"):
        return (type(a) is type(b) and hasattr(a, "get_params")
                and same(a.get_params(deep=False), b.get_params(deep=False)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def show(v: Any) -> str:
    """A short one-line rendering of a decoded value for messages."""
    if isinstance(v, np.ndarray):
        return f"an array of shape {v.shape} and dtype {v.dtype}"
    text = " ".join(repr(v).split())
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
