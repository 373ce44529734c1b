"""QM9 (130,831 small organic molecules), read offline from the ``qm9pack`` package's CSV files.

The CSVs are parsed once (a few seconds) and the parsed arrays are cached as an ``.npz`` file
(``allow_pickle=False``) in ``$MOLKRR_CACHE`` or ``~/.cache/molkrr``; later loads read the cache
(well under a second). ``qm9pack`` itself is never imported (it pulls in pandas and
``pkg_resources``): only its data folder is located.

Energies in the CSVs are in Hartree; coordinates in Å. The atomisation energy is
U0 − Σ_atoms U0(free atom), with the free-atom references of the QM9 paper (``ATOM_REFERENCES_HA``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from ..errors import DatasetError, InvalidInputError, MolkrrError
from ..molecules import Molecules
from ..units import unit_factor

__all__ = [
    "ATOM_REFERENCES_HA",
    "PROPERTIES",
    "UNITS",
    "QM9Table",
    "load_qm9",
    "load_qm9_table",
    "qm9_cache_dir",
    "sized_for_qm9",
]

#: Number of molecules in the qm9pack CSVs (QM9 without the 3,054 that failed the geometry check).
N_MOLECULES = 130_831
#: Largest QM9 molecule (atoms) and largest count of each element in one molecule: representation
#: sizes that hold every QM9 molecule (Coulomb-matrix size, Bag-of-Bonds bag sizes).
MAX_ATOMS = 29
MAX_ELEMENT_COUNTS = {1: 20, 6: 9, 7: 7, 8: 5, 9: 6}


def sized_for_qm9(representation: Any) -> Any:
    """An unfitted copy of ``representation`` sized to hold every QM9 molecule.

    Each representation sizes itself (:meth:`~molkrr.representations.base.Representation.sized_for`)
    from ``MAX_ATOMS`` and ``MAX_ELEMENT_COUNTS``: a Coulomb matrix of size 29, Bag-of-Bonds bags of
    20 H, 9 C, 7 N, 5 O and 6 F; FCHL19 needs no sizes. A model trained on a QM9 subset then accepts
    any QM9 molecule.
    """
    return representation.sized_for(MAX_ATOMS, MAX_ELEMENT_COUNTS)


def representation_params(name: str) -> dict:
    """Constructor parameters that size the registered representation ``name`` for all of QM9.

    Kept for callers that build representations by name; prefer :func:`sized_for_qm9`.
    """
    from ..representations import get_spec

    spec = get_spec(name)
    plain = spec.make().get_params(deep=False)
    sized = sized_for_qm9(spec.make()).get_params(deep=False)
    return {k: v for k, v in sized.items() if k not in spec.params and repr(v) != repr(plain[k])}


#: Free-atom U0 (Hartree) used for the atomisation energy, keyed by atomic number.
ATOM_REFERENCES_HA: dict[int, float] = {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730}

#: Property name → CSV column (all in Hartree). ``atomization_energy`` is derived from ``u0``.
_COLUMNS: dict[str, str] = {
    "u0": "InternalEnergy_0K_au",
    "u": "InternalEnergy_298K_au",
    "h": "Enthalphy_298K_au",
    "g": "GibbsFreeEnergy_298K_au",
    "zpve": "ZPVE_au",
    "homo": "HOMO_au",
    "lumo": "LUMO_au",
    "homo_lumo_gap": "HOMO_LUMO_gap_au",
}
_ALIASES = {"gap": "homo_lumo_gap", "atomisation_energy": "atomization_energy", "u298": "u", "h298": "h", "g298": "g"}

#: Properties ``load_qm9`` can put into ``Molecules.energies`` (all energies, so every unit applies).
PROPERTIES: tuple[str, ...] = ("atomization_energy", *_COLUMNS)


#: Units an energy can be returned in (conversions from Hartree by :mod:`molkrr.units`, i.e. ``ase.units``).
UNITS: tuple[str, ...] = ("Ha", "eV", "meV", "kcal/mol", "kJ/mol")

_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
#: Bump when the cache layout changes: old cache files are then ignored.
_CACHE_FORMAT = 1
_ARRAY_KEYS = ("index", "smiles", "numbers", "positions", "offsets", *_COLUMNS)
_SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


# ---------------------------------------------------------------------------------------------- table
@dataclass(frozen=True)
class QM9Table:
    """All of QM9 as flat arrays (read-only); row ``i`` is molecule ``i`` in file order.

    Attributes
    ----------
    index : (n,) int64
        The QM9 identifier (``dsgdb9nsd_{index:06d}``); 1 is CH4. Not contiguous (excluded molecules).
    smiles : (n,) bytes
        SMILES string of each molecule (ASCII).
    numbers : (n_total_atoms,) uint8
        Atomic numbers.
    positions : (n_total_atoms, 3) float64
        Coordinates in Å.
    offsets : (n + 1,) int64
        Molecule ``i`` owns atoms ``offsets[i]:offsets[i+1]``.
    columns : dict[str, (n,) float64]
        Raw energy-like properties in Hartree: ``u0, u, h, g, zpve, homo, lumo, homo_lumo_gap``.
    """

    index: np.ndarray
    smiles: np.ndarray
    numbers: np.ndarray
    positions: np.ndarray
    offsets: np.ndarray
    columns: dict

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_atoms(self) -> np.ndarray:
        """(n,) number of atoms of each molecule."""
        return np.diff(self.offsets)

    def property(self, name: str = "atomization_energy", unit: str = "kcal/mol") -> np.ndarray:
        """(n,) float64 values of property ``name`` in ``unit`` (see ``PROPERTIES``, ``UNITS``)."""
        name = _check_property(name)
        factor = _unit_factor(unit)
        if name == "atomization_energy":
            refs = np.zeros(max(ATOM_REFERENCES_HA) + 1)
            for z, e in ATOM_REFERENCES_HA.items():
                refs[z] = e
            if self.numbers.max() >= len(refs) or np.any(refs[self.numbers] == 0.0):
                raise DatasetError("QM9 table holds an element without a free-atom reference energy")
            # Per-molecule sums; reduceat is exact here because no molecule is empty.
            atom_sum = np.add.reduceat(refs[self.numbers], self.offsets[:-1])
            values = self.columns["u0"] - atom_sum
        else:
            values = self.columns[name]
        return values * factor

    def rows_of_ids(self, ids: Any) -> np.ndarray:
        """Row positions of the QM9 identifiers ``ids`` (e.g. ``[1, 2]`` → ``[0, 1]``)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        order = np.argsort(self.index, kind="stable")
        pos = np.searchsorted(self.index[order], ids)
        pos = np.clip(pos, 0, len(order) - 1)
        found = self.index[order][pos] == ids
        if not found.all():
            missing = ids[~found][:5].tolist()
            raise InvalidInputError(f"QM9 identifiers not in the data set (excluded or out of range): {missing}")
        return order[pos]

    def molecules(self, rows: Any = None, *, energies: Any = None, validate: bool = True) -> Molecules:
        """A :class:`Molecules` batch of ``rows`` (default: all, in file order) with optional energies (per row)."""
        if rows is None:
            rows = np.arange(len(self))
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        counts = self.n_atoms[rows]
        starts = self.offsets[rows]
        total = int(counts.sum())
        cum = np.concatenate([[0], np.cumsum(counts)])
        atom_idx = np.arange(total) + np.repeat(starts - cum[:-1], counts)
        return Molecules(
            self.numbers[atom_idx].astype(np.int64),
            self.positions[atom_idx],
            cum,
            None if energies is None else np.asarray(energies, dtype=np.float64)[rows],
            validate=validate,
        )


# ---------------------------------------------------------------------------------------------- public
def load_qm9(
    n: int | None = None,
    *,
    seed: int = 0,
    property: str = "atomization_energy",
    unit: str = "kcal/mol",
    indices: Sequence[int] | np.ndarray | None = None,
    ids: Sequence[int] | np.ndarray | None = None,
    return_ids: bool = False,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    validate: bool = False,
) -> Molecules | tuple[Molecules, np.ndarray]:
    """QM9 molecules with ``energies`` set to ``property`` in ``unit``.

    Parameters
    ----------
    n : int, optional
        Number of random molecules: the first ``n`` of ``numpy.random.default_rng(seed).permutation(130831)``,
        so a smaller ``n`` with the same seed gives a prefix of a larger one. ``None`` (and no ``indices``/``ids``):
        all molecules in file order.
    seed : int
        Seed of the random selection.
    property : str
        One of ``PROPERTIES``: ``atomization_energy`` (U0 − free atoms), ``u0``, ``u``, ``h``, ``g``, ``zpve``,
        ``homo``, ``lumo``, ``homo_lumo_gap`` (alias ``gap``).
    unit : str
        ``Ha``, ``eV``, ``meV``, ``kcal/mol`` or ``kJ/mol`` (conversions from ``ase.units``).
    indices : sequence of int, optional
        Row positions (0-based, file order; row 0 is CH4) to load, in that order. Excludes ``n`` and ``ids``.
    ids : sequence of int, optional
        QM9 identifiers (1-based, as in ``dsgdb9nsd_000001``) to load, in that order. Excludes ``n`` and ``indices``.
    return_ids : bool
        Also return the (n_molecules,) QM9 identifiers of the molecules, for reproducible splits.
    cache, cache_dir
        Read/write the parsed-array cache (directory: ``cache_dir``, else ``$MOLKRR_CACHE``, else ``~/.cache/molkrr``).
    progress : bool
        Show a progress bar while the CSV files are parsed (only happens without a valid cache).
    validate : bool
        Validate the returned :class:`Molecules` again (finite coordinates, no coincident atoms, ...). Off by
        default: the whole data set is validated once, when the CSVs are parsed, before it is cached (and a cache
        read back is checked for consistent shapes and finite coordinates); re-validating all 130,831 molecules
        costs about 6 s.

    Returns
    -------
    Molecules, or (Molecules, (n_molecules,) int64 QM9 identifiers) if ``return_ids``.

    Raises
    ------
    DatasetError
        qm9pack is not installed or its files cannot be read.
    ValueError
        Unknown property or unit, bad ``n``, out-of-range ``indices`` or unknown ``ids``.
    """
    name = _check_property(property)
    _unit_factor(unit)
    selectors = sum(x is not None for x in (n, indices, ids))
    if selectors > 1:
        raise InvalidInputError("give at most one of n, indices and ids")
    table = load_qm9_table(cache=cache, cache_dir=cache_dir, progress=progress)
    total = len(table)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= total:
            raise InvalidInputError(f"n must be an integer in 1..{total}, got {n!r}")
        rows = np.random.default_rng(seed).permutation(total)[: int(n)]
    elif indices is not None:
        rows = np.asarray(indices)
        if rows.size == 0 or not np.issubdtype(rows.dtype, np.integer):
            raise InvalidInputError("indices must be a non-empty sequence of integers")
        rows = rows.astype(np.int64).reshape(-1)
        if rows.min() < -total or rows.max() >= total:
            raise InvalidInputError(f"indices must lie in -{total}..{total - 1}")
        rows = rows % total
    elif ids is not None:
        if np.size(ids) == 0:
            raise InvalidInputError("ids must be a non-empty sequence of integers")
        rows = table.rows_of_ids(ids)
    else:
        rows = np.arange(total)
    mols = table.molecules(rows, energies=table.property(name, unit), validate=validate)
    if return_ids:
        return mols, table.index[rows].copy()
    return mols


def load_qm9_table(
    *, cache: bool = True, cache_dir: str | os.PathLike | None = None, progress: bool = False
) -> QM9Table:
    """All of QM9 as a :class:`QM9Table` (from the cache when valid, else parsed from qm9pack's CSVs)."""
    folder = _data_folder()
    paths = [folder / f for f in _FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"qm9pack data files missing: {', '.join(missing)}; reinstall with `pip install --force-reinstall qm9pack`")
    key = _cache_key(paths)
    cache_file = None
    if cache:
        cache_file = qm9_cache_dir(cache_dir) / f"qm9_{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
        table = _read_cache(cache_file, key)
        if table is not None:
            return table
    arrays = _parse_csvs(paths, progress=progress)
    # Validate the whole data set once, before it is cached: later loads trust the cache.
    try:
        Molecules(arrays["numbers"], arrays["positions"], arrays["offsets"], validate=True)
    except MolkrrError as exc:
        raise DatasetError(f"qm9pack data failed validation: {exc}") from exc
    if cache_file is not None:
        _write_cache(cache_file, key, arrays)
    return _table_from_arrays(arrays)


def qm9_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$MOLKRR_CACHE``, else ``~/.cache/molkrr``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MOLKRR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "molkrr"


# ---------------------------------------------------------------------------------------------- helpers
def _check_property(name: str) -> str:
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in PROPERTIES:
        raise InvalidInputError(f"unknown QM9 property {name!r}; choose one of {', '.join(PROPERTIES)}")
    return key


def _unit_factor(unit: str) -> float:
    """Value of one Hartree in ``unit``; InvalidInputError (a ValueError) for an unknown unit."""
    return unit_factor("Ha", unit)


def _data_folder() -> Path:
    hint = "install it with `pip install qm9pack` (or `pip install molkrr[qm9]`)"
    try:
        spec = importlib.util.find_spec("qm9pack")
    except (ImportError, ValueError) as exc:  # broken installation
        raise DatasetError(f"the QM9 data package qm9pack cannot be found ({exc}); {hint}") from exc
    locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec is not None else []
    if not locations:
        raise DatasetError(f"the QM9 data package qm9pack is not installed; {hint}")
    folder = Path(locations[0]) / "data"
    if not folder.is_dir():
        raise DatasetError(f"qm9pack has no data folder at {folder}; reinstall it: {hint}")
    return folder


def _cache_key(paths: Sequence[Path]) -> str:
    try:
        version = importlib.metadata.version("qm9pack")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    sizes = ",".join(f"{p.name}:{p.stat().st_size}" for p in paths)
    return f"molkrr-qm9-cache v{_CACHE_FORMAT}; qm9pack {version}; {sizes}"


def _parse_csvs(paths: Sequence[Path], *, progress: bool = False) -> dict[str, np.ndarray]:
    """Parse the CSV files into flat arrays (see ``QM9Table``); positions in Å, energies in Hartree."""
    wanted = ("Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", *_COLUMNS.values())
    iterator: Any = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="parsing QM9 CSVs", unit="file")
    parts: list[dict[str, np.ndarray]] = []
    for path in iterator:
        try:
            with open(path, newline="", encoding="ascii") as fh:
                reader = csv.reader(fh)
                header = next(reader)
                try:
                    cols = [header.index(c) for c in wanted]
                except ValueError as exc:
                    raise DatasetError(f"{path}: unexpected CSV header ({exc})") from None
                rows = [tuple(row[i] for i in cols) for row in reader]
        except (OSError, UnicodeDecodeError, csv.Error, StopIteration, IndexError) as exc:
            raise DatasetError(f"cannot read QM9 file {path}: {type(exc).__name__}: {exc}") from exc
        parts.append(_parse_rows(rows, path))
    return {k: np.concatenate([p[k] for p in parts]) if k != "offsets" else _join_offsets([p[k] for p in parts])
            for k in parts[0]}


def _parse_rows(rows: list[tuple[str, ...]], path: Path) -> dict[str, np.ndarray]:
    if not rows:
        raise DatasetError(f"QM9 file {path} has no molecules")
    index, smiles, n_atoms, elements, xyz, *scalars = zip(*rows)
    try:
        n = np.array(n_atoms, dtype=np.int64)
        out: dict[str, np.ndarray] = {
            "index": np.array(index, dtype=np.int64),
            "smiles": np.array([s.encode("ascii") for s in smiles], dtype=bytes),
        }
        for name, values in zip(_COLUMNS, scalars):
            out[name] = np.array(values, dtype=np.float64)  # float() accepts "0." and "1e-5"
    except ValueError as exc:
        raise DatasetError(f"QM9 file {path}: bad number ({exc})") from exc
    if np.any(n <= 0):
        raise DatasetError(f"QM9 file {path}: molecule {out['index'][np.argmax(n <= 0)]} has N_atoms <= 0")
    # Elements "['C','H','H']": one symbol per comma-separated item.
    el_counts = np.fromiter((s.count(",") + 1 for s in elements), dtype=np.int64, count=len(elements))
    xyz_counts = np.fromiter((s.count(",") + 1 for s in xyz), dtype=np.int64, count=len(xyz))
    bad = (el_counts != n) | (xyz_counts != 3 * n)
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(
            f"QM9 file {path}: molecule {out['index'][i]} has N_atoms={n[i]} but {el_counts[i]} elements "
            f"and {xyz_counts[i]} coordinates"
        )
    symbols = ",".join(elements).translate(str.maketrans("", "", "[]' \"")).split(",")
    try:
        numbers = np.fromiter(map(_SYMBOLS.__getitem__, symbols), dtype=np.uint8, count=len(symbols))
    except KeyError as exc:
        raise DatasetError(f"QM9 file {path}: unexpected element symbol {exc}") from None
    # Coordinates "[[x,y,z],...]": strip brackets, parse all numbers at once (C parser; accepts "0.").
    flat = ",".join(xyz).encode("ascii").translate(None, b"[] ")
    coords = np.fromstring(flat, dtype=np.float64, sep=",")
    if coords.size != 3 * n.sum():
        raise DatasetError(f"QM9 file {path}: could not parse all coordinates ({coords.size} of {3 * n.sum()})")
    out["numbers"] = numbers
    out["positions"] = coords.reshape(-1, 3)
    out["offsets"] = np.concatenate([[0], np.cumsum(n)])
    return out


def _join_offsets(parts: list[np.ndarray]) -> np.ndarray:
    counts = np.concatenate([np.diff(p) for p in parts])
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _table_from_arrays(arrays: dict[str, np.ndarray]) -> QM9Table:
    for a in arrays.values():
        a.flags.writeable = False
    return QM9Table(
        index=arrays["index"],
        smiles=arrays["smiles"],
        numbers=arrays["numbers"],
        positions=arrays["positions"],
        offsets=arrays["offsets"],
        columns={k: arrays[k] for k in _COLUMNS},
    )


def _read_cache(path: Path, key: str) -> QM9Table | None:
    """The cached table, or None when the file is absent, stale or corrupt (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            arrays = {k: z[k] for k in _ARRAY_KEYS}
        n = len(arrays["index"])
        off = arrays["offsets"]
        ok = (
            n > 0
            and off.shape == (n + 1,)
            and off[0] == 0
            and np.all(np.diff(off) > 0)
            and arrays["numbers"].shape == (off[-1],)
            and arrays["positions"].shape == (off[-1], 3)
            and arrays["smiles"].shape == (n,)
            and all(arrays[k].shape == (n,) for k in _COLUMNS)
            and np.isfinite(arrays["positions"]).all()
        )
        if not ok:
            raise InvalidInputError("inconsistent array shapes")
    except Exception as exc:  # any unreadable cache is rebuilt, never trusted
        warnings.warn(f"ignoring unreadable QM9 cache {path} ({type(exc).__name__}: {exc}); rebuilding it", UserWarning,
                      stacklevel=3)
        return None
    return _table_from_arrays(arrays)


def _write_cache(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (:func:`molkrr._atomic.atomic_write`); a failure only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: np.savez(fh, key=np.array(key), **{k: arrays[k] for k in _ARRAY_KEYS}))
    except OSError as exc:
        warnings.warn(f"could not write the QM9 cache {path}: {exc}", UserWarning, stacklevel=3)
