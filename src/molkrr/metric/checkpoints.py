"""Checkpoints of metric learning: atomic npz files (arrays + JSON meta), resumable exactly."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .._atomic import atomic_write
from ..errors import ModelFileError

CHECKPOINT_VERSION = 1
CHECKPOINT_FORMAT = "molkrr-metric-checkpoint"


def write_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically write ``arrays`` + JSON ``meta`` to an npz file (tmp file, fsync, os.replace)."""
    payload = dict(arrays)
    payload["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(os.fspath(path), lambda fh: np.savez(fh, **payload))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and meta written by :func:`write_checkpoint`; :class:`ModelFileError` if unreadable."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ModelFileError(f"cannot read checkpoint {os.fspath(path)!r}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"{os.fspath(path)!r} is not a molkrr metric checkpoint of version {CHECKPOINT_VERSION}")
    return arrays, meta


def data_fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    """A short hash of the training data, to refuse resuming a checkpoint on other data."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(X.shape).encode())
    h.update(np.ascontiguousarray(X).view(np.uint8).reshape(-1))
    h.update(np.ascontiguousarray(y).view(np.uint8).reshape(-1))
    return h.hexdigest()
