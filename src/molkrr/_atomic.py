"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Model files, metric-learning checkpoints, the QM9 cache and written XYZ files all go through
:func:`atomic_write`: the content is written to a temporary file in the destination's folder,
flushed and fsync'ed, then moved over the destination with :func:`os.replace` (atomic on POSIX
and Windows when both lie on one file system). On any failure the temporary file is removed and
the destination is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[Any]], object], *, mode: str = "wb") -> None:
    """Write ``path`` atomically: ``writer(fh)`` fills an open temporary file, which then replaces ``path``.

    Parameters
    ----------
    path : str or path-like
        Destination file; its folder must exist.
    writer : callable
        Called once with the open temporary file (binary for ``mode="wb"``, text for ``mode="w"``).
    mode : {"wb", "w"}
        Binary (default) or text (UTF-8) file.

    Raises
    ------
    OSError
        The folder is not writable, the disk is full, ...; whatever ``writer`` raises is raised
        unchanged. In every case the destination is untouched and no temporary file is left behind.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
