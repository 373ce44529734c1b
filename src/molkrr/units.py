"""Energy units: one table of spellings and conversions, from :mod:`ase.units` (CODATA values ASE uses).

molkrr never changes the unit of the data it learns from: a model records the unit its energies are
in (``MolecularKRR.energy_unit``), the QM9 loader converts from Hartree into the unit asked for, and
the ASE calculator converts the model's unit into eV. Forces are in energy unit per Å throughout.

>>> from molkrr.units import convert_energy
>>> round(convert_energy(1.0, "Ha", "kcal/mol"), 4)
627.5095
"""

from __future__ import annotations

from .errors import InvalidInputError

__all__ = ["ENERGY_UNITS", "canonical_unit", "convert_energy", "ev_per_unit", "unit_factor"]

#: Energy units molkrr converts between (canonical spellings).
ENERGY_UNITS: tuple[str, ...] = ("eV", "meV", "Ha", "kcal/mol", "kJ/mol")

_ALIASES: dict[str, str] = {
    "ev": "eV",
    "mev": "meV",
    "ha": "Ha",
    "hartree": "Ha",
    "eh": "Ha",
    "au": "Ha",
    "a.u.": "Ha",
    "kcal/mol": "kcal/mol",
    "kj/mol": "kJ/mol",
}


def canonical_unit(unit: str) -> str:
    """The canonical spelling of an energy unit (case-insensitive; 'Hartree', 'Eh', 'au' mean 'Ha').

    Raises
    ------
    InvalidInputError
        (a ValueError) for anything that is not one of :data:`ENERGY_UNITS` or an alias.
    """
    key = _ALIASES.get(unit.strip().lower()) if isinstance(unit, str) else None
    if key is None:
        raise InvalidInputError(f"unknown energy unit {unit!r}; choose one of {', '.join(ENERGY_UNITS)}")
    return key


def ev_per_unit(unit: str) -> float:
    """The value in eV of one ``unit`` (see :func:`canonical_unit` for the accepted spellings)."""
    from ase import units

    return {
        "eV": 1.0,
        "meV": 1e-3,
        "Ha": units.Hartree,
        "kcal/mol": units.kcal / units.mol,
        "kJ/mol": units.kJ / units.mol,
    }[canonical_unit(unit)] / units.eV


def unit_factor(from_unit: str, to_unit: str) -> float:
    """The number f such that a value in ``from_unit`` times f is the same energy in ``to_unit``."""
    return ev_per_unit(from_unit) / ev_per_unit(to_unit)


def convert_energy(value, from_unit: str, to_unit: str):
    """``value`` (a number or an array, in ``from_unit``) expressed in ``to_unit``; forces convert alike."""
    return value * unit_factor(from_unit, to_unit)
