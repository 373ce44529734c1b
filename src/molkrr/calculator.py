"""An ASE calculator for trained molkrr models: energies in eV, forces in eV/Å.

>>> from molkrr.calculator import MolkrrCalculator
>>> atoms.calc = MolkrrCalculator("model.npz")          # or a fitted MolecularKRR
>>> BFGS(atoms).run(fmax=0.05)

The model predicts in its ``energy_unit`` (forces in energy_unit/Å); the calculator multiplies
both by the value of one such unit in eV, taken from :mod:`ase.units`. Energy and forces come
from one :meth:`MolecularKRR.predict_energies_and_forces` call and are cached by ASE until the
atoms change.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .errors import InputTypeError, InvalidInputError, MoleculeError, NotDifferentiableError
from .molecules import MIN_INTERATOMIC_DISTANCE, Molecules
from .units import ENERGY_UNITS, canonical_unit, ev_per_unit  # unit table: molkrr.units; re-exported

__all__ = ["MolkrrCalculator", "ENERGY_UNITS", "ev_per_unit"]

class MolkrrCalculator(Calculator):
    """ASE calculator wrapping a fitted :class:`molkrr.MolecularKRR` (molecules only, no periodic cells).

    Parameters
    ----------
    model : MolecularKRR or path, optional
        A fitted model, or the path of a model file written by :func:`molkrr.save_model`
        (read with :func:`molkrr.load_model`: npz + JSON, never pickle).
    model_path : path, optional
        Alternative keyword for a model file; give ``model`` or ``model_path``, not both.
    energy_unit : str, optional
        Unit the model predicts energies in ('eV', 'meV', 'Ha', 'kcal/mol', 'kJ/mol'); overrides
        ``model.energy_unit``. One of the two must be known: ASE works in eV.
    allow_elements : list of str or int, optional
        Elements the model was not trained on that it may be asked about anyway (only where its
        representation is defined for them, see :func:`molkrr.applicability.allow_elements`).
        Without this, such atoms raise UnseenElementError.
    uncertainty : bool
        Also compute the posterior standard deviations of energy and forces (:mod:`molkrr.uncertainty`)
        with every calculation, as the results ``energy_std`` (eV) and ``forces_std`` (n_atoms, 3) in
        eV/Å (``calc.get_property('energy_std', atoms)``). Off by default: it costs a Jacobian and a
        triangular solve per call. A model that cannot give them raises UncertaintyNotSupportedError here.
    **kwargs
        Passed on to :class:`ase.calculators.calculator.Calculator` (``label``, ``directory``, ...).

    Attributes
    ----------
    model : the MolecularKRR in use.
    energy_unit : str — canonical spelling of the model's unit.
    ev_per_unit : float — eV per model energy unit (forces: eV/Å per energy_unit/Å).
    n_model_calls : int — number of model evaluations so far (ASE caches results between them).
    calculate_seconds : float — wall time spent in :meth:`calculate` so far (validation and model).

    Results: ``energy`` and ``free_energy`` (eV, equal: the model has no electronic entropy),
    ``forces`` (n_atoms, 3) in eV/Å.

    Raises
    ------
    InvalidInputError (ValueError)
        No energy unit known, an unknown unit, or both/neither of model and model_path.
    ModelFileError
        The model file is missing, corrupt or not a molkrr model.
    MoleculeError subclasses
        At calculation: periodic boundary conditions (``MoleculeError``), non-finite coordinates,
        coincident atoms, atomic numbers outside 1..118; UnseenElementError for an element the
        model was not trained on; RepresentationSizeError for a molecule larger than it was fitted for.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    name = "molkrr"

    def __init__(
        self,
        model: Any = None,
        *,
        model_path: str | os.PathLike | None = None,
        energy_unit: str | None = None,
        allow_elements: Any = None,
        uncertainty: bool = False,
        **kwargs: Any,
    ) -> None:
        if model is not None and model_path is not None:
            raise InvalidInputError("give either model or model_path, not both")
        if model is None and model_path is None:
            raise InvalidInputError("no model: pass a fitted MolecularKRR or the path of a saved model")
        if model is None or isinstance(model, (str, os.PathLike)):
            from .model import MolecularKRR
            from .persistence import load_model

            model = load_model(model if model is not None else model_path, kind=MolecularKRR)
        from sklearn.utils.validation import check_is_fitted

        from .model import MolecularKRR

        if not isinstance(model, MolecularKRR):
            raise InputTypeError(f"model must be a fitted molkrr.MolecularKRR or a model file path, got {type(model).__name__}")
        check_is_fitted(model)
        if allow_elements:
            import copy

            from .applicability import allow_elements as _allow

            model = _allow(copy.copy(model), allow_elements)  # the caller's model keeps its own element list
        unit = energy_unit if energy_unit is not None else getattr(model, "energy_unit", None)
        if unit is None:
            raise InvalidInputError(
                "the model's energy unit is unknown: pass energy_unit= (e.g. 'eV', 'kcal/mol', 'Ha') "
                "or fit MolecularKRR(..., energy_unit=...); ASE needs energies in eV"
            )
        self.ev_per_unit = ev_per_unit(unit)
        self.energy_unit = canonical_unit(unit)
        self.model = model
        self.n_model_calls = 0
        self.calculate_seconds = 0.0
        self.uncertainty = bool(uncertainty)
        self._force_std = False
        if self.uncertainty:  # molkrr.uncertainty: refuse a model that cannot give a std now, not mid-run
            from .errors import UncertaintyNotSupportedError
            from .uncertainty import check_supported

            check_supported(model)
            try:
                check_supported(model, forces=True)
                self._force_std = True
            except (UncertaintyNotSupportedError, NotDifferentiableError):  # e.g. a Laplacian kernel: energy std only
                pass
            extra = ["energy_std", "forces_std"] if self._force_std else ["energy_std"]
            self.implemented_properties = [*type(self).implemented_properties, *extra]
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return f"MolkrrCalculator(model={type(self.model).__name__}(...), energy_unit={self.energy_unit!r})"

    def check_state(self, atoms: Any, tol: float = 1e-15) -> list[str]:
        """ASE's check for changes since the last calculation (``compare_atoms``), made cheap.

        ASE asks this on every property read (an MD step reads the forces three times and computes them
        once); its ``compare_atoms`` runs ``np.allclose`` on each of six properties, which costs about a
        third of a small model's prediction. The same answer, property by property: bitwise-equal arrays
        are unchanged, others are compared as ASE does (``|a − b| ≤ tol`` everywhere, rtol = 0).
        """
        old = self.atoms
        if old is None:
            return list(all_changes)
        changes = []
        for prop in all_changes:
            if prop in self.ignored_changes:
                continue
            if prop in ("cell", "pbc"):
                a, b = getattr(old, prop), getattr(atoms, prop)
            else:
                a, b = old.arrays.get(prop), atoms.arrays.get(prop)
                if a is None and b is None:
                    continue
            if a is None or b is None or not _close(a, b, tol):
                changes.append(prop)
        return changes

    def calculate(
        self,
        atoms: Any = None,
        properties: Any = ("energy",),
        system_changes: Any = tuple(all_changes),
    ) -> None:
        """Fill ``self.results`` with energy, free_energy (eV) and forces (eV/Å) for ``atoms``."""
        t0 = time.perf_counter()
        try:
            self._calculate(atoms, properties, system_changes)
        finally:
            self.calculate_seconds += time.perf_counter() - t0

    def _calculate(self, atoms: Any, properties: Any, system_changes: Any) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if np.any(atoms.pbc):
            raise MoleculeError(
                f"periodic boundary conditions (pbc={atoms.pbc.tolist()}) are not supported: molkrr's "
                "representations are molecular; set atoms.pbc = False for an isolated molecule"
            )
        mol = self._molecule(atoms)
        self.n_model_calls += 1
        try:
            energies, forces = self.model.predict_energies_and_forces(mol)
        except NotDifferentiableError:
            if "forces" in properties:
                raise PropertyNotImplementedError(
                    "forces: this model is not differentiable with respect to positions"
                ) from None
            energies, forces = self.model.predict(mol), None
        energy = float(energies[0]) * self.ev_per_unit
        if not np.isfinite(energy):  # pragma: no cover - guarded by validation upstream
            raise InvalidInputError("the model returned a non-finite energy")
        self.results = {"energy": energy, "free_energy": energy}
        if forces is not None:
            self.results["forces"] = np.asarray(forces[0], dtype=np.float64) * self.ev_per_unit
        if self.uncertainty:
            self._add_std(mol, with_forces=forces is not None)

    def _molecule(self, atoms: Any) -> Molecules:
        """The validated one-molecule batch of ``atoms``.

        When only positions changed since the last full validation (an MD or optimiser step), the
        validated atomic numbers are kept and only the positions are checked: finite, and no two atoms
        closer than :data:`molkrr.molecules.MIN_INTERATOMIC_DISTANCE` (a failing check falls back to the
        full validation, which raises the usual error). Saves most of the validation's cost per step.
        """
        positions = atoms.get_positions()
        last = getattr(self, "_last_molecule", None)
        if last is not None and np.array_equal(last.numbers, atoms.numbers):
            if np.isfinite(positions).all() and _min_distance_squared(positions) >= MIN_INTERATOMIC_DISTANCE**2:
                return Molecules(last.numbers, positions, last.offsets, validate=False)
        mol = Molecules.from_list([atoms.get_atomic_numbers()], [positions])  # validates
        self._last_molecule = mol
        return mol

    def _add_std(self, mol: Molecules, with_forces: bool) -> None:
        """``energy_std`` (eV) and, where the model gives it, ``forces_std`` (eV/Å) into the results."""
        from .uncertainty import energy_and_force_std, energy_std

        if with_forces and self._force_std:
            e_std, (f_std,) = energy_and_force_std(self.model, mol)
            self.results["forces_std"] = np.asarray(f_std, dtype=np.float64) * self.ev_per_unit
        else:
            e_std = energy_std(self.model, mol)
        self.results["energy_std"] = float(e_std[0]) * self.ev_per_unit

def _min_distance_squared(positions: np.ndarray) -> float:
    """Smallest squared interatomic distance of one molecule (inf for a single atom)."""
    if len(positions) < 2:
        return np.inf
    diff = positions[:, None, :] - positions[None, :, :]
    d2 = np.einsum("ijk,ijk->ij", diff, diff)
    np.fill_diagonal(d2, np.inf)
    return float(d2.min())


def _close(a: Any, b: Any, tol: float) -> bool:
    """``ase.calculators.calculator.equal(a, b, atol=tol)`` for arrays, without np.allclose's overhead."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if np.array_equal(a, b):
        return True
    if a.dtype == bool or b.dtype == bool:
        return False
    return bool(np.all(np.abs(a - b) <= tol))  # = np.allclose(a, b, rtol=0, atol=tol): NaN is never close
