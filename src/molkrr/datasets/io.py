"""Reading and writing molecules: XYZ / extended XYZ through ``ase.io`` (sGDML ``.npz``: :mod:`.sgdml`).

Extended XYZ keeps labels: the energy of each frame goes to the comment line (``energy=...``) and the
forces to a per-atom column, so ``ase.io.read(path).get_potential_energy()`` gives them back.
Units are whatever the file carries (molkrr does not convert): coordinates are taken as Å.
ase writes per-atom columns (positions, forces) with 8 decimals (``%16.8f``): a round trip is exact to
5e-9 Å (and 5e-9 force units); energies on the comment line keep full precision.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from ..errors import DatasetError, InvalidInputError, MolkrrError, ShapeMismatchError, UnknownElementError
from ..molecules import MAX_ATOMIC_NUMBER, Molecules, as_molecules

__all__ = ["MAX_ATOMS_PER_FRAME", "read_xyz", "write_xyz"]  # sGDML .npz: molkrr.datasets.sgdml

#: Largest atom count an XYZ frame may declare. Larger molecules are far outside what molkrr's
#: representations are meant for, and a count line is checked against it (and against the lines the
#: file holds) before ase allocates anything for the frame.
MAX_ATOMS_PER_FRAME = 100_000


def read_xyz(
    path: str | os.PathLike,
    index: int | str | slice = ":",
    energy_key: str = "energy",
    *,
    forces_key: str = "forces",
    format: str | None = "extxyz",
    validate: bool = True,
    require_energies: bool = False,
) -> Molecules:
    """Read an XYZ or extended-XYZ file into :class:`Molecules`.

    Parameters
    ----------
    path : str or PathLike
        The file.
    index : int, str or slice
        Which frames, as in ``ase.io.read`` (``":"`` all, ``0`` the first, ``"-10:"`` the last ten).
    energy_key : str
        Where the energy of a frame is: ``"energy"`` (the calculator's energy, as written by ``write_xyz``)
        or any other key of the comment line (``atoms.info``). Energies are kept only if every frame has one.
    forces_key : str
        Per-atom array with the forces; kept only if every frame has it.
    format : str or None
        ``ase.io`` format name; ``None`` lets ase guess from the file name.
    validate : bool
        Validate the molecules (finite coordinates, known elements, no coincident atoms).
    require_energies : bool
        Every frame must carry an energy (for training): a frame without one is an error naming it.

    Before ase reads an XYZ/extXYZ file, its frames are walked once: every count line must be a
    whole number from 1 to :data:`MAX_ATOMS_PER_FRAME` that the rest of the file can hold, and every
    atom line must start with a known element (``unknown element 'Xx' in frame 3`` otherwise).

    Returns
    -------
    Molecules with ``energies`` (n_molecules,) and ``forces`` (n_total_atoms, 3) when present, else None.

    Raises
    ------
    DatasetError
        Missing, empty, unreadable or malformed file (one line naming the file).
    MoleculeError, ShapeMismatchError
        The content parses but is not a valid set of molecules (NaN coordinates, ...).
    """
    import ase.io

    p = Path(os.fspath(path))
    if not p.is_file():
        raise DatasetError(f"cannot read {p}: no such file")
    if p.stat().st_size == 0:
        raise DatasetError(f"cannot read {p}: the file is empty")
    fmt = format or {".xyz": "xyz", ".extxyz": "extxyz"}.get(p.suffix.lower())
    if fmt in ("xyz", "extxyz"):
        _prescan_xyz(p, check_elements=validate)
    try:
        frames = ase.io.read(p, index=index, format=format)
    except Exception as exc:  # ase raises many types (XYZError, ValueError, IndexError, StopIteration, ...)
        raise DatasetError(f"cannot read {p}: {_one_line(exc)}") from exc
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise DatasetError(f"cannot read {p}: no frames selected by index {index!r}")
    energies = [_frame_energy(a, energy_key, p, i) for i, a in enumerate(frames)]
    forces = [_frame_forces(a, forces_key) for a in frames]
    missing = [i for i, e in enumerate(energies) if e is None]
    if missing and require_energies:
        raise DatasetError(
            f"cannot read {p}: frame {missing[0]} has no {energy_key!r} value "
            f"({len(frames) - len(missing)} of {len(frames)} frames have one)"
        )
    try:
        return Molecules.from_list(
            [a.numbers for a in frames],
            [a.positions for a in frames],
            energies if all(e is not None for e in energies) else None,
            forces if all(f is not None for f in forces) else None,
            validate=validate,
        )
    except MolkrrError as exc:  # the content is not a valid set of molecules: same error type, file named
        raise type(exc)(f"{p}: {exc}") from exc


def write_xyz(
    path: str | os.PathLike,
    molecules: Any,
    energies: Any = None,
    forces: Any = None,
) -> None:
    """Write molecules to an extended-XYZ file (atomically: a temporary file, then a rename).

    Parameters
    ----------
    path : str or PathLike
        Destination; overwritten.
    molecules : Molecules, ase.Atoms or iterable of ase.Atoms
        What to write. Their own ``energies``/``forces`` are written unless given here.
    energies : (n_molecules,) float, optional
        One energy per molecule (``energy=`` on each comment line).
    forces : (n_total_atoms, 3) float or one (n_atoms, 3) array per molecule, optional
        Per-atom forces (a ``forces`` column).

    Raises
    ------
    ShapeMismatchError
        ``energies`` or ``forces`` do not match the molecules.
    DatasetError
        The file cannot be written.
    """
    import ase.io

    images = labelled(molecules, energies, forces).to_ase()
    p = Path(os.fspath(path))
    try:
        atomic_write(p, lambda fh: ase.io.write(fh, images, format="extxyz"), mode="w")
    except OSError as exc:
        raise DatasetError(f"cannot write {p}: {_one_line(exc)}") from exc


# ---------------------------------------------------------------------------------------------- helpers
def labelled(molecules: Any, energies: Any = None, forces: Any = None) -> Molecules:
    """``molecules`` as Molecules with these energies/forces in place of their own (where given); forces
    (n_total_atoms, 3) or one (n_atoms, 3) array per molecule."""
    mols = as_molecules(molecules)
    if energies is None and forces is None:
        return mols
    return mols.with_labels(
        mols.energies if energies is None else energies,
        mols.forces if forces is None else _flat_forces(forces),
    )


def _frame_energy(atoms: Any, key: str, path: Path, frame: int) -> float | None:
    """The energy of one frame, None if it has none; InvalidInputError naming the frame if it is not a finite number."""
    value = None
    if key == "energy" and atoms.calc is not None:
        value = getattr(atoms.calc, "results", {}).get("energy")
    if value is None:
        value = atoms.info.get(key)
    if value is None:
        return None
    try:
        e = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{path}: frame {frame}: {key}={_short(value)} is not a number") from None
    if not np.isfinite(e):
        raise InvalidInputError(f"{path}: frame {frame}: {key} is {e}")
    return e


def _prescan_xyz(path: Path, check_elements: bool = True) -> None:
    """Walk the frames of an XYZ file: count lines bounded and backed by lines, atom lines starting with an element."""
    from ase.data import atomic_numbers

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"cannot read {path}: not a text file ({_one_line(exc)})") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {_one_line(exc)}") from None
    lines = text.splitlines()
    n_lines = len(lines)
    while n_lines and not lines[n_lines - 1].strip():
        n_lines -= 1
    known = {s.lower() for s in atomic_numbers if s != "X"}
    i, frame = 0, 0
    while i < n_lines:
        head = lines[i].split()
        where = f"{path}: frame {frame} (line {i + 1})"
        try:
            n = int(head[0]) if len(head) == 1 else int("x")
        except (ValueError, IndexError):
            raise DatasetError(f"cannot read {where}: expected a count line with the number of atoms, got {_short(lines[i])}") from None
        if not 1 <= n <= MAX_ATOMS_PER_FRAME:
            raise DatasetError(f"cannot read {where}: the count line declares {n} atoms (allowed: 1..{MAX_ATOMS_PER_FRAME})")
        if i + 2 + n > n_lines:
            raise DatasetError(
                f"cannot read {where}: the count line declares {n} atoms but only {max(n_lines - i - 2, 0)} lines follow"
            )
        comment = lines[i + 1]
        species_first = check_elements and "properties=" not in comment.lower() or re.search(r"properties=[\"']?species:s:1", comment.lower())
        for k in range(i + 2, i + 2 + n) if species_first else ():
            token = lines[k].split(None, 1)
            symbol = token[0] if token else ""
            if symbol.lower() in known:
                continue
            if symbol.lstrip("+-").isdigit() and 1 <= int(symbol) <= MAX_ATOMIC_NUMBER:
                continue
            raise UnknownElementError(f"{path}: unknown element {_short(symbol)} in frame {frame} (line {k + 1})")
        i += 2 + n
        frame += 1
    if frame == 0:
        raise DatasetError(f"cannot read {path}: no frames (the file holds only blank lines)")


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _frame_forces(atoms: Any, key: str) -> np.ndarray | None:
    if key == "forces" and atoms.calc is not None:
        f = getattr(atoms.calc, "results", {}).get("forces")
        if f is not None:
            return np.asarray(f, dtype=np.float64)
    f = atoms.arrays.get(key)
    return None if f is None else np.asarray(f, dtype=np.float64)


def _flat_forces(forces: Any) -> np.ndarray:
    if isinstance(forces, np.ndarray):
        return np.asarray(forces, dtype=np.float64)
    if isinstance(forces, Sequence) and len(forces) and np.ndim(forces[0]) == 2:
        return np.concatenate([np.asarray(f, dtype=np.float64) for f in forces])
    return np.asarray(forces, dtype=np.float64)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
