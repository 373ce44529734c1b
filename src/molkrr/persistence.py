"""Safe model files: one ``.npz`` holding numpy arrays plus a JSON header — never pickle.

Layout: the npz member ``__header__`` is the UTF-8 JSON header (a uint8 array)::

    {"format": "molkrr-model", "format_version": 1, "molkrr_version": "...",
     "model": {"class": "MolecularKRR", "params": {...}, "fitted": {...}}}

An estimator node lists its ``get_params(deep=False)`` and its fitted attributes (names ending in
``_``). Arrays are replaced by ``{"__array__": "a3"}`` references to npz members; nested estimators
are nodes. Loading only instantiates classes from molkrr's own :func:`allowed_classes`, reads with
``allow_pickle=False``, and turns every failure into :class:`~molkrr.errors.ModelFileError`.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from .errors import ModelFileError

FORMAT = "molkrr-model"
FORMAT_VERSION = 1
HEADER_KEY = "__header__"


def allowed_classes() -> dict[str, type]:
    """The classes a model file may name: molkrr's estimators, nothing else."""
    from . import krr, model
    from .representations import coulomb

    classes: dict[str, type] = {
        "MolecularKRR": model.MolecularKRR,
        "KernelRidge": krr.KernelRidge,
        "CoulombMatrix": coulomb.CoulombMatrix,
    }
    from .kernels import Gaussian, Laplacian, Linear, Matern

    classes.update({k.__name__: k for k in (Gaussian, Laplacian, Linear, Matern)})
    optional = {
        "BagOfBonds": ("molkrr.representations.bob", "BagOfBonds"),
        "FCHL19": ("molkrr.representations.fchl19", "FCHL19"),
        "MLKRR": ("molkrr.metric.mlkrr", "MLKRR"),
        "MLKR": ("molkrr.metric.mlkr", "MLKR"),
        "DerivativeKRR": ("molkrr.derivative_krr", "DerivativeKRR"),  # force-trained / local-kernel models
    }
    import importlib

    for name, (module, attr) in optional.items():
        try:
            classes[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):  # pragma: no cover - module not present in this build
            pass
    return classes


# ----------------------------------------------------------------------------- save
def save_model(estimator: Any, path: str | os.PathLike) -> None:
    """Write a fitted molkrr estimator to ``path`` atomically (temporary file, then rename).

    Raises TypeError for an unfitted estimator or an object that is not a molkrr estimator.
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from . import __version__

    try:
        check_is_fitted(estimator)  # TypeError itself for objects that are not estimators
    except NotFittedError:
        raise TypeError(f"cannot save an unfitted {type(estimator).__name__}: call fit first") from None

    arrays: dict[str, np.ndarray] = {}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "molkrr_version": __version__,
        "model": _encode_estimator(estimator, arrays),
    }
    arrays[HEADER_KEY] = np.frombuffer(json.dumps(header, indent=1).encode("utf-8"), dtype=np.uint8)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".molkrr-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _encode_estimator(est: Any, arrays: dict[str, np.ndarray]) -> dict:
    cls = type(est).__name__
    if allowed_classes().get(cls) is not type(est):
        raise TypeError(f"cannot save a {type(est).__module__}.{cls}: only molkrr estimators are saved")
    params = {k: _encode_value(v, arrays, f"{cls}.{k}") for k, v in est.get_params(deep=False).items()}
    fitted = {
        k: _encode_value(v, arrays, f"{cls}.{k}")
        for k, v in vars(est).items()
        if k.endswith("_") and not k.startswith("_")
    }
    return {"class": cls, "params": params, "fitted": fitted}


def _encode_value(v: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    from sklearn.base import BaseEstimator

    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            if not all(isinstance(x, str) for x in v.flat):
                raise TypeError(f"{where}: object arrays cannot be saved safely")
            v = v.astype(str)  # e.g. feature_names_in_: a unicode array needs no pickle
        key = f"a{len(arrays)}"
        arrays[key] = v
        return {"__array__": key}
    if isinstance(v, BaseEstimator):
        return {"__estimator__": _encode_estimator(v, arrays)}
    if isinstance(v, (list, tuple)):
        return {"__tuple__": [_encode_value(x, arrays, where) for x in v]} if isinstance(v, tuple) else [
            _encode_value(x, arrays, where) for x in v
        ]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError(f"{where}: dict keys must be strings to be saved")
        return {"__dict__": {k: _encode_value(x, arrays, where) for k, x in v.items()}}
    if callable(v):
        return None  # callbacks are behaviour, not data: they are not saved
    raise TypeError(f"{where}: cannot save a value of type {type(v).__name__}")


# ----------------------------------------------------------------------------- load
def load_model(path: str | os.PathLike) -> Any:
    """Read a model written by :func:`save_model`. Raises :class:`ModelFileError` on any bad file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ModelFileError(f"{path}: not a molkrr model file (a bare .npy array, not an npz archive)")
        with data:
            if HEADER_KEY not in data.files:
                raise ModelFileError(f"{path}: not a molkrr model file (no {HEADER_KEY} entry)")
            header = json.loads(data[HEADER_KEY].tobytes().decode("utf-8"))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                fmt = header.get("format") if isinstance(header, dict) else type(header).__name__
                raise ModelFileError(f"{path}: not a molkrr model file (format {fmt!r})")
            version = header.get("format_version")
            if version != FORMAT_VERSION:
                raise ModelFileError(
                    f"{path}: model file format version {version!r} is not supported (this molkrr reads {FORMAT_VERSION})"
                )
            arrays = {k: data[k] for k in data.files if k != HEADER_KEY}
            for k, v in arrays.items():  # NpzFile returns the raw bytes of a member that is not .npy
                if not isinstance(v, np.ndarray):
                    raise ModelFileError(f"{path}: member {k!r} is not a numpy array")
    except ModelFileError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ModelFileError(f"{path}: the file contains pickled objects, which molkrr refuses to load") from None
        raise ModelFileError(f"{path}: corrupt or foreign model file ({exc})") from None
    except (
        OSError, EOFError, zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, RecursionError
    ) as exc:
        raise ModelFileError(f"{path}: corrupt or truncated model file ({type(exc).__name__}: {exc})") from None
    try:
        return _decode_estimator(header["model"], arrays)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: inconsistent model file ({type(exc).__name__}: {exc})") from None


def _decode_estimator(node: dict, arrays: dict[str, np.ndarray]) -> Any:
    classes = allowed_classes()
    name = node["class"]
    if name not in classes:
        raise ModelFileError(f"model file names class {name!r}, which is not a molkrr estimator")
    cls = classes[name]
    allowed_params = set(cls._get_param_names())
    params = {k: _decode_value(v, arrays) for k, v in node["params"].items()}
    unknown = set(params) - allowed_params
    if unknown:
        raise ModelFileError(f"model file gives {name} unknown parameters {sorted(unknown)}")
    est = cls(**params)
    for k, v in node["fitted"].items():
        if not (isinstance(k, str) and k.endswith("_") and not k.startswith("_")):
            raise ModelFileError(f"model file sets a non-fitted attribute {k!r} on {name}")
        setattr(est, k, _decode_value(v, arrays))
    return est


def _decode_value(v: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(v, list):
        return [_decode_value(x, arrays) for x in v]
    if isinstance(v, dict):
        if "__array__" in v:
            return arrays[v["__array__"]]
        if "__estimator__" in v:
            return _decode_estimator(v["__estimator__"], arrays)
        if "__tuple__" in v:
            return tuple(_decode_value(x, arrays) for x in v["__tuple__"])
        if "__dict__" in v:
            return {k: _decode_value(x, arrays) for k, x in v["__dict__"].items()}
        raise ModelFileError(f"unknown value encoding {sorted(v)!r}")
    return v
