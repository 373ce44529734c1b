"""Safe model files: one ``.npz`` holding numpy arrays plus a JSON header — never pickle.

Layout: the npz member ``__header__`` is the UTF-8 JSON header (a uint8 array)::

    {"format": "molkrr-model", "format_version": 2, "molkrr_version": "...",
     "model": {"class": "MolecularKRR", "params": {...}, "fitted": {...}}}

An estimator node lists its ``get_params(deep=False)`` and its fitted attributes (names ending in
``_``). Arrays are replaced by ``{"__array__": "a3"}`` references to npz members; nested estimators
are nodes.

A model file is data from outside: :func:`load_model` validates it to the last field *before*
anything is built from it, and turns every failure into one :class:`~molkrr.errors.ModelFileError`
that names the field (``model.fitted.krr_.fitted.alpha_: ...``):

1. the archive: every member's size is checked against :data:`MAX_MODEL_BYTES` and against the
   archive before it is read (stored members must lie inside the file, compressed ones cannot
   inflate beyond deflate's limit), encrypted members and other compressions are refused, and the
   ``.npy`` header of each member must declare exactly the bytes the member holds;
2. the header: JSON object, format name, format version, nesting depth;
3. the class tree: only classes of :func:`allowed_classes` (one registry, :data:`_REGISTRY`), and
   each field only where its class belongs (a representation where the model's ``krr_`` should be
   is refused);
4. every parameter and fitted attribute of every node, by the validator registered for its class:
   required keys, types, dtypes (float64 where float is meant, integers where integers are meant),
   finiteness of every float array, shapes consistent across ``X_fit_``, ``alpha_``,
   ``n_features_``, the representation's sizes and the metric's ``components_``. Unknown
   parameters or fitted attributes are refused.

Adding a class is one line in :data:`_REGISTRY` (module, attribute, validator).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._atomic import atomic_write
from .errors import InputTypeError, InvalidInputError, ModelFileError

FORMAT = "molkrr-model"
#: 2: MolecularKRR records the elements it was trained on (``elements_``). Files of version 1 have no
#: such record and are refused (retrain, or see :func:`molkrr.applicability.allow_elements`).
FORMAT_VERSION = 2
#: Parameters added after a format version's first files, with the value that reproduces how files
#: without them were fitted (so those files keep loading and predicting as before).
_ADDED_PARAMS: dict[str, dict[str, Any]] = {"MolecularKRR": {"baseline": "mean", "n_sparse": None}}
HEADER_KEY = "__header__"

#: Largest total (decompressed) size of the arrays in one model file, in bytes. A model of 130,000
#: training molecules with 720 features holds 0.75 GB; the environment variable
#: ``MOLKRR_MAX_MODEL_BYTES`` raises (or lowers) the limit.
def _env_bytes(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:  # an unreadable setting keeps the default rather than breaking the import
        return default


MAX_MODEL_BYTES = _env_bytes("MOLKRR_MAX_MODEL_BYTES", 32 << 30)
#: Largest JSON header, in bytes.
MAX_HEADER_BYTES = 16 << 20
#: Largest number of members in a model file.
MAX_MEMBERS = 4096
#: Deepest nesting of estimators and containers in the header.
MAX_DEPTH = 32
#: Deflate cannot compress better than about 1032:1; a member claiming more is forged.
_DEFLATE_MAX_RATIO = 1100
#: Largest number of atoms (size of a padded representation, a bag) a model may declare.
MAX_MODEL_ATOMS = 100_000
_READ_CHUNK = 16 << 20
#: Largest |value| accepted in a feature matrix (``X_fit_``, ``components_``): squared distances of
#: such rows stay finite, so predictions cannot turn into inf − inf = NaN.
MAX_ABS_FEATURE = 1e100
#: Largest |α| accepted (α ≈ y/λ: targets up to 1e100 with λ down to 1e-50), and |ȳ|.
MAX_ABS_COEFFICIENT = 1e150
#: Kernel widths σ outside this range make σ² under- or overflow.
SIGMA_RANGE = (1e-50, 1e50)


# ----------------------------------------------------------------------------- save
def save_model(estimator: Any, path: str | os.PathLike) -> None:
    """Write a fitted molkrr estimator to ``path`` atomically (temporary file, then rename).

    Raises InputTypeError (a TypeError) for an unfitted estimator or an object that is not a molkrr
    estimator, and InvalidInputError for a model that :func:`load_model` would refuse (e.g. NaN
    coefficients): what is written always loads.
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from . import __version__

    try:
        check_is_fitted(estimator)  # TypeError itself for objects that are not estimators
    except NotFittedError:
        raise InputTypeError(f"cannot save an unfitted {type(estimator).__name__}: call fit first") from None

    arrays: dict[str, np.ndarray] = {}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "molkrr_version": __version__,
        "model": _encode_estimator(estimator, arrays),
    }
    text = json.dumps(header, indent=1)
    try:  # never write a file that load_model would refuse (NaN coefficients, inconsistent sizes, ...)
        _Decoder(arrays).estimator(json.loads(text)["model"], "model", depth=0)
    except ModelFileError as exc:
        raise InvalidInputError(f"cannot save this {type(estimator).__name__}: {exc}") from None
    arrays[HEADER_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    atomic_write(os.fspath(path), lambda fh: np.savez(fh, **arrays))


def _encode_estimator(est: Any, arrays: dict[str, np.ndarray]) -> dict:
    cls = type(est).__name__
    if allowed_classes().get(cls) is not type(est):
        raise InputTypeError(f"cannot save a {type(est).__module__}.{cls}: only molkrr estimators are saved")
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
                raise InputTypeError(f"{where}: object arrays cannot be saved safely")
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
            raise InputTypeError(f"{where}: dict keys must be strings to be saved")
        return {"__dict__": {k: _encode_value(x, arrays, where) for k, x in v.items()}}
    if callable(v):
        return None  # callbacks are behaviour, not data: they are not saved
    raise InputTypeError(f"{where}: cannot save a value of type {type(v).__name__}")


# ----------------------------------------------------------------------------- load
def load_model(path: str | os.PathLike, kind: type | None = None) -> Any:
    """Read and validate a model written by :func:`save_model`.

    kind : a class (e.g. :class:`molkrr.MolecularKRR`) the file must hold; None accepts any molkrr
        estimator.

    Raises :class:`~molkrr.errors.ModelFileError` (naming the file and the field) for any file that
    is missing, truncated, corrupt, foreign, of another format version, or whose content is not a
    consistent molkrr model (or not of ``kind``); nothing is built from a file that fails.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    try:
        header, arrays = _read_archive(path)
        _check_header(header)
        decoder = _Decoder(arrays)
        model = decoder.estimator(header["model"], "model", depth=0)
        unused = sorted(set(arrays) - decoder.used)
        if unused:
            raise ModelFileError(f"member {unused[0]!r} is not referenced by the header")
        if kind is not None and not isinstance(model, kind):
            raise ModelFileError(f"the file holds a {type(model).__name__}, not a {kind.__name__}")
        return model
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {_one_line(exc, 400)}") from None
    except RecursionError:
        raise ModelFileError(f"{path}: the header is nested too deeply") from None
    except MemoryError:
        raise ModelFileError(f"{path}: not enough memory to read the model") from None


# ----------------------------------------------------------------------------- the archive
@contextlib.contextmanager
def _checked_zip(path: str, max_bytes: int) -> Iterator[tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]]:
    """The open archive and its members, every member's declared size checked before anything is read."""
    archive_size = os.path.getsize(path)
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x93NUMPY"):
        raise ModelFileError("not a molkrr model file (a bare .npy array, not an npz archive)")
    if magic[:1] == b"\x80" and 2 <= (magic[1:2] or b"\x00")[0] <= 5:
        raise ModelFileError("the file contains pickled objects, which molkrr refuses to load")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        kind = "an empty file" if archive_size == 0 else "not a zip/npz archive"
        raise ModelFileError(f"not a molkrr model file ({kind}: {_one_line(exc)})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ModelFileError(f"{len(infos)} members, more than the {MAX_MEMBERS} a model file may hold")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise ModelFileError("the archive names a member twice")
        budget = max_bytes
        for info in infos:
            _check_member(info, archive_size)
            budget -= info.file_size
            if budget < 0:
                raise ModelFileError(
                    f"member {info.filename!r}: the arrays declare more than {_gib(max_bytes)} in all "
                    "(the limit MOLKRR_MAX_MODEL_BYTES)"
                )
        yield zf, infos


def read_npz_bounded(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read with the checks of model files (sizes bounded before reading,
    no pickle, no other compressions); raises ModelFileError. Used for data sets in npz form too."""
    path = os.fspath(path)
    with _checked_zip(path, MAX_MODEL_BYTES if max_bytes is None else max_bytes) as (zf, infos):
        arrays = {}
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise ModelFileError(f"member {info.filename!r} is not a numpy array (.npy)")
            arrays[info.filename[:-4]] = _read_member(zf, info)
    return arrays


def _read_archive(path: str) -> tuple[Any, dict[str, np.ndarray]]:
    """(parsed JSON header, {member name: array}) with every size bounded before it is read."""
    with _checked_zip(path, MAX_MODEL_BYTES) as (zf, infos):
        if HEADER_KEY + ".npy" not in [i.filename for i in infos]:
            raise ModelFileError(f"not a molkrr model file (no {HEADER_KEY} entry)")
        header_info = zf.getinfo(HEADER_KEY + ".npy")
        if header_info.file_size > MAX_HEADER_BYTES:
            raise ModelFileError(f"the header declares {header_info.file_size} bytes, more than {MAX_HEADER_BYTES}")
        raw = _read_member(zf, header_info)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ModelFileError(f"{HEADER_KEY} must be a 1-D uint8 array, got {raw.dtype} {raw.shape}")
        try:
            header = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise ModelFileError(f"the header is not JSON ({_one_line(exc)})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            fmt = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise ModelFileError(f"not a molkrr model file (format {_show(fmt)})")
        version = header.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise ModelFileError(
                f"model file format version {_show(version)} is not supported (this molkrr reads {FORMAT_VERSION}"
                + ("; version 1 files do not record the training elements: retrain the model)" if version == 1 else ")")
            )
        arrays = {}
        for info in infos:
            if info.filename == HEADER_KEY + ".npy":
                continue
            if not info.filename.endswith(".npy"):
                raise ModelFileError(f"member {info.filename!r} is not a numpy array (.npy)")
            arrays[info.filename[:-4]] = _read_member(zf, info)
    return header, arrays


def _check_member(info: zipfile.ZipInfo, archive_size: int) -> None:
    name = info.filename
    if info.flag_bits & 0x1:
        raise ModelFileError(f"member {name!r} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise ModelFileError(
                f"member {name!r} is stored uncompressed but declares {info.file_size} bytes in "
                f"{info.compress_size}"
            )
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
            raise ModelFileError(
                f"member {name!r} declares {info.file_size} bytes from {info.compress_size} compressed "
                "bytes, more than deflate can produce"
            )
    else:
        raise ModelFileError(
            f"member {name!r} uses compression method {info.compress_type}; model files are stored or deflated"
        )
    if info.header_offset + info.compress_size > archive_size:
        raise ModelFileError(f"member {name!r} declares {info.compress_size} bytes past the end of the file (truncated?)")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """The array in one ``.npy`` member, read in chunks into an array allocated from its checked header."""
    name = info.filename
    try:
        with zf.open(info) as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=10_000)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=10_000)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except Exception as exc:  # noqa: BLE001 - numpy parses the header with tokenize/literal_eval: any failure means junk
                if "pickle" in str(exc) or "object" in str(exc).lower():
                    raise ModelFileError("the file contains pickled objects, which molkrr refuses to load") from None
                raise ModelFileError(f"member {name!r} is not a valid .npy array ({_one_line(exc)})") from None
            if dtype.hasobject:
                raise ModelFileError("the file contains pickled objects, which molkrr refuses to load")
            if dtype.kind not in "biufcUS" or dtype.fields is not None or dtype.subdtype is not None:
                raise ModelFileError(f"member {name!r} has unsupported dtype {dtype}")
            if any(type(s) is not int or s < 0 for s in shape) or len(shape) > 32:
                raise ModelFileError(f"member {name!r} has an invalid shape {shape!r}")
            n_bytes = math.prod(shape) * dtype.itemsize
            header_len = fh.tell()
            if header_len + n_bytes != info.file_size:
                raise ModelFileError(
                    f"member {name!r} declares shape {shape} of {dtype} ({n_bytes} bytes) but holds "
                    f"{info.file_size - header_len} bytes"
                )
            arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
            view = memoryview(arr.reshape(-1).view(np.uint8)) if n_bytes else memoryview(b"")
            pos = 0
            while pos < n_bytes:
                chunk = fh.read(min(_READ_CHUNK, n_bytes - pos))
                if not chunk:
                    raise ModelFileError(f"member {name!r} is truncated")
                view[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
            if fh.read(1):
                raise ModelFileError(f"member {name!r} holds more bytes than its header declares")
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError, OverflowError) as exc:
        raise ModelFileError(f"member {name!r} is corrupt or truncated ({_one_line(exc)})") from None
    if fortran:
        arr = arr.T
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _check_header(header: dict) -> None:
    if "model" not in header:
        raise ModelFileError("the header has no 'model' entry")


# ----------------------------------------------------------------------------- decoding
class _Decoder:
    """Builds the estimator tree from a header, validating every node before it is built."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.used: set[str] = set()
        self.classes = allowed_classes()

    def estimator(self, node: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ModelFileError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if not isinstance(node, dict) or set(node) != {"class", "params", "fitted"}:
            keys = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise ModelFileError(f"{where}: an estimator node needs exactly 'class', 'params' and 'fitted', got {keys}")
        name = node["class"]
        if not isinstance(name, str) or name not in self.classes:
            raise ModelFileError(f"{where}: model file names class {_show(name)}, which is not a molkrr estimator")
        cls = self.classes[name]
        if not isinstance(node["params"], dict) or not isinstance(node["fitted"], dict):
            raise ModelFileError(f"{where}: 'params' and 'fitted' must be JSON objects")
        allowed_params = set(cls._get_param_names())
        unknown = set(node["params"]) - allowed_params
        if unknown:
            raise ModelFileError(f"{where}: model file gives {name} unknown parameters {sorted(unknown)}")
        added_later = _ADDED_PARAMS.get(name, {})
        missing = allowed_params - set(node["params"]) - set(added_later)
        if missing:
            raise ModelFileError(f"{where}: model file lacks {name} parameters {sorted(missing)}")
        for k in node["fitted"]:
            if not (isinstance(k, str) and k.endswith("_") and not k.startswith("_")):
                raise ModelFileError(f"{where}: model file sets a non-fitted attribute {_show(k)} on {name}")
        params = {k: self.value(v, f"{where}.params.{k}", depth + 1) for k, v in node["params"].items()}
        params = {**{k: v for k, v in added_later.items() if k not in params}, **params}
        fitted = {k: self.value(v, f"{where}.fitted.{k}", depth + 1) for k, v in node["fitted"].items()}
        fields = _Fields(where, name, params, fitted)
        _REGISTRY.get(name, (None, None, _check_generic))[2](fields)
        fields.finish()
        est = cls(**params)
        for k, v in fitted.items():
            setattr(est, k, v)
        return est

    def value(self, v: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ModelFileError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(v, list):
            return [self.value(x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v)]
        if isinstance(v, dict):
            if len(v) != 1:
                raise ModelFileError(f"{where}: unknown value encoding {sorted(v)!r}")
            (tag, inner), = v.items()
            if tag == "__array__":
                return self.array(inner, where)
            if tag == "__estimator__":
                return self.estimator(inner, where, depth + 1)
            if tag == "__tuple__" and isinstance(inner, list):
                return tuple(self.value(x, f"{where}[{i}]", depth + 1) for i, x in enumerate(inner))
            if tag == "__dict__" and isinstance(inner, dict):
                return {k: self.value(x, f"{where}.{k}", depth + 1) for k, x in inner.items()}
            raise ModelFileError(f"{where}: unknown value encoding {sorted(v)!r}")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise ModelFileError(f"{where}: unsupported value {_show(v)}")  # pragma: no cover - JSON has no others

    def array(self, key: Any, where: str) -> np.ndarray:
        if not isinstance(key, str) or key not in self.arrays:
            raise ModelFileError(f"{where}: refers to array {_show(key)}, which the file does not hold")
        if key in self.used:
            raise ModelFileError(f"{where}: array {key!r} is referenced twice")
        self.used.add(key)
        arr = self.arrays[key]
        if arr.dtype.kind == "c":
            raise ModelFileError(f"{where}: complex array ({arr.dtype}); molkrr stores real numbers")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ModelFileError(f"{where}: contains NaN or infinity")
        return arr


# ----------------------------------------------------------------------------- field checks
class _Fields:
    """The decoded params and fitted attributes of one node, with typed accessors naming the field."""

    def __init__(self, where: str, name: str, params: dict, fitted: dict) -> None:
        self.where, self.name, self.params, self.fitted = where, name, params, fitted
        self._seen: set[str] = set()

    def p(self, key: str) -> tuple[Any, str]:
        return self.params[key], f"{self.where}.params.{key}"

    def f(self, key: str, required: bool = True) -> tuple[Any, str]:
        where = f"{self.where}.fitted.{key}"
        if key not in self.fitted:
            if required:
                raise ModelFileError(f"{where}: missing (a fitted {self.name} has it)")
            return _ABSENT, where
        self._seen.add(key)
        return self.fitted[key], where

    def finish(self) -> None:
        extra = sorted(set(self.fitted) - self._seen)
        if extra:
            raise ModelFileError(f"{self.where}.fitted.{extra[0]}: {self.name} has no fitted attribute {extra[0]!r}")

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)


_ABSENT = object()


def _fail(where: str, what: str) -> ModelFileError:
    return ModelFileError(f"{where}: {what}")


def _number(v: Any, where: str, *, lo: float | None = None, lo_open: bool = False, none: bool = False,
            max_abs: float | None = None) -> float | None:
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise _fail(where, f"must be a number, got {_show(v)}")
    try:
        x = float(v)
    except OverflowError:
        raise _fail(where, f"must be a finite number, got {_show(v)}") from None
    if not math.isfinite(x):
        raise _fail(where, f"must be finite, got {_show(v)}")
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise _fail(where, f"must be {'>' if lo_open else '≥'} {lo:g}, got {_show(v)}")
    if max_abs is not None and abs(x) > max_abs:
        raise _fail(where, f"must be at most {max_abs:g} in magnitude, got {_show(v)}")
    return x


def _sigma(v: Any, where: str, *, none: bool = False) -> float | None:
    x = _number(v, where, lo=0.0, lo_open=True, none=none)
    if x is not None and not SIGMA_RANGE[0] <= x <= SIGMA_RANGE[1]:
        raise _fail(where, f"must lie in [{SIGMA_RANGE[0]:g}, {SIGMA_RANGE[1]:g}], got {_show(v)}")
    return x


def _integer(v: Any, where: str, lo: int, hi: int | None = None, *, none: bool = False) -> int | None:
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        bound = f"≥ {lo}" if hi is None else f"in {lo}..{hi}"
        raise _fail(where, f"must be an integer {bound}, got {_show(v)}")
    return int(v)


def _boolean(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, f"must be true or false, got {_show(v)}")
    return v


def _choice(v: Any, where: str, choices: Any, *, none: bool = False) -> Any:
    if v is None and none:
        return None
    if not isinstance(v, str) or v not in choices:
        raise _fail(where, f"must be one of {sorted(choices)}, got {_show(v)}")
    return v


def _text(v: Any, where: str, *, none: bool = False, max_len: int = 256) -> str | None:
    if v is None and none:
        return None
    if not isinstance(v, str) or len(v) > max_len:
        raise _fail(where, f"must be a string of at most {max_len} characters, got {_show(v)}")
    return v


def _float_array(v: Any, where: str, ndim: int | tuple[int, ...], shape: tuple | None = None,
                 max_abs: float | None = None) -> np.ndarray:
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(v, np.ndarray):
        raise _fail(where, f"must be an array, got {type(v).__name__}")
    if v.dtype != np.float64:
        raise _fail(where, f"must be float64, got {v.dtype}")
    if v.ndim not in ndims:
        raise _fail(where, f"must be {' or '.join(map(str, ndims))}-D, got shape {v.shape}")
    if shape is not None and any(s is not None and s != t for s, t in zip(shape, v.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise _fail(where, f"has shape {v.shape}, expected {want}")
    if not np.isfinite(v).all():  # also checked on decoding; kept here for arrays built elsewhere
        raise _fail(where, "contains NaN or infinity")
    if max_abs is not None and v.size and np.abs(v).max() > max_abs:
        raise _fail(where, f"holds values up to {np.abs(v).max():.3g}; at most {max_abs:g} is accepted")
    return v


def _int_array(v: Any, where: str, lo: int, hi: int, *, ndim: int = 1) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise _fail(where, f"must be an integer array, got {type(v).__name__}")
    if v.dtype.kind not in "iu":
        raise _fail(where, f"must be an integer array, got {v.dtype}")
    if v.ndim != ndim:
        raise _fail(where, f"must be {ndim}-D, got shape {v.shape}")
    if v.size and (v.min() < lo or v.max() > hi):
        raise _fail(where, f"values must lie in {lo}..{hi}, got {v.min()}..{v.max()}")
    return v


def _elements(v: Any, where: str) -> np.ndarray:
    from .molecules import MAX_ATOMIC_NUMBER

    arr = _int_array(v, where, 1, MAX_ATOMIC_NUMBER)
    if arr.size == 0 or np.any(np.diff(arr) <= 0):
        raise _fail(where, f"must list distinct atomic numbers in ascending order, got {arr.tolist()[:20]}")
    return arr


def _nested(v: Any, where: str, kind: str, *, fitted: bool, none: bool = False) -> Any:
    """A nested estimator of the given kind ('representation', 'metric', 'krr'), checked by its class."""
    if v is None and none:
        return None
    from .krr import KernelRidge
    from .metric.base_metric import MetricLearner
    from .representations.base import Representation

    base = {"representation": Representation, "metric": MetricLearner, "krr": KernelRidge}[kind]
    if not isinstance(v, base):
        got = type(v).__name__ if not isinstance(v, (dict, list, str, int, float, bool, type(None))) else repr(v)[:40]
        raise _fail(where, f"must be a {kind} ({base.__name__}), got {got}")
    if fitted and not any(k.endswith("_") and not k.startswith("_") for k in vars(v)):
        raise _fail(where, f"must be a fitted {type(v).__name__}, got one without fitted attributes")
    return v


def _params_through(fields: _Fields, check: Callable[[Any], None]) -> None:
    """Run an estimator's own parameter check on a throw-away instance; its typed errors name the node."""
    from .errors import MolkrrError

    cls = allowed_classes()[fields.name]
    try:
        check(cls(**fields.params))
    except (MolkrrError, ValueError, TypeError, ArithmeticError) as exc:
        raise _fail(f"{fields.where}.params", _one_line(exc)) from None


def _same(a: Any, b: Any) -> bool:
    """Equality of decoded parameter values (arrays, estimators, containers; NaN equals NaN)."""
    from sklearn.base import BaseEstimator

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, BaseEstimator) or isinstance(b, BaseEstimator):
        return type(a) is type(b) and _same(a.get_params(deep=False), b.get_params(deep=False))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _show(v: Any) -> str:
    """A short one-line rendering of a decoded value for messages."""
    if isinstance(v, np.ndarray):
        return f"an array of shape {v.shape} and dtype {v.dtype}"
    text = " ".join(repr(v).split())
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- per-class validators
def _kernel_param(v: Any, where: str) -> Any:
    """A kernel parameter: a registered name or a kernel object (validated as its own node)."""
    from .kernels import KERNELS, Kernel

    if isinstance(v, Kernel):
        return v
    return _choice(v, where, KERNELS)


def _check_kernel(f: _Fields) -> None:
    """A kernel object: its σ (if it has one) and, for Matérn, ν; kernels have no fitted attributes."""
    if "sigma" in f.params:
        _sigma(*f.p("sigma"), none=True)
    if "nu" in f.params:
        nu, where = f.p("nu")
        if _number(nu, where) not in (1.5, 2.5):
            raise _fail(where, f"must be 1.5 or 2.5, got {_show(nu)}")


def _check_solver_params(f: _Fields) -> None:
    """The large-n solver's parameters (molkrr.solvers.falkon), where the class has them."""
    from .solvers.registry import solver_names

    if "solver" in f.params:
        _choice(*f.p("solver"), solver_names(include_auto=True))
    if "n_centers" in f.params:
        _integer(*f.p("n_centers"), 1, none=True)
    if "cg_tol" in f.params:
        _number(*f.p("cg_tol"), lo=0.0, lo_open=True)
    if "cg_max_iter" in f.params:
        _integer(*f.p("cg_max_iter"), 1)
    if "random_state" in f.params:
        _integer(*f.p("random_state"), 0, none=True)
    for key in ("backend", "device"):  # the compute backend (molkrr.backends)
        if key in f.params:
            _text(*f.p(key), none=True, max_len=64)


def _check_kernel_ridge(f: _Fields) -> None:
    _kernel_param(*f.p("kernel"))
    _sigma(*f.p("sigma"), none=True)
    lam = _number(*f.p("lam"), lo=0.0)
    center = _boolean(*f.p("center"))
    _check_solver_params(f)
    if not f.is_fitted:
        return
    solver_used, where = f.f("solver_", required=False)
    if solver_used is not _ABSENT:
        from .solvers.registry import solver_names

        _choice(solver_used, where, solver_names())
    n_iter, where = f.f("n_iter_", required=False)
    if n_iter is not _ABSENT:
        _integer(n_iter, where, 0)
    X = _float_array(*f.f("X_fit_"), 2, max_abs=MAX_ABS_FEATURE)
    n, d = X.shape
    if n < 1 or d < 1:
        raise _fail(f.f("X_fit_")[1], f"needs at least one row and one column, got shape {X.shape}")
    alpha = _float_array(*f.f("alpha_"), (1, 2), shape=(n,), max_abs=MAX_ABS_COEFFICIENT)
    y_mean, where = f.f("y_mean_")
    if alpha.ndim == 1:
        if isinstance(y_mean, np.ndarray):
            y_mean = _float_array(y_mean, where, 0, max_abs=MAX_ABS_COEFFICIENT)
        else:
            _number(y_mean, where, max_abs=MAX_ABS_COEFFICIENT)
    else:
        _float_array(y_mean, where, 1, shape=(alpha.shape[1],), max_abs=MAX_ABS_COEFFICIENT)
    if not center and np.any(np.asarray(y_mean) != 0):
        raise _fail(where, "must be 0 for a model fitted with center=false")
    lam_used = _number(*f.f("lam_"), lo=0.0)
    if lam_used < lam:
        raise _fail(f.f("lam_")[1], f"λ used ({lam_used:g}) is below the requested lam ({lam:g})")
    n_in, where = f.f("n_features_in_")
    if _integer(n_in, where, 1) != d:
        raise _fail(where, f"is {n_in} but X_fit_ has {d} columns")
    names, where = f.f("feature_names_in_", required=False)
    if names is not _ABSENT and (not isinstance(names, np.ndarray) or names.dtype.kind != "U" or names.shape != (d,)):
        raise _fail(where, f"must be {d} strings")


def _check_coulomb(f: _Fields) -> None:
    from .representations.coulomb import VARIANTS

    variant = _choice(*f.p("variant"), VARIANTS)
    size = _integer(*f.p("size"), 1, MAX_MODEL_ATOMS, none=True)
    if not f.is_fitted:
        return
    size_ = _integer(*f.f("size_"), 1, MAX_MODEL_ATOMS)
    if size is not None and size_ != size:
        raise _fail(f.f("size_")[1], f"is {size_} but the parameter size is {size}")
    expected = size_ if variant == "eigenvalues" else size_ * (size_ + 1) // 2
    n_features, where = f.f("n_features_")
    if _integer(n_features, where, 1) != expected:
        raise _fail(where, f"is {n_features}, but a {variant} Coulomb matrix of size_={size_} has {expected} features")


def _check_bag_of_bonds(f: _Fields) -> None:
    from .representations.bob import _layout, _parse_params

    _integer(*f.p("bag_padding"), 0, MAX_MODEL_ATOMS)
    _params_through(f, lambda est: _parse_params(est.elements, est.bag_sizes))
    if not f.is_fitted:
        return
    elements = _elements(*f.f("elements_"))
    sizes = _int_array(*f.f("bag_sizes_"), 0, MAX_MODEL_ATOMS)
    if sizes.shape != elements.shape:
        raise _fail(f.f("bag_sizes_")[1], f"has {sizes.size} entries for {elements.size} elements")
    expected = int(_layout(elements.astype(np.int64), sizes.astype(np.int64))[3])
    n_features, where = f.f("n_features_")
    if _integer(n_features, where, 1) != expected:
        raise _fail(where, f"is {n_features}, but these bags hold {expected} features")
    f.fitted["elements_"] = elements.astype(np.int64)
    f.fitted["bag_sizes_"] = sizes.astype(np.int64)


def _check_fchl19(f: _Fields) -> None:
    _params_through(f, lambda est: est._check_params())
    if not f.is_fitted:
        return
    elements = _int_array(*f.f("elements_"), 1, 118)
    where = f.f("elements_")[1]
    if elements.tolist() != [int(z) for z in f.params["elements"]]:
        raise _fail(where, f"{elements.tolist()} differs from the parameter elements {f.params['elements']}")
    p = f.params
    n_el = elements.size
    expected = n_el * p["nRs2"] + n_el * (n_el + 1) // 2 * p["nRs3"] * 2 * p["nFourier"]
    n_features, where = f.f("n_features_")
    if _integer(n_features, where, 1) != expected:
        raise _fail(where, f"is {n_features}, but these FCHL19 parameters give {expected} features")
    f.fitted["elements_"] = elements.astype(np.int64)


def _check_metric_learner(f: _Fields) -> None:
    _params_through(f, lambda est: est._check_common_params())
    if f.name == "MLKRR":
        _number(*f.p("lam"), lo=0.0)
        frac, where = f.p("alpha_fraction")
        if not 0.0 < _number(frac, where) < 1.0:
            raise _fail(where, f"must lie in (0, 1), got {_show(frac)}")
        _integer(*f.p("shuffle_every"), 1)
    if not f.is_fitted:
        return
    A = _float_array(*f.f("components_"), 2, max_abs=MAX_ABS_FEATURE)
    if A.shape[0] < 1 or A.shape[1] < 1:
        raise _fail(f.f("components_")[1], f"must have at least one row and column, got shape {A.shape}")
    n_in, where = f.f("n_features_in_")
    if _integer(n_in, where, 1) != A.shape[1]:
        raise _fail(where, f"is {n_in} but components_ has {A.shape[1]} columns")
    _sigma(*f.f("sigma_"))
    _integer(*f.f("n_iter_"), 0)
    for key in ("n_segments_", "seed_"):
        v, where = f.f(key, required=False)
        if v is not _ABSENT:
            _integer(v, where, 0)
    v, where = f.f("y_offset_", required=False)
    if v is not _ABSENT:
        _number(v, where)
    history, where = f.f("history_", required=False)
    if history is not _ABSENT:
        if not isinstance(history, dict) or not all(isinstance(h, list) for h in history.values()):
            raise _fail(where, "must map names to lists")
        for key, values in history.items():
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
                raise _fail(f"{where}.{key}", "must hold numbers only")


def _check_derivative_krr(f: _Fields) -> None:
    """KRR with derivative observations (molkrr.derivative_krr): consistent, finite environments and weights."""
    _kernel_param(*f.p("kernel"))
    _sigma(*f.p("sigma"), none=True)
    _number(*f.p("lam"), lo=0.0)
    _number(*f.p("lam_forces"), lo=0.0, none=True)
    _choice(*f.p("targets"), ("energy", "forces", "energy+forces"))
    _boolean(*f.p("center"))
    if not f.is_fitted:
        return
    X = _float_array(*f.f("X_"), 2, max_abs=MAX_ABS_FEATURE)
    n, d = X.shape
    _float_array(*f.f("alpha_"), 1, shape=(n,), max_abs=MAX_ABS_COEFFICIENT)
    _float_array(*f.f("W_"), 2, shape=(n, d), max_abs=MAX_ABS_COEFFICIENT)
    _float_array(*f.f("wdot_"), 1, shape=(n,), max_abs=MAX_ABS_COEFFICIENT)
    labels = _int_array(*f.f("labels_"), 0, 118)
    if labels.shape != (n,):
        raise _fail(f.f("labels_")[1], f"must hold one label per environment ({n}), got shape {labels.shape}")
    f.fitted["labels_"] = labels.astype(np.int64)
    _number(*f.f("offset_"), max_abs=MAX_ABS_COEFFICIENT)
    for key in list(f.fitted):  # anything else the model keeps: finite numbers only
        if key not in f._seen:
            v, where = f.f(key)
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
                raise _fail(where, "contains NaN or infinity")


def _check_baseline_fields(f: _Fields) -> None:
    """baseline_, baseline_elements_, baseline_energies_ (molkrr.baseline); absent in older files (no baseline)."""
    kind, where = f.f("baseline_", required=False)
    if kind is _ABSENT:
        return
    kind = _choice(kind, where, ("elements", "mean"))
    elements, where = f.f("baseline_elements_")
    energies, e_where = f.f("baseline_energies_")
    if kind == "mean":
        elements = _int_array(elements, where, 1, 118)
        if elements.size:
            raise _fail(where, "must be empty for baseline 'mean'")
    else:
        elements = _elements(elements, where)
    f.fitted["baseline_elements_"] = elements.astype(np.int64)
    _float_array(energies, e_where, 1, shape=(elements.size,), max_abs=MAX_ABS_COEFFICIENT)


def _check_molecular_krr(f: _Fields) -> None:
    _nested(*f.p("representation"), "representation", fitted=False, none=True)
    kernel = _kernel_param(*f.p("kernel"))
    _check_solver_params(f)
    _sigma(*f.p("sigma"), none=True)
    _number(*f.p("lam"), lo=0.0, none=True)
    _nested(*f.p("metric"), "metric", fitted=False, none=True)
    _boolean(*f.p("prefit_metric"))
    _boolean(*f.p("center"))
    unit, where = f.p("energy_unit")
    _text(unit, where, none=True, max_len=256)
    if "baseline" in f.params:  # format 2 files written before the baseline existed have none
        _choice(*f.p("baseline"), ("auto", "elements", "mean"), none=True)
    if "n_sparse" in f.params:
        _integer(*f.p("n_sparse"), 1, none=True)
    if not f.is_fitted:
        return
    rep, rep_where = f.f("representation_")
    rep = _nested(rep, rep_where, "representation", fitted=True)
    # fit clones the templates: the fitted parts carry exactly the parameters of the model's own
    template = f.params["representation"]
    if template is None:
        from .representations.coulomb import CoulombMatrix

        template = CoulombMatrix()
    if type(rep) is not type(template) or not _same(rep.get_params(deep=False), template.get_params(deep=False)):
        raise _fail(f"{rep_where}.params", "differ from the model's representation parameters")
    from .derivative_krr import DerivativeKRR

    krr_node, _ = f.f("krr_")
    derivative = isinstance(krr_node, DerivativeKRR)  # force targets or a local kernel (molkrr.derivative_krr)
    if getattr(rep, "form", "global") != "global" and not derivative:
        raise _fail(rep_where, "MolecularKRR needs one feature row per molecule (a global representation)")
    if "targets" in f.params:
        _choice(*f.p("targets"), ("energy", "forces", "energy+forces"))
    if "lam_forces" in f.params:
        _number(*f.p("lam_forces"), lo=0.0, none=True)
    lam_f, where = f.f("lam_forces_", required=False)
    if lam_f is not _ABSENT:
        _number(lam_f, where, lo=0.0, none=True)
    metric, metric_where = f.f("metric_")
    metric = _nested(metric, metric_where, "metric", fitted=True, none=True)
    template = f.params["metric"]
    if (metric is None) != (template is None) or (
        metric is not None
        and (type(metric) is not type(template) or not _same(metric.get_params(deep=False), template.get_params(deep=False)))
    ):
        raise _fail(metric_where, "differs from the model's metric parameter")
    krr, krr_where = f.f("krr_")
    sigma = _sigma(*f.f("sigma_"), none=True)
    lam = _number(*f.f("lam_"), lo=0.0)
    _check_baseline_fields(f)
    if derivative:
        if krr.X_.shape[1] != int(rep.n_features_):
            raise _fail(f"{krr_where}.fitted.X_", f"has {krr.X_.shape[1]} columns but the representation gives "
                                                  f"{int(rep.n_features_)} features")
        f.fitted["elements_"] = _elements(*f.f("elements_")).astype(np.int64)
        return
    krr = _nested(krr, krr_where, "krr", fitted=True)
    if krr.kernel != kernel or (None if krr.sigma is None else float(krr.sigma)) != sigma or float(krr.lam) != lam or krr.center != f.params["center"]:
        raise _fail(krr_where, f"kernel {krr.kernel!r}, sigma {krr.sigma!r}, lam {krr.lam!r} differ from the model's "
                               f"{kernel!r}, sigma_ {sigma!r}, lam_ {lam!r}")
    if krr.alpha_.ndim != 1:
        raise _fail(f"{krr_where}.fitted.alpha_", "must be 1-D (one energy per molecule)")
    d_rep = int(rep.n_features_)
    d_krr = krr.X_fit_.shape[1]
    if metric is None:
        if d_krr != d_rep:
            raise _fail(f"{krr_where}.fitted.X_fit_", f"has {d_krr} columns but the representation gives {d_rep} features")
    else:
        A = metric.components_
        if A.shape != (d_krr, d_rep):
            raise _fail(f"{f.where}.fitted.metric_.fitted.components_",
                        f"has shape {A.shape}, expected ({d_krr}, {d_rep}) (KRR features × representation features)")
    elements, where = f.f("elements_")
    elements = _elements(elements, where)
    from .applicability import supported_elements

    supported = supported_elements(rep)
    if supported is not None:
        outside = np.setdiff1d(elements, supported)
        if outside.size:
            raise _fail(where, f"lists element {int(outside[0])}, which the {type(rep).__name__} does not support")
    f.fitted["elements_"] = elements.astype(np.int64)


# ----------------------------------------------------------------------------- the registry
#: The classes a model file may name: {name: (module, attribute, validator)}. One line per class.
_REGISTRY: dict[str, tuple[str, str, Callable[[_Fields], None]]] = {
    "MolecularKRR": ("molkrr.model", "MolecularKRR", _check_molecular_krr),
    "KernelRidge": ("molkrr.krr", "KernelRidge", _check_kernel_ridge),
    "CoulombMatrix": ("molkrr.representations.coulomb", "CoulombMatrix", _check_coulomb),
    "BagOfBonds": ("molkrr.representations.bob", "BagOfBonds", _check_bag_of_bonds),
    "FCHL19": ("molkrr.representations.fchl19", "FCHL19", _check_fchl19),
    "MLKRR": ("molkrr.metric.mlkrr", "MLKRR", _check_metric_learner),
    "MLKR": ("molkrr.metric.mlkr", "MLKR", _check_metric_learner),
    "DerivativeKRR": ("molkrr.derivative_krr", "DerivativeKRR", _check_derivative_krr),
}


def _register_kernels() -> None:
    """Every registered kernel class may appear in a model file (as a kernel parameter)."""
    from .kernels import kernel_classes

    for cls in kernel_classes():
        _REGISTRY.setdefault(cls.__name__, (cls.__module__, cls.__name__, _check_kernel))


def register_class(name: str, module: str, attribute: str, validator: Callable[[_Fields], None]) -> None:
    """Allow class ``module.attribute`` in model files under ``name``, checked on load by ``validator``."""
    _REGISTRY[name] = (module, attribute, validator)


def register_model_class(cls: type, validator: Callable[[_Fields], None] | None = None) -> type:
    """Allow model files to name ``cls`` (usable as a class decorator); ``validator`` checks its fields
    on load (default: the generic check, which only accepts the fitted attributes as they are).
    Raises ValueError if another class of the same name is registered already."""
    name = cls.__name__
    known = _REGISTRY.get(name)
    if known is not None:
        other = _DIRECT.get(name) or getattr(importlib.import_module(known[0]), known[1], None)
        if other is not cls:
            raise ValueError(f"a model class called {name} is already registered ({known[0]})")
        return cls
    _REGISTRY[name] = (cls.__module__, cls.__qualname__, validator or _check_generic)
    _DIRECT[name] = cls
    return cls


#: Classes registered as objects (not importable by module path, e.g. defined in a test).
_DIRECT: dict[str, type] = {}


def _check_generic(f: _Fields) -> None:
    """Classes without their own validator: the common checks of the decoder only."""
    for key in f.fitted:
        f.f(key)


def allowed_classes() -> dict[str, type]:
    """The classes a model file may name: molkrr's estimators, nothing else."""
    from .representations.registry import representation_classes

    _register_kernels()
    classes: dict[str, type] = dict(representation_classes())  # those without a validator of their own too
    for name, (module, attr, _) in _REGISTRY.items():
        classes[name] = _DIRECT[name] if name in _DIRECT else getattr(importlib.import_module(module), attr)
    return classes


# ----------------------------------------------------------------------------- helpers
def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB"
