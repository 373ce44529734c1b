"""The sGDML / MD17 ``.npz`` data-set format: read and write, units honoured.

An sGDML data set is one molecule in many geometries:

==========  =====================  =======================================================
key         shape                  meaning
==========  =====================  =======================================================
``z``       (n_atoms,) int         atomic numbers
``R``       (n_frames, n_atoms, 3) positions, in ``r_unit``
``E``       (n_frames,) or (n, 1)  energies, in ``e_unit`` (optional)
``F``       (n_frames, n_atoms, 3) forces, in ``e_unit``/``r_unit`` (optional)
``e_unit``  str                    energy unit, e.g. 'kcal/mol', 'eV' (sGDML ≥ 0.4 files)
``r_unit``  str                    length unit, e.g. 'Ang', 'bohr'
``name``, ``theory``, ``type`` ('d'), ``md5``: descriptive / sGDML's own bookkeeping
==========  =====================  =======================================================

The original MD17 files (``md17_*.npz``) carry no ``e_unit``/``r_unit``: they are in **kcal/mol,
kcal/mol/Å and Å**; say so when training from them (``molkrr train --data md17_ethanol.npz
--unit kcal/mol``). molkrr's positions are always Å: :func:`read_sgdml_npz` converts positions from
``r_unit`` (and forces per ``r_unit`` to per Å); energies stay in ``e_unit``, which
:func:`read_sgdml_units` reports (:func:`molkrr.datasets.read_frames` converts between energy units).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from ..errors import DatasetError, InvalidInputError, MolkrrError, ShapeMismatchError
from ..molecules import Molecules, as_molecules

__all__ = ["LENGTH_UNITS", "read_sgdml_npz", "read_sgdml_units", "write_sgdml_npz"]

#: Å per length unit, for the spellings sGDML files use (case-insensitive).
LENGTH_UNITS: dict[str, float] = {
    "ang": 1.0,
    "angstrom": 1.0,
    "å": 1.0,
    "a": 1.0,
    "bohr": 0.52917721067,  # CODATA 2014, as ase.units.Bohr
    "au": 0.52917721067,
    "nm": 10.0,
    "pm": 0.01,
}


def read_sgdml_units(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(energy unit, length unit) recorded in an sGDML file (``e_unit``, ``r_unit``), None where absent."""
    data = _read_bounded(_existing(path))
    return tuple(_text(data[k]) if k in data else None for k in ("e_unit", "r_unit"))  # type: ignore[return-value]


def _read_bounded(p: Path) -> dict:
    """Every array of the npz with the size checks of model files (no pickle, sizes bounded before reading)."""
    from ..persistence import read_npz_bounded

    try:
        return read_npz_bounded(p)
    except MolkrrError as exc:
        raise DatasetError(f"cannot read {p}: {_one_line(exc)}") from None


def read_sgdml_npz(path: str | os.PathLike, *, validate: bool = True) -> Molecules:
    """Read an sGDML / MD17 data set into :class:`Molecules` (positions in Å).

    Parameters
    ----------
    path : str or PathLike
        The ``.npz`` file (read with ``allow_pickle=False``).
    validate : bool
        Validate the molecules (finite coordinates, known elements, no coincident atoms).

    Returns
    -------
    Molecules: ``n_frames`` copies of the molecule ``z``; positions (n_frames·n_atoms, 3) in Å
    (converted from ``r_unit`` when the file states another), energies (n_frames,) in the file's
    ``e_unit``, forces (n_frames·n_atoms, 3) in ``e_unit``/Å; energies/forces None when absent.

    Raises
    ------
    DatasetError
        Missing or unreadable file, no ``z``/``R`` arrays, an unknown ``r_unit``.
    ShapeMismatchError
        Arrays that do not describe frames of one molecule.
    """
    p = _existing(path)
    data = _read_bounded(p)
    if "z" not in data or "R" not in data:
        raise DatasetError(f"cannot read {p}: not an sGDML data set (needs arrays 'z' and 'R')")
    try:
        z = np.asarray(data["z"])
        R = np.asarray(data["R"], dtype=np.float64)
        E = np.asarray(data["E"], dtype=np.float64) if "E" in data else None
        F = np.asarray(data["F"], dtype=np.float64) if "F" in data else None
        r_unit = _text(data["r_unit"]) if "r_unit" in data else None
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"cannot read {p}: arrays z, R, E, F must be numeric ({_one_line(exc)})") from None
    if z.ndim != 1 or R.ndim != 3 or R.shape[1:] != (z.shape[0], 3) or R.shape[0] == 0:
        raise ShapeMismatchError(f"{p}: z of shape {z.shape} and R of shape {R.shape} do not describe frames of one molecule")
    n_frames, n_atoms = R.shape[:2]
    if E is not None:
        if E.size != n_frames:
            raise ShapeMismatchError(f"{p}: {E.size} energies for {n_frames} frames")
        E = E.reshape(-1)
    if F is not None and F.shape != R.shape:
        raise ShapeMismatchError(f"{p}: forces of shape {F.shape}, expected {R.shape}")
    if r_unit is not None:
        scale = LENGTH_UNITS.get(r_unit.strip().lower())
        if scale is None:
            raise DatasetError(f"{p}: unknown length unit r_unit={r_unit!r} (known: {', '.join(LENGTH_UNITS)})")
        if scale != 1.0:
            R = R * scale
            F = None if F is None else F / scale
    return Molecules(
        np.tile(z, n_frames),
        R.reshape(-1, 3),
        np.arange(n_frames + 1) * n_atoms,
        E,
        None if F is None else F.reshape(-1, 3),
        validate=validate,
    )


def write_sgdml_npz(
    path: str | os.PathLike,
    molecules: Any,
    *,
    energy_unit: str,
    name: str | None = None,
    theory: str = "unknown",
) -> None:
    """Write frames of one molecule as an sGDML data set (``sgdml`` can train on it directly).

    Parameters
    ----------
    path : str or PathLike
        Destination ``.npz``, replaced atomically (:func:`molkrr._atomic.atomic_write`).
    molecules : Molecules, ase.Atoms or list of ase.Atoms
        Frames of one molecule (same atomic numbers in the same order), positions in Å, with energies
        and forces (forces in ``energy_unit``/Å).
    energy_unit : str
        Unit of the energies, recorded as ``e_unit`` (``r_unit`` is 'Ang').
    name, theory : str
        Descriptive fields (``name`` defaults to the chemical formula).

    Raises
    ------
    ShapeMismatchError
        Frames of different molecules.
    InvalidInputError
        Missing energies or forces, or no energy unit.
    DatasetError
        The file cannot be written.
    """
    mols = as_molecules(molecules)
    if not energy_unit or not isinstance(energy_unit, str):
        raise InvalidInputError("write_sgdml_npz needs energy_unit (e.g. 'eV', 'kcal/mol')")
    if mols.energies is None or mols.forces is None:
        raise InvalidInputError("an sGDML data set needs energies and forces for every frame")
    n = mols.n_atoms
    if not (n == n[0]).all():
        raise ShapeMismatchError("an sGDML data set holds frames of one molecule: the frames differ in size")
    z = mols.numbers[: n[0]]
    if not (mols.numbers.reshape(len(mols), n[0]) == z).all():
        raise ShapeMismatchError("an sGDML data set holds frames of one molecule: the atomic numbers differ between frames")
    if name is None:
        from ase import Atoms

        name = Atoms(numbers=z).get_chemical_formula()
    dataset = {
        "type": np.array("d"),
        "code_version": np.array("molkrr"),
        "name": np.array(name),
        "theory": np.array(theory),
        "z": z.astype(np.int64),
        "R": mols.positions.reshape(len(mols), n[0], 3),
        "E": mols.energies.reshape(-1, 1),
        "F": mols.forces.reshape(len(mols), n[0], 3),
        "e_unit": np.array(energy_unit),
        "r_unit": np.array("Ang"),
    }
    dataset["md5"] = np.array(_sgdml_md5(dataset))
    p = Path(os.fspath(path))
    try:
        atomic_write(p, lambda fh: np.savez_compressed(fh, **dataset))
    except OSError as exc:
        raise DatasetError(f"cannot write {p}: {_one_line(exc)}") from exc


# ---------------------------------------------------------------------------------------------- helpers
def _sgdml_md5(dataset: dict) -> str:
    """The fingerprint sGDML stores with a data set: md5 over the md5s of z, R, E, F (raw bytes)."""
    h = hashlib.md5()
    for k in ("z", "R", "E", "F"):
        h.update(hashlib.md5(np.ascontiguousarray(dataset[k]).ravel()).digest())
    return h.hexdigest()


def _existing(path: str | os.PathLike) -> Path:
    p = Path(os.fspath(path))
    if not p.is_file():
        raise DatasetError(f"cannot read {p}: no such file")
    return p


def _text(value: Any) -> str:
    value = np.asarray(value)
    return value.item().decode() if value.dtype.kind == "S" else str(value.item() if value.ndim == 0 else value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
