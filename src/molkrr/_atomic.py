"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Model files, metric-learning checkpoints, the QM9 cache, written XYZ/extended XYZ files and sGDML
``.npz`` files all go through :func:`atomic_write`: the content is written to a temporary file in the
destination's folder, flushed and fsync'ed, then moved over the destination with :func:`os.replace`
(atomic on POSIX and Windows when both lie on one file system). On any failure the temporary file is
removed and the destination is left as it was. The temporary file is created with mode 0o666 less
the umask, so the result has the permissions of any file the user writes (not ``mkstemp``'s 0600).
"""

from __future__ import annotations

import os
import secrets
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
    fd, tmp = _create_temporary(directory, os.path.basename(path))
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


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
    """(descriptor, path) of a new, exclusively created ``.<name>.<random>.tmp`` in ``directory``, mode 0o666 & ~umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")
