"""Labelled frames with their units: read any supported file, write extended XYZ, split MD data in blocks.

Files
-----
- sGDML / MD17 ``.npz`` (:mod:`.sgdml`): the energy unit is ``e_unit`` when the file has one.
- Extended XYZ (``.extxyz``, ``.xyz``, optionally ``.gz``): the energy unit is the comment line's
  ``energy_unit=`` (written by :func:`write_frames` and ``molkrr md``); forces must then be in
  energy_unit/Å (``forces_unit=``, if present, is checked).

Positions are always Å. Energies come back in the unit asked for (``unit=``): converted from the
file's unit when it states one (through :func:`molkrr.units.ev_per_unit`), taken as that unit
when it does not. A file with energies but neither a recorded unit nor ``unit=`` is refused: a silent
guess (kcal/mol? eV? Hartree?) would make every force and every MAE wrong by a constant factor.

Splits
------
Consecutive MD frames are correlated (a few fs apart they are nearly the same geometry): a random
split puts near-copies of test frames into training and reports errors that are far too good.
:func:`block_split` trains on an early block of the trajectory and validates / tests on later blocks.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from ..errors import DatasetError, InvalidInputError, SplitSizeError
from ..molecules import Molecules
from ..units import ev_per_unit

__all__ = ["MissingUnitError", "block_split", "file_energy_unit", "read_frames", "write_frames"]

class MissingUnitError(InvalidInputError):
    """A file with energies records no energy unit, and none was given."""


#: Suffixes read as sGDML ``.npz``; anything else goes through ase's extended-XYZ reader.
NPZ_SUFFIXES = (".npz",)
_DECOMPRESS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
#: Compressing writers on an open binary file; gzip records the name without ``.gz``, as ``gzip FILE`` would.
_COMPRESS = {
    ".gz": lambda fh, p: gzip.GzipFile(filename=p.name, mode="wb", fileobj=fh),
    ".bz2": lambda fh, p: bz2.BZ2File(fh, mode="wb"),
    ".xz": lambda fh, p: lzma.LZMAFile(fh, mode="wb"),
}


def file_energy_unit(path: str | os.PathLike) -> str | None:
    """The energy unit a file records (sGDML ``e_unit``, extXYZ ``energy_unit=``), None if it records none."""
    p = Path(os.fspath(path))
    if p.suffix.lower() in NPZ_SUFFIXES:
        from .sgdml import read_sgdml_units

        return read_sgdml_units(p)[0]
    info = _first_frame_info(p)
    unit = info.get("energy_unit")
    return None if unit is None else str(unit)


def read_frames(
    path: str | os.PathLike,
    *,
    unit: str | None = None,
    energy_key: str = "energy",
    validate: bool = True,
    require_unit: bool = True,
    require_energies: bool = False,
) -> tuple[Molecules, str | None]:
    """Read labelled frames and their energy unit.

    Parameters
    ----------
    path : str or PathLike
        sGDML/MD17 ``.npz`` or (extended) XYZ file.
    unit : str, optional
        The energy unit wanted. If the file records a unit, energies (and forces) are converted to
        ``unit``; if it records none, the file's energies are taken to be in ``unit``.
    energy_key : str
        extXYZ: where each frame's energy is (see :func:`molkrr.datasets.read_xyz`).
    validate : bool
        Validate the molecules.
    require_unit : bool
        Refuse energies of unknown unit (the default); False returns them as they are, with unit None.
    require_energies : bool
        Every frame must carry an energy (an error names the first that does not).

    Returns
    -------
    (molecules, unit)
        Molecules (positions Å, energies in ``unit``, forces in ``unit``/Å, either None if absent) and
        the energy unit (None only when the file has no energies and none was given).

    Raises
    ------
    MissingUnitError (an InvalidInputError)
        The file has energies but no recorded unit and ``unit`` is None.
    InvalidInputError
        Units that cannot be
        converted into each other; a ``forces_unit`` that is not the energy unit per Å.
    DatasetError, ShapeMismatchError, MoleculeError
        From the readers.
    """
    from .io import read_xyz
    from .sgdml import read_sgdml_npz

    p = Path(os.fspath(path))
    if p.suffix.lower() in NPZ_SUFFIXES:
        mols = read_sgdml_npz(p, validate=validate)
        if require_energies and mols.energies is None:
            raise DatasetError(f"{p}: the data set has no energies ('E')")
    elif p.suffix.lower() in _DECOMPRESS and p.is_file():
        # ase reads through its compression wrappers some 30x slower than from a plain file
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / p.stem
            try:
                with _DECOMPRESS[p.suffix.lower()](p, "rb") as src, open(plain, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError, ValueError) as exc:
                raise DatasetError(f"cannot read {p}: {' '.join(str(exc).split())[:200]}") from exc
            mols = read_xyz(plain, energy_key=energy_key, validate=validate, require_energies=require_energies)
        _check_forces_unit(p, _first_frame_info(p))
    else:
        mols = read_xyz(p, energy_key=energy_key, validate=validate, require_energies=require_energies)
        _check_forces_unit(p, _first_frame_info(p))
    file_unit = file_energy_unit(p)
    if file_unit is None:
        if unit is None and mols.energies is not None and require_unit:
            raise MissingUnitError(
                f"{p} does not record the unit of its energies: state it with unit= (the CLI's --unit), "
                "e.g. 'eV', 'kcal/mol' (MD17 files), 'Ha'"
            )
        return mols, unit
    if unit is None or unit == file_unit:
        return mols, file_unit
    factor = _conversion(file_unit, unit, p)
    if factor != 1.0:
        mols = mols.with_labels(
            None if mols.energies is None else mols.energies * factor,
            None if mols.forces is None else mols.forces * factor,
        )
    return mols, unit


def write_frames(
    path: str | os.PathLike,
    molecules: Any,
    *,
    energy_unit: str | None,
    energies: Any = None,
    forces: Any = None,
    info: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
) -> None:
    """Write frames as extended XYZ with their units recorded (``.gz``/``.bz2``/``.xz`` compress).

    Parameters
    ----------
    path : str or PathLike
        Destination, replaced atomically (:func:`molkrr._atomic.atomic_write`).
    molecules : Molecules, ase.Atoms or list of ase.Atoms
        Positions in Å; their own energies/forces are written unless given here.
    energy_unit : str or None
        Recorded as ``energy_unit=`` (and ``forces_unit=<unit>/Ang``, ``length_unit=Ang``); None records none.
    energies : (n_molecules,) float, optional
    forces : (n_total_atoms, 3) float or one (n_atoms, 3) array per molecule, optional
    info : mapping or one mapping per frame, optional
        Extra comment-line keys (scalars or strings).
    """
    import ase.io

    from .io import labelled

    images = labelled(molecules, energies, forces).to_ase()
    if info is None or isinstance(info, Mapping):
        info = [info or {}] * len(images)
    if len(info) != len(images):
        raise InvalidInputError(f"{len(info)} info mappings for {len(images)} frames")
    units = {} if energy_unit is None else {"energy_unit": energy_unit, "forces_unit": f"{energy_unit}/Ang", "length_unit": "Ang"}
    for a, extra in zip(images, info):
        a.info.update(extra)
        a.info.update(units)
    p = Path(os.fspath(path))
    compress = _COMPRESS.get(p.suffix.lower())

    def write(fh):
        if compress is None:
            ase.io.write(fh, images, format="extxyz", write_results=True)
            return
        with compress(fh, p) as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
            ase.io.write(text, images, format="extxyz", write_results=True)

    try:
        atomic_write(p, write, mode="w" if compress is None else "wb")
    except OSError as exc:
        raise DatasetError(f"cannot write {p}: {' '.join(str(exc).split())[:200]}") from exc


def block_split(
    n_frames: int,
    n_train: int | None = None,
    n_valid: int = 0,
    n_test: int | None = None,
    *,
    train_block: float = 2 / 3,
    valid_block: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame indices for training, validation and test from consecutive blocks of a trajectory.

    Frames ``[0, a)`` form the training block, ``[a, b)`` the validation block and ``[b, n_frames)``
    the test block, with ``a = round(train_block·n_frames)`` and ``b = a + round(valid_block·n_frames)``.
    ``valid_block`` defaults to 0 when ``n_valid == 0`` (no validation) and to a third of what follows the training
    block otherwise. Within a block, the requested number of frames is taken evenly spaced (the
    whole block when the number is None), so the picks are as decorrelated as the block allows.

    Parameters
    ----------
    n_frames : int
        Frames in the trajectory, in time order.
    n_train, n_valid, n_test : int or None
        Frames wanted from each block (None: all of it; ``n_valid=0``: no validation block).
    train_block, valid_block : float
        Fractions of the trajectory in the training and validation blocks.

    Returns
    -------
    (train, valid, test) : three sorted int arrays of frame indices (valid may be empty).

    Raises
    ------
    InvalidInputError
        Bad fractions, an empty training or test block, or (:class:`~molkrr.errors.SplitSizeError`) more
        frames asked from a block than it holds.

    Examples
    --------
    The protocol of issue 10 (training frames from the first 2,000 of 3,000, 500 test frames from the last 1,000):

    >>> train, valid, test = block_split(3000, 200, 0, 500)
    >>> int(train.max()) < 2000 <= int(test.min())
    True
    """
    n_frames = int(n_frames)
    if not 0 < train_block < 1:
        raise InvalidInputError(f"train_block must lie in (0, 1), got {train_block}")
    if valid_block is None:
        valid_block = 0.0 if n_valid == 0 else (1 - train_block) / 3
    if not (0 <= valid_block and train_block + valid_block < 1):
        raise InvalidInputError(f"valid_block must be ≥ 0 and leave room for a test block, got {valid_block}")
    a = int(round(train_block * n_frames))
    b = a + int(round(valid_block * n_frames))
    if n_valid != 0 and b == a:
        raise InvalidInputError(f"{n_valid} validation frames asked for, but the validation block is empty")
    if not 0 < a < n_frames:
        raise InvalidInputError(f"{n_frames} frames are too few for a training and a test block")
    if b >= n_frames:
        raise InvalidInputError(f"{n_frames} frames leave no test block after the training and validation blocks")
    return _evenly(0, a, n_train, "training"), _evenly(a, b, n_valid, "validation"), _evenly(b, n_frames, n_test, "test")


# ---------------------------------------------------------------------------------------------- helpers
def _evenly(start: int, stop: int, k: int | None, name: str) -> np.ndarray:
    size = stop - start
    if k is None:
        return np.arange(start, stop)
    if k < 0:
        raise InvalidInputError(f"{k} {name} frames asked for: the count must be ≥ 0")
    if k > size:
        raise SplitSizeError(f"{k} {name} frames asked for, but the {name} block holds {size} (frames {start}..{stop - 1})")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.round(np.linspace(start, stop - 1, k)).astype(np.int64)  # spacing ≥ 1: distinct indices


def _first_frame_info(p: Path) -> dict:
    """The comment-line keys of the first frame (reads only that frame's lines)."""
    import io

    import ase.io

    if not p.is_file():
        raise DatasetError(f"cannot read {p}: no such file")
    try:
        from .io import MAX_ATOMS_PER_FRAME

        with _DECOMPRESS.get(p.suffix.lower(), open)(p, "rt") as fh:
            first = fh.readline()
            try:
                count = int(first.split()[0])
            except (ValueError, IndexError):  # not a count line: the reader proper reports it
                return {}
            if not 0 < count <= MAX_ATOMS_PER_FRAME:  # the reader proper reports it, with its bound
                return {}
            lines = [first]
            for _ in range(count + 1):
                line = fh.readline()
                if not line:  # a truncated frame: the reader proper reports it
                    return {}
                lines.append(line)
        return dict(ase.io.read(io.StringIO("".join(lines)), index=0, format="extxyz").info)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {p}: {' '.join(str(exc).split())[:200]}") from exc
    except Exception:  # a malformed first frame: read_xyz reports it with the frame and the line
        return {}


def _conversion(from_unit: str, to_unit: str, p: Path) -> float:
    try:
        return ev_per_unit(from_unit) / ev_per_unit(to_unit)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{p}: cannot convert its energies from {from_unit!r} to {to_unit!r}: {exc}") from None


def _check_forces_unit(p: Path, info: Mapping[str, Any]) -> None:
    from .sgdml import LENGTH_UNITS

    e_unit, f_unit = info.get("energy_unit"), info.get("forces_unit")
    if f_unit is None:
        return
    head, _, length = str(f_unit).rpartition("/")
    if e_unit is None or head != str(e_unit) or LENGTH_UNITS.get(length.strip().lower()) != 1.0:
        raise InvalidInputError(
            f"{p}: forces_unit={f_unit!r} is not the energy unit ({e_unit!r}) per Å; molkrr reads forces in energy unit/Å"
        )
