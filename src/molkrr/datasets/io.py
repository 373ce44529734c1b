"""Reading and writing molecules: XYZ / extended XYZ through ``ase.io``, and sGDML ``.npz`` files.

Extended XYZ keeps labels: the energy of each frame goes to the comment line (``energy=...``) and the
forces to a per-atom column, so ``ase.io.read(path).get_potential_energy()`` gives them back.
Units are whatever the file carries (molkrr does not convert): coordinates are taken as Å.
ase writes per-atom columns (positions, forces) with 8 decimals (``%16.8f``): a round trip is exact to
5e-9 Å (and 5e-9 force units); energies on the comment line keep full precision.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from ..errors import DatasetError, MolkrrError, ShapeMismatchError
from ..molecules import Molecules, as_molecules

__all__ = ["read_sgdml_npz", "read_xyz", "write_xyz"]


def read_xyz(
    path: str | os.PathLike,
    index: int | str | slice = ":",
    energy_key: str = "energy",
    *,
    forces_key: str = "forces",
    format: str | None = "extxyz",
    validate: bool = True,
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
    try:
        frames = ase.io.read(p, index=index, format=format)
    except Exception as exc:  # ase raises many types (XYZError, ValueError, IndexError, StopIteration, ...)
        raise DatasetError(f"cannot read {p}: {_one_line(exc)}") from exc
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise DatasetError(f"cannot read {p}: no frames selected by index {index!r}")
    energies = [_frame_energy(a, energy_key) for a in frames]
    forces = [_frame_forces(a, forces_key) for a in frames]
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

    mols = as_molecules(molecules)
    if energies is not None or forces is not None:
        mols = mols.with_labels(
            mols.energies if energies is None else energies,
            mols.forces if forces is None else _flat_forces(forces),
        )
    images = mols.to_ase()
    p = Path(os.fspath(path))
    try:
        atomic_write(p, lambda fh: ase.io.write(fh, images, format="extxyz"), mode="w")
    except OSError as exc:
        raise DatasetError(f"cannot write {p}: {_one_line(exc)}") from exc


def read_sgdml_npz(path: str | os.PathLike, *, validate: bool = True) -> Molecules:
    """Read an sGDML data set (``.npz`` with ``z`` (n_atoms,), ``R`` (n_frames, n_atoms, 3), optional ``E``, ``F``).

    Units are the file's own (sGDML: Å, kcal/mol and kcal/mol/Å; see its ``r_unit``/``e_unit`` entries).
    """
    p = Path(os.fspath(path))
    if not p.is_file():
        raise DatasetError(f"cannot read {p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as data:
            if "z" not in data or "R" not in data:
                raise DatasetError(f"cannot read {p}: not an sGDML data set (needs arrays 'z' and 'R')")
            z = np.asarray(data["z"])
            R = np.asarray(data["R"], dtype=np.float64)
            E = np.asarray(data["E"], dtype=np.float64) if "E" in data else None
            F = np.asarray(data["F"], dtype=np.float64) if "F" in data else None
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot read {p}: {_one_line(exc)}") from exc
    if z.ndim != 1 or R.ndim != 3 or R.shape[1:] != (z.shape[0], 3) or R.shape[0] == 0:
        raise ShapeMismatchError(f"{p}: z of shape {z.shape} and R of shape {R.shape} do not describe frames of one molecule")
    n_frames, n_atoms = R.shape[:2]
    if E is not None:
        if E.size != n_frames:
            raise ShapeMismatchError(f"{p}: {E.size} energies for {n_frames} frames")
        E = E.reshape(-1)
    if F is not None and F.shape != R.shape:
        raise ShapeMismatchError(f"{p}: forces of shape {F.shape}, expected {R.shape}")
    return Molecules(
        np.tile(z, n_frames),
        R.reshape(-1, 3),
        np.arange(n_frames + 1) * n_atoms,
        E,
        None if F is None else F.reshape(-1, 3),
        validate=validate,
    )


# ---------------------------------------------------------------------------------------------- helpers
def _frame_energy(atoms: Any, key: str) -> float | None:
    if key == "energy" and atoms.calc is not None:
        e = getattr(atoms.calc, "results", {}).get("energy")
        if e is not None:
            return float(e)
    value = atoms.info.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


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
