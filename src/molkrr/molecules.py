"""A ragged batch of molecules: atomic numbers, positions (Å) and optional labels.

All atoms of all molecules are stored in flat arrays; ``offsets`` marks where each molecule
starts, so molecule ``i`` is ``numbers[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .errors import (
    CoincidentAtomsError,
    EmptyMoleculeError,
    IndexOutOfRangeError,
    InputTypeError,
    InvalidInputError,
    NonFiniteCoordinatesError,
    ShapeMismatchError,
    UnknownElementError,
)

#: Largest atomic number accepted (oganesson).
MAX_ATOMIC_NUMBER = 118
#: Two atoms of one molecule closer than this (Å) are rejected as coincident.
MIN_INTERATOMIC_DISTANCE = 1e-2


class Molecules:
    """A batch of molecules of possibly different sizes.

    Parameters
    ----------
    numbers : (n_total_atoms,) int
        Atomic numbers of all atoms, molecule after molecule.
    positions : (n_total_atoms, 3) float
        Cartesian coordinates in Å.
    offsets : (n_molecules + 1,) int
        ``offsets[i]:offsets[i+1]`` are the atoms of molecule ``i``; starts at 0, ends at ``n_total_atoms``.
    energies : (n_molecules,) float, optional
        One label per molecule, in the unit the caller works in.
    forces : (n_total_atoms, 3) float, optional
        Forces (−∂E/∂R) per atom, in energy unit / Å.
    validate : bool
        Check finiteness, element range, coincident atoms and shapes (default True).

    Raises
    ------
    ShapeMismatchError, NonFiniteCoordinatesError, CoincidentAtomsError, UnknownElementError,
    EmptyMoleculeError
    """

    def __init__(
        self,
        numbers: Any,
        positions: Any,
        offsets: Any,
        energies: Any = None,
        forces: Any = None,
        *,
        validate: bool = True,
    ) -> None:
        self.numbers = _as_int_array(numbers, "numbers")
        try:
            pos = np.array(positions, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"positions must be a numeric (n_atoms, 3) array: {exc}") from None
        # a wrong shape is kept as is when it cannot be reshaped, so that validation reports it
        self.positions = pos.reshape(-1, 3) if pos.size % 3 == 0 else pos
        self.offsets = _as_int_array(offsets, "offsets")
        self.energies = None if energies is None else _as_float(energies, "energies").reshape(-1)
        self.forces = None if forces is None else _as_float(forces, "forces")
        if validate:
            self._validate(np.shape(positions))
        self.numbers.flags.writeable = False
        self.offsets.flags.writeable = False

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_list(
        cls,
        numbers: Sequence[Any],
        positions: Sequence[Any],
        energies: Any = None,
        forces: Sequence[Any] | None = None,
        *,
        validate: bool = True,
    ) -> "Molecules":
        """Build from one array of atomic numbers and one (n_atoms, 3) array of positions per molecule."""
        if not _is_sequence(numbers) or not _is_sequence(positions):
            raise InputTypeError(
                f"numbers and positions must be sequences (one entry per molecule), got {type(numbers).__name__} "
                f"and {type(positions).__name__}"
            )
        if len(numbers) != len(positions):
            raise ShapeMismatchError(f"got {len(numbers)} lists of atomic numbers but {len(positions)} of positions")
        if len(numbers) == 0:
            raise EmptyMoleculeError("no molecules given")
        counts = []
        for i, (z, r) in enumerate(zip(numbers, positions)):
            z = np.atleast_1d(_as_int_array(z, f"molecule {i}: numbers"))
            r = _as_float(r, f"molecule {i}: positions")
            if r.ndim != 2 or r.shape[1] != 3 or r.shape[0] != z.shape[0]:
                raise ShapeMismatchError(
                    f"molecule {i}: {z.shape[0]} atomic numbers but positions of shape {r.shape} (expected ({z.shape[0]}, 3))"
                )
            counts.append(z.shape[0])
        offsets = np.concatenate([[0], np.cumsum(counts)])
        flat_forces = None
        if forces is not None:
            if len(forces) != len(numbers):
                raise ShapeMismatchError(f"got forces for {len(forces)} molecules, expected {len(numbers)}")
            flat_forces = []
            for i, (f, n) in enumerate(zip(forces, counts)):
                f = _as_float(f, f"molecule {i}: forces")
                if f.shape != (n, 3):
                    raise ShapeMismatchError(f"molecule {i}: forces of shape {f.shape}, expected ({n}, 3)")
                flat_forces.append(f)
            flat_forces = np.concatenate(flat_forces)
        return cls(
            np.concatenate([np.atleast_1d(_as_int_array(z, "numbers")) for z in numbers]),
            np.concatenate([_as_float(r, "positions") for r in positions]),
            offsets,
            energies,
            flat_forces,
            validate=validate,
        )

    @classmethod
    def from_ase(cls, atoms: Any, *, energy_key: str = "energy", validate: bool = True) -> "Molecules":
        """Build from one ``ase.Atoms`` or an iterable of them.

        Energies are taken from an attached calculator's results or from ``atoms.info[energy_key]``,
        forces from the calculator or ``atoms.arrays['forces']``; they are kept only when every
        molecule has them.
        """
        from ase import Atoms

        if isinstance(atoms, Atoms):
            atoms = [atoms]
        atoms = list(atoms)
        if not atoms:
            raise EmptyMoleculeError("no molecules given")
        energies, forces = [], []
        for a in atoms:
            if not isinstance(a, Atoms):
                raise InputTypeError(f"expected ase.Atoms, got {type(a).__name__}")
            results = getattr(a.calc, "results", {}) if a.calc is not None else {}
            energies.append(results.get("energy", a.info.get(energy_key)))
            f = results.get("forces", a.arrays.get("forces"))
            forces.append(f)
        return cls.from_list(
            [a.numbers for a in atoms],
            [a.positions for a in atoms],
            energies if all(e is not None for e in energies) else None,
            forces if all(f is not None for f in forces) else None,
            validate=validate,
        )

    def to_ase(self) -> list:
        """One ``ase.Atoms`` per molecule; energies and forces, when present, in a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for i in range(len(self)):
            s = self.atom_slice(i)
            a = Atoms(numbers=self.numbers[s], positions=self.positions[s])
            if self.energies is not None or self.forces is not None:
                a.calc = SinglePointCalculator(
                    a,
                    energy=None if self.energies is None else float(self.energies[i]),
                    forces=None if self.forces is None else self.forces[s].copy(),
                )
            out.append(a)
        return out

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> np.ndarray:
        """(n_molecules,) number of atoms of each molecule."""
        return np.diff(self.offsets)

    def atom_slice(self, i: int) -> slice:
        """The slice of the flat atom arrays that belongs to molecule ``i``."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(numbers, positions) of molecule ``i`` — shapes (n_atoms,) and (n_atoms, 3)."""
        s = self.atom_slice(i)
        return self.numbers[s], self.positions[s]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            yield self.molecule(i)

    @property
    def shape(self) -> tuple[int]:
        """(n_molecules,): lets scikit-learn's cross-validation index a batch like an array."""
        return (len(self),)

    def __getitem__(self, index: Any) -> "Molecules":
        """A new batch: ``batch[i]`` (one molecule), ``batch[a:b]`` or ``batch[index_array]``."""
        if isinstance(index, tuple) and len(index) == 2 and index[1] is Ellipsis:
            index = index[0]
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexOutOfRangeError(f"molecule index {index} out of range for {n} molecules")
            idx = np.array([index % n])
        elif isinstance(index, slice):
            idx = np.arange(len(self))[index]
        else:
            idx = np.asarray(index)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexOutOfRangeError(f"boolean mask of shape {idx.shape} for {len(self)} molecules")
                idx = np.flatnonzero(idx)
            elif idx.size and not np.issubdtype(idx.dtype, np.integer):
                raise IndexOutOfRangeError(f"molecule indices must be integers or a boolean mask, got dtype {idx.dtype}")
        return self.subset(idx)

    def subset(self, indices: Any) -> "Molecules":
        """The molecules at ``indices`` (any integer sequence), in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexOutOfRangeError(f"molecule indices must lie in {-n}..{n - 1}, got {idx.min()}..{idx.max()}")
        idx = np.where(idx < 0, idx + n, idx)  # offsets[-1] is the end, not the last molecule's start
        counts = self.n_atoms[idx]
        atom_idx = _ragged_arange(self.offsets[idx], counts)
        return Molecules(
            self.numbers[atom_idx],
            self.positions[atom_idx],
            np.concatenate([[0], np.cumsum(counts)]),
            None if self.energies is None else self.energies[idx],
            None if self.forces is None else self.forces[atom_idx],
            validate=False,
        )

    @classmethod
    def concatenate(cls, batches: Sequence["Molecules"]) -> "Molecules":
        """One batch holding the molecules of ``batches`` in order (labels kept if all have them)."""
        batches = list(batches)
        if not batches:
            raise EmptyMoleculeError("no molecules given")
        counts = np.concatenate([b.n_atoms for b in batches])
        energies = None
        if all(b.energies is not None for b in batches):
            energies = np.concatenate([b.energies for b in batches])
        forces = None
        if all(b.forces is not None for b in batches):
            forces = np.concatenate([b.forces for b in batches])
        return cls(
            np.concatenate([b.numbers for b in batches]),
            np.concatenate([b.positions for b in batches]),
            np.concatenate([[0], np.cumsum(counts)]),
            energies,
            forces,
            validate=False,
        )

    def with_positions(self, positions: Any) -> "Molecules":
        """Same atoms and labels, new positions of shape (n_total_atoms, 3)."""
        return Molecules(self.numbers, positions, self.offsets, self.energies, self.forces)

    def with_labels(self, energies: Any = None, forces: Any = None) -> "Molecules":
        """Same atoms, new energies and/or forces (flat (n_total_atoms, 3) or one array per molecule)."""
        if forces is not None and not isinstance(forces, np.ndarray):
            forces = np.concatenate([np.asarray(f, dtype=np.float64) for f in forces]) if len(forces) else forces
        return Molecules(self.numbers, self.positions, self.offsets, energies, forces)

    def split_atoms(self, flat: np.ndarray) -> list[np.ndarray]:
        """Split a per-atom array of leading length n_total_atoms into one array per molecule."""
        return np.split(np.asarray(flat), self.offsets[1:-1])

    def by_size(self) -> dict[int, np.ndarray]:
        """Molecule indices grouped by atom count — the unit of vectorised work."""
        n = self.n_atoms
        order = np.argsort(n, kind="stable")
        sizes, starts = np.unique(n[order], return_index=True)
        return {int(s): order[a:b] for s, a, b in zip(sizes, starts, list(starts[1:]) + [len(order)])}

    def stacked(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(numbers (m, n), positions (m, n, 3)) for molecules ``indices`` that all have n atoms."""
        n = int(self.n_atoms[indices[0]])
        atom_idx = self.offsets[indices][:, None] + np.arange(n)
        return self.numbers[atom_idx], self.positions[atom_idx]

    def __repr__(self) -> str:
        labels = [k for k in ("energies", "forces") if getattr(self, k) is not None]
        return f"Molecules(n_molecules={len(self)}, n_atoms={len(self.numbers)}" + (
            f", labels={labels})" if labels else ")"
        )

    # ------------------------------------------------------------------ validation
    def _validate(self, raw_positions_shape: tuple) -> None:
        n_total = self.numbers.shape[0]
        if self.numbers.ndim != 1:
            raise ShapeMismatchError(f"numbers must be 1-D, got shape {self.numbers.shape}")
        if len(raw_positions_shape) != 2 or raw_positions_shape[-1] != 3 or raw_positions_shape[0] != n_total:
            raise ShapeMismatchError(f"positions must have shape ({n_total}, 3), got {raw_positions_shape}")
        off = self.offsets
        if off.shape == (1,) and n_total == 0:
            raise EmptyMoleculeError("no molecules given")
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != n_total:
            raise ShapeMismatchError(f"offsets must run from 0 to {n_total} with at least one molecule, got {off[:5]}...")
        counts = np.diff(off)
        if np.any(counts <= 0):
            raise EmptyMoleculeError(f"molecule {int(np.flatnonzero(counts <= 0)[0])} has no atoms")
        bad = (self.numbers <= 0) | (self.numbers > MAX_ATOMIC_NUMBER)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UnknownElementError(
                f"atomic number {int(self.numbers[i])} (molecule {self._molecule_of(i)}) is not an element (1..{MAX_ATOMIC_NUMBER})"
            )
        finite = np.isfinite(self.positions).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise NonFiniteCoordinatesError(f"molecule {self._molecule_of(i)}: atom {i - off[self._molecule_of(i)]} has non-finite coordinates {self.positions[i]}")
        if self.energies is not None:
            if self.energies.shape[0] != len(self):
                raise ShapeMismatchError(f"{self.energies.shape[0]} energies for {len(self)} molecules")
            if not np.isfinite(self.energies).all():
                raise InvalidInputError("energies contain NaN or infinity")
        if self.forces is not None:
            if self.forces.shape != (n_total, 3):
                raise ShapeMismatchError(f"forces must have shape ({n_total}, 3), got {self.forces.shape}")
            if not np.isfinite(self.forces).all():
                raise InvalidInputError("forces contain NaN or infinity")
        for size, idx in self.by_size().items():
            if size < 2:
                continue
            _, pos = self.stacked(idx)
            d2 = np.zeros((pos.shape[0], size, size))
            for k in range(3):  # one axis at a time: no (m, n, n, 3) temporary
                d2 += (pos[:, :, None, k] - pos[:, None, :, k]) ** 2
            d2[:, np.arange(size), np.arange(size)] = np.inf
            close = d2 < MIN_INTERATOMIC_DISTANCE**2
            if close.any():
                m, a, b = np.argwhere(close)[0]
                raise CoincidentAtomsError(
                    f"molecule {int(idx[m])}: atoms {a} and {b} are {np.sqrt(d2[m, a, b]):.3g} Å apart "
                    f"(minimum {MIN_INTERATOMIC_DISTANCE} Å)"
                )

    def check_structure(self) -> None:
        """Cheap structural check (O(n_atoms), no distances) run before compiled code reads the batch.

        Batches built with ``validate=False`` skip :meth:`_validate`; the representations' compiled
        loops index ``numbers``/``positions`` through ``offsets`` and trust nothing else, so the
        offsets must run from 0 to n_atoms without decreasing, the arrays must agree in length and
        every atomic number must be an element. Raises ShapeMismatchError or UnknownElementError.
        """
        n_total = self.numbers.shape[0]
        if self.numbers.ndim != 1 or self.positions.ndim != 2 or self.positions.shape != (n_total, 3):
            raise ShapeMismatchError(
                f"numbers of shape {self.numbers.shape} and positions of shape {self.positions.shape} do not describe atoms"
            )
        off = self.offsets
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != n_total or np.any(np.diff(off) < 0):
            raise ShapeMismatchError(f"offsets must run from 0 to {n_total} without decreasing")
        if n_total and (self.numbers.min() < 1 or self.numbers.max() > MAX_ATOMIC_NUMBER):
            bad = int(np.flatnonzero((self.numbers < 1) | (self.numbers > MAX_ATOMIC_NUMBER))[0])
            raise UnknownElementError(
                f"atomic number {int(self.numbers[bad])} (molecule {self._molecule_of(bad)}) is not an element "
                f"(1..{MAX_ATOMIC_NUMBER})"
            )

    def _molecule_of(self, atom: int) -> int:
        return int(np.searchsorted(self.offsets, atom, side="right") - 1)


def as_molecules(data: Any) -> Molecules:
    """Accept a :class:`Molecules`, a list of them, an ``ase.Atoms`` or an iterable of ``ase.Atoms``."""
    if isinstance(data, Molecules):
        return data
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, Molecules) for d in data):
        return Molecules.concatenate(data)
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a dependency
        Atoms = ()
    if isinstance(data, Atoms) or (isinstance(data, Iterable) and not isinstance(data, (str, bytes, np.ndarray))):
        return Molecules.from_ase(data)
    raise InputTypeError(f"expected Molecules or ase.Atoms, got {type(data).__name__}")


def _as_int_array(values: Any, name: str) -> np.ndarray:
    try:
        arr = np.array(values, copy=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a regular array of integers: {str(exc)[:120]}") from None
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        try:
            as_float = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise UnknownElementError(f"{name} must be integers, got {values!r:.80}") from None
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise UnknownElementError(f"{name} must be integers, got {values!r:.80}")
    return arr.astype(np.int64).reshape(-1)


def _as_float(values: Any, name: str) -> np.ndarray:
    """values as a float64 array, or InvalidInputError (strings, ragged nesting, objects)."""
    try:
        return np.array(values, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be numbers in a regular array: {str(exc)[:120]}") from None


def _is_sequence(value: Any) -> bool:
    return hasattr(value, "__len__") and hasattr(value, "__getitem__") and not isinstance(value, (str, bytes))


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c), vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return np.arange(total) + shifts
