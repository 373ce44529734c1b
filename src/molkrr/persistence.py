"""Safe model files: one ``.npz`` holding numpy arrays plus a JSON header — never pickle.

The npz member ``__header__`` is the UTF-8 JSON header (a uint8 array)::

    {"format": "molkrr-model", "format_version": 3, "molkrr_version": "...",
     "model": {"class": "MolecularKRR", "schema": 1, "params": {...}, "fitted": {...}}}

A node holds its class's ``get_params(deep=False)``, its fitted attributes (names ending in ``_``) and the
version of the class's saved fields (``schema``); arrays are ``{"__array__": "a3"}`` references to npz
members, nested estimators are nodes. Format 2 (no ``schema``) is still read.

This module is the container and knows no estimator: :func:`load_model` bounds every archive member
before reading it (size, compression, ``.npy`` header), checks the header (format, version, depth),
allows only the classes of :func:`allowed_classes` (the representation and kernel registries and the
estimators of :func:`register_model_class`) and checks each node, before anything is built, by the
schema its class declares (``model_file_schema()``, :mod:`molkrr.schema`). Every failure is one
:class:`~molkrr.errors.ModelFileError` naming the file and the field (``model.fitted.krr_.fitted.alpha_``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._atomic import atomic_write
from ._version import __version__
from .errors import InputTypeError, InvalidInputError, ModelFileError
from .schema import Node, one_line, schema_of, show

FORMAT = "molkrr-model"
#: 3: each node records its class's schema version (``schema``). 2: MolecularKRR records the elements it was
#: trained on (``elements_``); version 1 files lack them and are refused (retrain, or see
#: :func:`molkrr.applicability.allow_elements`).
FORMAT_VERSION = 3
#: The format versions :func:`load_model` reads (a node of a format 2 file is read as schema version 0).
READS = (2, 3)
HEADER_KEY = "__header__"


def _env_bytes(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:  # an unreadable setting keeps the default rather than breaking the import
        return default


#: Largest total (decompressed) size of the arrays in one model file, in bytes. A model of 130,000 training
#: molecules with 720 features holds 0.75 GB; the environment variable ``MOLKRR_MAX_MODEL_BYTES`` changes it.
MAX_MODEL_BYTES = _env_bytes("MOLKRR_MAX_MODEL_BYTES", 32 << 30)
#: Largest JSON header (bytes), number of members in a model file, and nesting of estimators and containers.
MAX_HEADER_BYTES = 16 << 20
MAX_MEMBERS = 4096
MAX_DEPTH = 32
#: Deflate cannot compress better than about 1032:1; a member claiming more is forged.
_DEFLATE_MAX_RATIO = 1100
_READ_CHUNK = 16 << 20


# ----------------------------------------------------------------------------- save
def save_model(estimator: Any, path: str | os.PathLike) -> None:
    """Write a fitted molkrr estimator to ``path`` atomically (temporary file, then rename).

    Raises InputTypeError (a TypeError) for an unfitted estimator or an object that is not a molkrr estimator,
    and InvalidInputError for a model that :func:`load_model` would refuse (e.g. NaN coefficients).
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)  # TypeError itself for objects that are not estimators
    except NotFittedError:
        raise InputTypeError(f"cannot save an unfitted {type(estimator).__name__}: call fit first") from None

    arrays: dict[str, np.ndarray] = {}
    model = _encode_estimator(estimator, arrays)
    text = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "molkrr_version": __version__,
                       "model": model}, indent=1)
    try:  # never write a file that load_model would refuse (NaN coefficients, inconsistent sizes, ...)
        _Decoder(arrays, FORMAT_VERSION).estimator(json.loads(text)["model"], "model", depth=0)
    except ModelFileError as exc:
        raise InvalidInputError(f"cannot save this {type(estimator).__name__}: {exc}") from None
    arrays[HEADER_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    atomic_write(os.fspath(path), lambda fh: np.savez(fh, **arrays))


def _encode_estimator(est: Any, arrays: dict[str, np.ndarray]) -> dict:
    cls = type(est).__name__
    if allowed_classes().get(cls) is not type(est):
        raise InputTypeError(f"cannot save a {type(est).__module__}.{cls}: only molkrr estimators are saved")
    params = {k: _encode_value(v, arrays, f"{cls}.{k}") for k, v in est.get_params(deep=False).items()}
    fitted = {k: _encode_value(v, arrays, f"{cls}.{k}") for k, v in vars(est).items() if _is_fitted_name(k)}
    return {"class": cls, "schema": schema_of(type(est)).version, "params": params, "fitted": fitted}


def _encode_value(v: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    from sklearn.base import BaseEstimator

    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float, np.integer, np.floating)):
        return int(v) if isinstance(v, (int, np.integer)) else float(v)
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
        items = [_encode_value(x, arrays, where) for x in v]
        return {"__tuple__": items} if isinstance(v, tuple) else items
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise InputTypeError(f"{where}: dict keys must be strings to be saved")
        return {"__dict__": {k: _encode_value(x, arrays, where) for k, x in v.items()}}
    if callable(v):
        return None  # callbacks are behaviour, not data: they are not saved
    raise InputTypeError(f"{where}: cannot save a value of type {type(v).__name__}")


# ----------------------------------------------------------------------------- load
def load_model(path: str | os.PathLike, kind: type | None = None) -> Any:
    """Read and validate a model written by :func:`save_model` (format 3, or format 2 of earlier molkrr).

    kind : a class (e.g. :class:`molkrr.MolecularKRR`) the file must hold; None accepts any molkrr estimator.

    Raises :class:`~molkrr.errors.ModelFileError` (naming the file and the field) for any file that is missing,
    truncated, corrupt, foreign, of another format version, or whose content is not a consistent molkrr model
    (or not of ``kind``); nothing is built from a file that fails.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    try:
        header, arrays = _read_archive(path)
        if "model" not in header:
            raise ModelFileError("the header has no 'model' entry")
        decoder = _Decoder(arrays, header["format_version"])
        model = decoder.estimator(header["model"], "model", depth=0)
        unused = sorted(set(arrays) - decoder.used)
        if unused:
            raise ModelFileError(f"member {unused[0]!r} is not referenced by the header")
        if kind is not None and not isinstance(model, kind):
            raise ModelFileError(f"the file holds a {type(model).__name__}, not a {kind.__name__}")
        return model
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {one_line(exc, 400)}") from None
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
        raise ModelFileError(f"not a molkrr model file ({kind}: {one_line(exc)})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ModelFileError(f"{len(infos)} members, more than the {MAX_MEMBERS} a model file may hold")
        if len({i.filename for i in infos}) != len(infos):
            raise ModelFileError("the archive names a member twice")
        budget = max_bytes
        for info in infos:
            _check_member(info, archive_size)
            budget -= info.file_size
            if budget < 0:
                raise ModelFileError(f"member {info.filename!r}: the arrays declare more than "
                                     f"{max_bytes / (1 << 30):.3g} GiB in all (the limit MOLKRR_MAX_MODEL_BYTES)")
        yield zf, infos


def read_npz_bounded(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read with the checks of model files (sizes bounded before reading,
    no pickle, no other compressions); raises ModelFileError. Used for data sets in npz form too."""
    path = os.fspath(path)
    with _checked_zip(path, MAX_MODEL_BYTES if max_bytes is None else max_bytes) as (zf, infos):
        return _read_arrays(zf, infos)


def _read_arrays(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> dict[str, np.ndarray]:
    arrays = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise ModelFileError(f"member {info.filename!r} is not a numpy array (.npy)")
        arrays[info.filename[:-4]] = _read_member(zf, info)
    return arrays


def _read_archive(path: str) -> tuple[Any, dict[str, np.ndarray]]:
    """(parsed JSON header, {member name: array}) with every size bounded before it is read."""
    with _checked_zip(path, MAX_MODEL_BYTES) as (zf, infos):
        header_info = next((i for i in infos if i.filename == HEADER_KEY + ".npy"), None)
        if header_info is None:
            raise ModelFileError(f"not a molkrr model file (no {HEADER_KEY} entry)")
        if header_info.file_size > MAX_HEADER_BYTES:
            raise ModelFileError(f"the header declares {header_info.file_size} bytes, more than {MAX_HEADER_BYTES}")
        raw = _read_member(zf, header_info)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ModelFileError(f"{HEADER_KEY} must be a 1-D uint8 array, got {raw.dtype} {raw.shape}")
        try:
            header = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise ModelFileError(f"the header is not JSON ({one_line(exc)})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            fmt = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise ModelFileError(f"not a molkrr model file (format {show(fmt)})")
        version = header.get("format_version")
        if type(version) is not int or version not in READS:
            retrain = "; version 1 files do not record the training elements: retrain the model" if version == 1 else ""
            raise ModelFileError(f"model file format version {show(version)} is not supported (this molkrr reads "
                                 f"{' and '.join(map(str, READS))}{retrain})")
        return header, _read_arrays(zf, [i for i in infos if i.filename != HEADER_KEY + ".npy"])


def _check_member(info: zipfile.ZipInfo, archive_size: int) -> None:
    name = info.filename
    if info.flag_bits & 0x1:
        raise ModelFileError(f"member {name!r} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise ModelFileError(f"member {name!r} is stored uncompressed but declares {info.file_size} bytes in "
                                 f"{info.compress_size}")
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
            raise ModelFileError(f"member {name!r} declares {info.file_size} bytes from {info.compress_size} "
                                 "compressed bytes, more than deflate can produce")
    else:
        raise ModelFileError(f"member {name!r} uses compression method {info.compress_type}; model files are "
                             "stored or deflated")
    if info.header_offset + info.compress_size > archive_size:
        raise ModelFileError(f"member {name!r} declares {info.compress_size} bytes past the end of the file (truncated?)")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """The array in one ``.npy`` member, read in chunks into an array allocated from its checked header."""
    name = info.filename
    try:
        with zf.open(info) as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise ValueError(f"unsupported .npy version {version}")
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh, max_header_size=10_000)
            except Exception as exc:  # noqa: BLE001 - numpy parses the header with tokenize/literal_eval: any failure means junk
                if "pickle" in str(exc) or "object" in str(exc).lower():
                    raise ModelFileError("the file contains pickled objects, which molkrr refuses to load") from None
                raise ModelFileError(f"member {name!r} is not a valid .npy array ({one_line(exc)})") from None
            if dtype.hasobject:
                raise ModelFileError("the file contains pickled objects, which molkrr refuses to load")
            if dtype.kind not in "biufcUS" or dtype.fields is not None or dtype.subdtype is not None:
                raise ModelFileError(f"member {name!r} has unsupported dtype {dtype}")
            if any(type(s) is not int or s < 0 for s in shape) or len(shape) > 32:
                raise ModelFileError(f"member {name!r} has an invalid shape {shape!r}")
            n_bytes = math.prod(shape) * dtype.itemsize
            header_len = fh.tell()
            if header_len + n_bytes != info.file_size:
                raise ModelFileError(f"member {name!r} declares shape {shape} of {dtype} ({n_bytes} bytes) but holds "
                                     f"{info.file_size - header_len} bytes")
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
        raise ModelFileError(f"member {name!r} is corrupt or truncated ({one_line(exc)})") from None
    arr = arr.T if fortran else arr
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


# ----------------------------------------------------------------------------- decoding
class _Decoder:
    """Builds the estimator tree from a header, each node checked by its class's schema before it is built."""

    def __init__(self, arrays: dict[str, np.ndarray], format_version: int) -> None:
        self.arrays, self.format_version, self.classes = arrays, format_version, allowed_classes()
        self.used: set[str] = set()

    def estimator(self, node: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ModelFileError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        keys = ("class", "schema", "params", "fitted") if self.format_version >= 3 else ("class", "params", "fitted")
        if not isinstance(node, dict) or set(node) != set(keys):
            got = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise ModelFileError(f"{where}: an estimator node needs exactly {', '.join(map(repr, keys[:-1]))} and "
                                 f"'fitted', got {got} (model file format version {self.format_version})")
        name = node["class"]
        if not isinstance(name, str) or name not in self.classes:
            raise ModelFileError(f"{where}: model file names class {show(name)}, which is not a molkrr estimator")
        cls = self.classes[name]
        schema = schema_of(cls)
        version = node.get("schema", 0)  # format 2: before per-class versions
        if self.format_version >= 3 and (type(version) is not int or not 1 <= version <= schema.version):
            newer = "; a file of a newer molkrr?" if type(version) is int and version > schema.version else ""
            raise ModelFileError(f"{where}: {name} schema version {show(version)} is not one this molkrr reads "
                                 f"(1..{schema.version}{newer})")
        if not isinstance(node["params"], dict) or not isinstance(node["fitted"], dict):
            raise ModelFileError(f"{where}: 'params' and 'fitted' must be JSON objects")
        defaults = schema.defaults(cls, node["params"], version, where)  # refuses unknown and missing parameters
        for k in node["fitted"]:
            if not (isinstance(k, str) and _is_fitted_name(k)):
                raise ModelFileError(f"{where}: model file sets a non-fitted attribute {show(k)} on {name}")
        params = {k: self.value(v, f"{where}.params.{k}", depth + 1) for k, v in node["params"].items()}
        fitted = {k: self.value(v, f"{where}.fitted.{k}", depth + 1) for k, v in node["fitted"].items()}
        return schema.build(Node(where, name, cls, {**defaults, **params}, fitted))

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
        raise ModelFileError(f"{where}: unsupported value {show(v)}")  # pragma: no cover - JSON has no others

    def array(self, key: Any, where: str) -> np.ndarray:
        if not isinstance(key, str) or key not in self.arrays:
            raise ModelFileError(f"{where}: refers to array {show(key)}, which the file does not hold")
        if key in self.used:
            raise ModelFileError(f"{where}: array {key!r} is referenced twice")
        self.used.add(key)
        arr = self.arrays[key]
        if arr.dtype.kind == "c":
            raise ModelFileError(f"{where}: complex array ({arr.dtype}); molkrr stores real numbers")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ModelFileError(f"{where}: contains NaN or infinity")
        return arr


def _is_fitted_name(key: str) -> bool:
    return key.endswith("_") and not key.startswith("_")


# ----------------------------------------------------------------------------- the allow-list
#: Estimators registered with :func:`register_model_class` (molkrr's own: by ``molkrr/__init__.py``).
_MODEL_CLASSES: dict[str, type] = {}


def register_model_class(cls: type) -> type:
    """Allow model files to name ``cls`` (usable as a class decorator), checked on load by the schema it declares
    (``cls.model_file_schema()``; none: :data:`molkrr.schema.GENERIC`). ValueError if another class has its name."""
    other = _MODEL_CLASSES.setdefault(cls.__name__, cls)
    if other is not cls:
        raise ValueError(f"a model class called {cls.__name__} is already registered ({other.__module__})")
    return cls


def allowed_classes() -> dict[str, type]:
    """The classes a model file may name: molkrr's registered estimators, representations and kernels."""
    from .kernels import kernel_classes
    from .representations.registry import representation_classes

    classes = {**_MODEL_CLASSES, **{cls.__name__: cls for cls in kernel_classes()}}
    return {**classes, **representation_classes()}  # a registry's class wins over a registered namesake
