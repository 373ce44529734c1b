"""molkrr.units: one table of energy units, conversions from ase.units."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units

from molkrr.errors import InvalidInputError
from molkrr.units import ENERGY_UNITS, canonical_unit, convert_energy, ev_per_unit, unit_factor

# eV per unit written out from ase.units, independently of molkrr's table
EV_PER = {"eV": 1.0, "meV": 1e-3, "Ha": units.Hartree, "kcal/mol": units.kcal / units.mol, "kJ/mol": units.kJ / units.mol}


@pytest.mark.parametrize("unit", ENERGY_UNITS)
def test_ev_per_unit_is_ase_units(unit):
    assert ev_per_unit(unit) == pytest.approx(EV_PER[unit], rel=1e-15)


def test_known_values():
    # CODATA: 1 Ha = 627.5095 kcal/mol = 2625.4996 kJ/mol = 27.211386 eV
    assert convert_energy(1.0, "Ha", "kcal/mol") == pytest.approx(627.5095, abs=1e-3)
    assert convert_energy(1.0, "Ha", "kJ/mol") == pytest.approx(2625.4996, abs=1e-3)
    assert convert_energy(1.0, "Ha", "eV") == pytest.approx(27.211386, abs=1e-5)
    assert convert_energy(1.0, "eV", "meV") == pytest.approx(1000.0, rel=1e-15)
    assert unit_factor("Ha", "Ha") == 1.0


@pytest.mark.parametrize("a", ENERGY_UNITS)
@pytest.mark.parametrize("b", ENERGY_UNITS)
def test_round_trip_and_arrays(a, b):
    x = np.array([-1.5, 0.0, 2.25])
    np.testing.assert_allclose(convert_energy(convert_energy(x, a, b), b, a), x, rtol=1e-14)


def test_aliases_and_errors():
    assert canonical_unit(" hartree ") == canonical_unit("Eh") == canonical_unit("au") == "Ha"
    assert canonical_unit("KCAL/MOL") == "kcal/mol" and canonical_unit("kj/mol") == "kJ/mol"
    for bad in ("furlong", "", None, 3.0):
        with pytest.raises(InvalidInputError, match="unknown energy unit"):
            canonical_unit(bad)
    assert issubclass(InvalidInputError, ValueError)


def test_calculator_and_qm9_use_the_same_table():
    from molkrr.calculator import ev_per_unit as calc_ev_per_unit
    from molkrr.datasets.qm9 import UNITS, _unit_factor

    assert calc_ev_per_unit is ev_per_unit
    assert set(UNITS) == set(ENERGY_UNITS)
    for u in UNITS:
        assert _unit_factor(u) == unit_factor("Ha", u)
