"""MolkrrCalculator: unit conversion, forces = −∂E/∂R, ASE caching, optimisation, NVE MD, errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from molkrr import CoulombMatrix, MolecularKRR, Molecules
from molkrr.calculator import ENERGY_UNITS, MolkrrCalculator, ev_per_unit
from molkrr.datasets import load_qm9
from molkrr.errors import (
    CoincidentAtomsError,
    InvalidInputError,
    ModelFileError,
    MoleculeError,
    NonFiniteCoordinatesError,
    NotDifferentiableError,
    RepresentationSizeError,
    UnknownElementError,
)

# Value of one unit in eV (CODATA 2014, ase.units' default): written out so the conversion is checked
# against numbers that do not come from the code under test.
EV_PER = {"eV": 1.0, "meV": 1e-3, "Ha": 27.211386024, "kcal/mol": 0.0433641043, "kJ/mol": 0.0103642696}


@pytest.fixture(scope="module")
def qm9():
    return load_qm9(201, seed=3, unit="eV")


@pytest.fixture(scope="module")
def model(qm9):
    """A tiny model: 200 QM9 molecules, unsorted Coulomb matrix, fixed σ and λ (no selection)."""
    return MolecularKRR(CoulombMatrix("unsorted"), kernel="gaussian", sigma=30.0, lam=1e-8, energy_unit="eV").fit(
        qm9[:200]
    )


def perturbed_atoms(qm9, i: int, scale: float = 0.03, seed: int = 0) -> Atoms:
    numbers, positions = qm9.molecule(i)
    rng = np.random.default_rng(seed)
    return Atoms(numbers=numbers, positions=positions + rng.normal(scale=scale, size=positions.shape))


# ------------------------------------------------------------------------------------------ values
def test_energy_and_forces_are_the_model_predictions_in_ev(qm9, model):
    atoms = perturbed_atoms(qm9, 200)
    E, F = model.predict_energies_and_forces(Molecules.from_ase(atoms))
    atoms.calc = MolkrrCalculator(model)
    assert atoms.get_potential_energy() == pytest.approx(E[0], rel=1e-14)
    forces = atoms.get_forces()
    assert forces.shape == (len(atoms), 3) and forces.dtype == np.float64
    np.testing.assert_allclose(forces, F[0], rtol=1e-14, atol=0)
    assert np.abs(forces).max() > 1e-3  # a perturbed molecule feels forces


@pytest.mark.parametrize("unit", ENERGY_UNITS)
def test_unit_conversion(qm9, model, unit):
    """energy_unit overrides the model's: predictions are multiplied by the unit's value in eV."""
    assert ev_per_unit(unit) == pytest.approx(EV_PER[unit], rel=1e-8)
    assert ev_per_unit(unit) == pytest.approx(
        {"eV": 1, "meV": 1e-3, "Ha": units.Hartree, "kcal/mol": units.kcal / units.mol, "kJ/mol": units.kJ / units.mol}[unit],
        rel=1e-14,
    )
    atoms = perturbed_atoms(qm9, 5)
    E, F = model.predict_energies_and_forces(Molecules.from_ase(atoms))
    calc = MolkrrCalculator(model, energy_unit=unit)
    assert calc.energy_unit == unit
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(E[0] * EV_PER[unit], rel=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), F[0] * EV_PER[unit], rtol=1e-8)


def test_unit_aliases_and_model_unit():
    assert ev_per_unit("hartree") == ev_per_unit("Ha") == ev_per_unit("HA")
    assert ev_per_unit("KCAL/MOL") == ev_per_unit("kcal/mol")
    with pytest.raises(InvalidInputError, match="unknown energy unit"):
        ev_per_unit("furlong")
    with pytest.raises(ValueError):
        ev_per_unit(None)


def test_forces_are_minus_the_gradient_of_the_calculator_energy(qm9, model):
    """Central finite differences of calc energies (h = 1e-4 Å) against the analytic forces."""
    atoms = perturbed_atoms(qm9, 200, scale=0.05)
    atoms.calc = MolkrrCalculator(model, energy_unit="kcal/mol")  # a non-trivial conversion factor
    forces = atoms.get_forces()
    p0 = atoms.positions.copy()
    h = 1e-4
    fd = np.zeros_like(forces)
    for a in range(len(atoms)):
        for k in range(3):
            e = []
            for s in (+h, -h):
                p = p0.copy()
                p[a, k] += s
                atoms.positions = p
                e.append(atoms.get_potential_energy())
            fd[a, k] = -(e[0] - e[1]) / (2 * h)
    err = np.abs(forces - fd).max() / np.abs(fd).max()
    assert err <= 1e-6, f"relative force error {err:.2e}"


# ------------------------------------------------------------------------------------------ ASE contract
def test_one_model_call_per_geometry(qm9, model, monkeypatch):
    calls = []
    original = model.predict_energies_and_forces

    def counting(mols):
        calls.append(1)
        return original(mols)

    calc = MolkrrCalculator(model)
    monkeypatch.setattr(calc.model, "predict_energies_and_forces", counting)
    atoms = perturbed_atoms(qm9, 7)
    atoms.calc = calc
    f1 = atoms.get_forces()
    e1 = atoms.get_potential_energy()  # energy came with the forces
    f2 = atoms.get_forces()
    assert len(calls) == 1 and calc.n_model_calls == 1
    assert f2 is not None and np.array_equal(f1, f2)
    atoms.positions[0, 0] += 0.01  # a change of geometry triggers a new evaluation
    e2 = atoms.get_potential_energy()
    assert len(calls) == 2 and e2 != e1
    assert np.array_equal(atoms.get_forces(), calc.results["forces"]) and len(calls) == 2
    atoms.calc.calculate(atoms, ["energy"])  # explicit calculate always recomputes
    assert len(calls) == 3


def test_free_energy_and_unsupported_properties(qm9, model):
    atoms = perturbed_atoms(qm9, 3)
    atoms.calc = MolkrrCalculator(model)
    assert atoms.calc.get_property("free_energy", atoms) == atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_optimisation_lowers_the_energy(qm9, model):
    atoms = perturbed_atoms(qm9, 3, scale=0.03)
    atoms.calc = MolkrrCalculator(model)
    e0 = atoms.get_potential_energy()
    f0 = np.abs(atoms.get_forces()).max()
    opt = BFGS(atoms, logfile=None)
    converged = opt.run(fmax=0.05, steps=100)
    assert converged
    assert atoms.get_potential_energy() < e0 - 1e-3
    assert np.abs(atoms.get_forces()).max() < min(0.05, f0)


def test_optimisation_finds_the_minimum_of_a_learned_potential():
    """Learn a spring potential E = Σ (r_ij − r⁰_ij)² around water; BFGS must return to r⁰."""
    ref = Atoms("OH2", positions=[[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]])
    iu = np.triu_indices(3, 1)

    def distances(R):
        return np.linalg.norm(R[:, None] - R[None], axis=-1)[iu]

    d0 = distances(ref.positions)
    rng = np.random.default_rng(0)
    geoms = [ref.positions + rng.normal(scale=0.05, size=(3, 3)) for _ in range(100)]
    train = Molecules.from_list([ref.numbers] * 100, geoms, [((distances(R) - d0) ** 2).sum() for R in geoms])
    m = MolecularKRR(CoulombMatrix("unsorted"), kernel="gaussian", sigma=1.0, lam=1e-8, energy_unit="eV").fit(train)
    atoms = Atoms(ref.numbers, ref.positions + np.random.default_rng(5).normal(scale=0.04, size=(3, 3)))
    assert np.abs(distances(atoms.positions) - d0).max() > 0.03
    atoms.calc = MolkrrCalculator(m)
    assert BFGS(atoms, logfile=None).run(fmax=0.005, steps=100)
    assert np.abs(distances(atoms.positions) - d0).max() < 0.02


def test_nve_md_conserves_energy(qm9, model):
    atoms = perturbed_atoms(qm9, 200, scale=0.02)
    atoms.calc = MolkrrCalculator(model)
    rng = np.random.default_rng(1)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 300.0))  # ~300 K
    totals, kinetic = [], []

    def record():
        kinetic.append(atoms.get_kinetic_energy())
        totals.append(atoms.get_potential_energy() + kinetic[-1])

    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs, logfile=None)
    dyn.attach(record, interval=1)
    dyn.run(60)
    totals, kinetic = np.array(totals), np.array(kinetic)
    assert len(totals) == 61
    assert np.ptp(kinetic) > 0.05  # energy really flows between kinetic and potential (~0.1 eV)
    drift = np.ptp(totals)  # ~2e-6 eV here; inconsistent forces give drifts of the order of ptp(kinetic)
    assert drift < 1e-3 * np.ptp(kinetic), f"total energy varies by {drift:.2e} eV (kinetic by {np.ptp(kinetic):.2e} eV)"


# ------------------------------------------------------------------------------------------ models from files
def test_model_file_gives_identical_results(qm9, model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    atoms = perturbed_atoms(qm9, 11)
    atoms.calc = MolkrrCalculator(model)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    for calc in (MolkrrCalculator(str(path)), MolkrrCalculator(path), MolkrrCalculator(model_path=path)):
        assert calc.energy_unit == "eV" and "energy_unit='eV'" in repr(calc)
        a = atoms.copy()
        a.calc = calc
        assert a.get_potential_energy() == e
        assert np.array_equal(a.get_forces(), f)


def test_bad_model_arguments(model, tmp_path):
    with pytest.raises(ModelFileError):
        MolkrrCalculator(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ModelFileError):
        MolkrrCalculator(model_path=bad)
    with pytest.raises(InvalidInputError, match="not both"):
        MolkrrCalculator(model, model_path=bad)
    with pytest.raises(InvalidInputError, match="no model"):
        MolkrrCalculator()
    with pytest.raises(TypeError):
        MolkrrCalculator(object())
    with pytest.raises(ValueError):  # sklearn's NotFittedError
        MolkrrCalculator(MolecularKRR(energy_unit="eV"))
    with pytest.raises(InvalidInputError, match="unknown energy unit"):
        MolkrrCalculator(model, energy_unit="kcal")


def test_missing_energy_unit(qm9, model):
    unitless = MolecularKRR(CoulombMatrix("unsorted"), sigma=30.0, lam=1e-8).fit(qm9[:20])
    with pytest.raises(InvalidInputError, match="energy_unit") as info:
        MolkrrCalculator(unitless)
    assert isinstance(info.value, ValueError) and "eV" in str(info.value)
    calc = MolkrrCalculator(unitless, energy_unit="Ha")  # an explicit unit makes it usable
    atoms = perturbed_atoms(qm9, 0)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(
        unitless.predict(Molecules.from_ase(atoms))[0] * units.Hartree, rel=1e-14
    )


# ------------------------------------------------------------------------------------------ bad atoms
@pytest.mark.parametrize("pbc", [True, (True, False, False)])
def test_periodic_cells_are_rejected(qm9, model, pbc):
    atoms = perturbed_atoms(qm9, 0)
    atoms.cell = [20.0, 20.0, 20.0]
    atoms.pbc = pbc
    atoms.calc = MolkrrCalculator(model)
    with pytest.raises(MoleculeError, match="periodic"):
        atoms.get_potential_energy()
    atoms.pbc = False  # the same atoms as an isolated molecule are fine
    assert np.isfinite(atoms.get_potential_energy())


def test_bad_atoms_raise_typed_errors(qm9, model):
    calc = MolkrrCalculator(model)
    atoms = perturbed_atoms(qm9, 0)
    cases = []
    nan = atoms.copy()
    nan.positions[1, 2] = np.nan
    cases.append((nan, NonFiniteCoordinatesError))
    clash = atoms.copy()
    clash.positions[1] = clash.positions[0] + 1e-4
    cases.append((clash, CoincidentAtomsError))
    ghost = atoms.copy()
    ghost.numbers[0] = 0
    cases.append((ghost, UnknownElementError))
    big = Atoms("C30", positions=np.arange(90, dtype=float).reshape(30, 3))
    cases.append((big, RepresentationSizeError))
    for bad, error in cases:
        bad.calc = calc
        with pytest.raises(error):
            bad.get_forces()
        assert "energy" not in calc.results
    atoms.calc = calc  # the calculator is still usable afterwards
    assert np.isfinite(atoms.get_potential_energy())


def test_non_differentiable_model_gives_energy_but_no_forces(qm9, model, monkeypatch):
    calc = MolkrrCalculator(model)

    def refuse(mols):
        raise NotDifferentiableError("no derivative")

    monkeypatch.setattr(calc.model, "predict_energies_and_forces", refuse)
    atoms = perturbed_atoms(qm9, 0)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(model.predict(Molecules.from_ase(atoms))[0], rel=1e-14)
    with pytest.raises(PropertyNotImplementedError, match="not differentiable"):
        atoms.get_forces()


# ------------------------------------------------------------------------------------------ per-step overhead
def test_check_state_gives_ases_answer(qm9, model):
    """The calculator's cheap check_state agrees with ase's compare_atoms on every kind of change."""
    from ase.calculators.calculator import compare_atoms

    atoms = perturbed_atoms(qm9, 3)
    calc = MolkrrCalculator(model)
    assert calc.check_state(atoms) == compare_atoms(None, atoms)
    atoms.calc = calc
    atoms.get_forces()
    old = calc.atoms

    def changed(edit):
        new = atoms.copy()
        edit(new)
        return new

    cases = [
        lambda a: None,
        lambda a: a.set_momenta(np.ones((len(a), 3))),  # not a system change
        lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-10),
        lambda a: a.positions.__setitem__((2, 1), np.nan),
        lambda a: a.numbers.__setitem__(0, 9),
        lambda a: a.set_cell([5.0, 5.0, 5.0]),
        lambda a: a.set_pbc([True, False, False]),
        lambda a: a.set_initial_charges(np.arange(len(a), dtype=float)),
        lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
    ]
    for edit in cases:
        new = changed(edit)
        assert sorted(calc.check_state(new)) == sorted(compare_atoms(old, new, tol=1e-15))
    bigger = Atoms(numbers=list(atoms.numbers) + [1], positions=np.vstack([atoms.positions, [[9.0, 9.0, 9.0]]]))
    assert sorted(calc.check_state(bigger)) == sorted(compare_atoms(old, bigger, tol=1e-15))


def test_positions_are_validated_on_every_step(qm9, model):
    """After a full validation the calculator checks only positions while the elements stay; bad ones still raise."""
    calc = MolkrrCalculator(model)
    atoms = perturbed_atoms(qm9, 5)
    atoms.calc = calc
    atoms.get_forces()
    for value, error in ((np.nan, NonFiniteCoordinatesError), (None, CoincidentAtomsError)):
        moved = atoms.positions.copy()
        moved[1] = moved[0] + 1e-4 if value is None else value
        atoms.positions = moved
        with pytest.raises(error):
            atoms.get_forces()
    atoms.positions = perturbed_atoms(qm9, 5).positions
    atoms.numbers[0] = 0
    with pytest.raises(UnknownElementError):
        atoms.get_forces()
    atoms = perturbed_atoms(qm9, 6)  # another molecule through the same calculator: same results as a fresh one
    atoms.calc = calc
    np.testing.assert_array_equal(atoms.get_forces(), model.predict_energies_and_forces(Molecules.from_ase(atoms))[1][0])
    assert calc.calculate_seconds > 0
