"""On-the-fly learning: MD with a force field that calls the reference method (GFN2-xTB) where it is unsure.

>>> from molkrr.active import learn_on_the_fly
>>> from molkrr.datasets.md import xtb_calculator, builtin_molecule
>>> result = learn_on_the_fly(builtin_molecule("ethanol"), xtb_calculator("GFN2-xTB"), threshold=0.05, steps=5000)
>>> result.model, result.frames, print(result.report.summary())

The loop (as FLARE's and VASP's on-the-fly learning, with the posterior of a KRR model as the signal):

1. the start geometry is labelled by the reference calculator and a first model is fitted on it;
2. Langevin MD runs on the model; at every step the model predicts energy, forces **and** the posterior
   standard deviation of every force component (:mod:`molkrr.uncertainty`);
3. where the largest force std of the step exceeds ``threshold`` (eV/Å), the reference labels that
   geometry, its energy and forces drive this step, the frame joins the training set and the model is
   refitted — by extending the Cholesky factor of the last fit with the new frame's rows
   (:meth:`molkrr.MolecularKRR.fit_appended`, O(n²) per frame instead of O(n³)) unless σ, λ, λ_F were just
   re-selected; else the model's energy and forces drive it.

The model is a :class:`~molkrr.MolecularKRR` trained on energies and forces (default: local FCHL19, Gaussian
kernel, ``targets='energy+forces'``, eV). Its σ, λ and λ_F, when not given in ``model``, start from a rule
(σ = :data:`INITIAL_SIGMA_FACTOR` × the median distance between same-element environments of the start
geometry; both ridges :data:`INITIAL_RELATIVE_LAM` × the mean diagonal of their kernel blocks, the scale of
:func:`molkrr.force_selection.select_force_hyperparameters`' grid) and are re-selected by that function on the
labelled frames whenever their number reaches one of :data:`RESELECT_AT`, by the GP evidence (marginal
likelihood) rather than a validation block: the labelled frames are the ones the model was unsure of, no fair
sample of the trajectory, and a block of them chose σ four times too wide on ethanol (docs/forces.md §7).
Between selections a refit keeps σ, λ and λ_F.

Units: energies eV, forces and their std eV/Å (the reference calculator's, ASE's). Temperatures in K,
time step in fs, Langevin friction in 1/fs.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = ["INITIAL_RELATIVE_LAM", "INITIAL_SIGMA_FACTOR", "LearnReport", "LearnResult", "RESELECT_AT",
           "default_model", "learn_on_the_fly"]

#: Initial σ as a multiple of the median distance between same-element environments of the start geometry
#: (the σ selected on 200 frames of the shipped ethanol trajectory is 2.9 × that of its first frame).
INITIAL_SIGMA_FACTOR = 3.0
#: Initial ridges, relative to the mean diagonal of the energy and gradient blocks (ethanol's selection: 1e-6).
INITIAL_RELATIVE_LAM = 1e-6
#: σ, λ, λ_F are re-selected (when the model does not fix them) as the labelled frames reach these counts.
RESELECT_AT = (20, 40, 80, 160, 320, 640)


def default_model() -> Any:
    """The model on-the-fly learning trains unless given one: local FCHL19, Gaussian kernel, energies and forces, eV."""
    from .model import MolecularKRR
    from .representations import FCHL19

    return MolecularKRR(FCHL19(form="atomic"), kernel="gaussian", sigma=None, lam=None, lam_forces=None,
                        targets="energy+forces", energy_unit="eV")


@dataclass
class LearnReport:
    """What :func:`learn_on_the_fly` did. Times in s, energies eV, forces and std eV/Å."""

    formula: str
    n_atoms: int
    steps: int  # MD steps completed
    steps_requested: int
    timestep_fs: float
    temperature_K: float
    threshold: float
    check_every: int
    reference_calls: int  # the start's label included
    refits: int
    full_fits: int  # refits that factorised from scratch (the others extended the last factor)
    selections: int
    wall_s: float
    reference_s: float  # inside the reference calculator
    fit_s: float  # refits and selections
    model_s: float  # model predictions with std
    sigma: float
    lam: float
    lam_forces: float
    interrupted: bool = False
    stopped_by_max_calls: bool = False
    called_at: list[int] = field(default_factory=list)  # MD steps whose forces came from the reference
    max_std: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per step (NaN where not predicted)

    def summary(self) -> str:
        """The closing report, several lines of text."""
        md = self.wall_s - self.reference_s - self.fit_s - self.model_s
        lines = [
            f"on-the-fly learning: {self.steps} Langevin steps of {self.timestep_fs:g} fs at {self.temperature_K:g} K, "
            f"{self.formula} ({self.n_atoms} atoms), threshold {self.threshold:g} eV/Å on the largest force std "
            f"(checked every {self.check_every} steps)"
            + (f" (interrupted after {self.steps} of {self.steps_requested} steps)" if self.interrupted else ""),
            f"reference calls: {self.reference_calls} (start included); refits {self.refits} ({self.full_fits} from "
            f"scratch, the others extending the factor), hyperparameter selections {self.selections}; "
            f"final sigma={self.sigma:.4g}, lambda={self.lam:.3g}, "
            f"lambda_forces={self.lam_forces:.3g}",
            f"wall time {self.wall_s:.1f} s: reference {self.reference_s:.1f} s, fitting {self.fit_s:.1f} s, "
            f"model with std {self.model_s:.1f} s, integrator and output {md:.1f} s",
        ]
        finite = self.max_std[np.isfinite(self.max_std)]
        if finite.size:
            lines.append(f"largest force std per step: median {np.median(finite):.4g}, last 100 steps' max "
                         f"{finite[-100:].max():.4g} eV/Å")
        if self.stopped_by_max_calls:
            lines.append("the reference-call budget was spent: later steps ran on the model alone")
        return "\n".join(lines)


@dataclass
class LearnResult:
    """The fitted model, the labelled frames (energies eV, forces eV/Å) and the report."""

    model: Any
    frames: Any  # molkrr.Molecules
    report: LearnReport


class _Learner:
    """The labelled frames and the model fitted on them; refits and re-selections."""

    def __init__(self, template: Any, reference: Any, progress: bool) -> None:
        from sklearn.base import clone

        self.template = template
        self.model = clone(template)
        self.reference = reference
        self.progress = progress
        self.numbers: np.ndarray | None = None
        self.positions: list[np.ndarray] = []
        self.energies: list[float] = []
        self.forces: list[np.ndarray] = []
        self.fixed = {k: template.get_params()[k] for k in ("sigma", "lam", "lam_forces")}
        self.hyper: dict[str, float] = {}
        self.refits = self.selections = self.full_fits = self.fitted = 0
        self.reference_s = self.fit_s = 0.0

    def label(self, atoms: Any) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (eV/Å) of ``atoms`` from the reference; the frame joins the training set."""
        t0 = time.perf_counter()
        frame = atoms.copy()
        frame.set_constraint()
        frame.calc = self.reference
        energy = float(frame.get_potential_energy())
        forces = np.array(frame.get_forces(), dtype=np.float64)
        self.reference_s += time.perf_counter() - t0
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise InvalidInputError("the reference calculator returned a non-finite energy or forces")
        if self.numbers is None:
            self.numbers = np.array(atoms.numbers)
        self.positions.append(np.array(atoms.positions, dtype=np.float64))
        self.energies.append(energy)
        self.forces.append(forces)
        return energy, forces

    def frames(self) -> Any:
        from .molecules import Molecules

        n = len(self.positions)
        return Molecules.from_list([self.numbers] * n, self.positions, np.array(self.energies), self.forces)

    def refit(self) -> None:
        """Fit on every labelled frame; σ, λ, λ_F from the model, the last selection, or the initial rule."""
        t0 = time.perf_counter()
        mols = self.frames()
        n = len(mols)
        free = [k for k, v in self.fixed.items() if v is None]
        params = {**self.hyper, **{k: v for k, v in self.fixed.items() if v is not None}}
        if free and (not self.hyper or n in RESELECT_AT):
            self.hyper = self._select(mols) if n >= RESELECT_AT[0] else self._initial(mols)
            params = {**self.hyper, **{k: v for k, v in self.fixed.items() if v is not None}}
        elif self.fitted and self.fitted == n - 1:  # same σ, λ, λ_F: extend the kept Cholesky factor by the new frame's rows
            self.model.fit_appended(mols, n - 1)
            self.fitted = n
            self.refits += 1
            self.fit_s += time.perf_counter() - t0
            return
        self.model.set_params(**params)
        self.model.fit(mols)
        self.fitted = n
        self.refits += 1
        self.full_fits += 1
        self.fit_s += time.perf_counter() - t0

    def _representation(self, mols: Any) -> Any:
        """A fitted copy of the model's representation (the model's own stays unfitted, as scikit-learn asks)."""
        from sklearn.base import clone

        from .representations.coulomb import CoulombMatrix

        rep = self.template.representation
        return (CoulombMatrix() if rep is None else clone(rep)).fit(mols)

    def _initial(self, mols: Any) -> dict[str, float]:
        from .derivative_krr import gram_matrix, row_layout, training_environments
        from .force_selection import median_environment_distance

        env, _ = training_environments(self._representation(mols), mols[:1], "energy+forces")
        from .kernels import make_kernel

        sigma = self.fixed["sigma"] or INITIAL_SIGMA_FACTOR * median_environment_distance(env)
        kernel = make_kernel(self.template.kernel).with_sigma(sigma)
        rows = row_layout(env, "energy+forces")
        diag = np.diagonal(gram_matrix(kernel, env, "energy+forces", rows))
        is_energy = np.zeros(diag.shape[0], dtype=bool)
        is_energy[rows[:-1]] = True
        return {"sigma": float(sigma), "lam": float(INITIAL_RELATIVE_LAM * diag[is_energy].mean()),
                "lam_forces": float(INITIAL_RELATIVE_LAM * diag[~is_energy].mean())}

    def _select(self, mols: Any) -> dict[str, float]:
        import warnings

        from .force_selection import GridEdgeWarning, select_force_hyperparameters

        self.selections += 1
        with warnings.catch_warnings():  # a few labelled frames often select on an edge; the report gives the choice
            warnings.simplefilter("ignore", GridEdgeWarning)
            sel = select_force_hyperparameters(
                self._representation(mols), mols, mols.energies, kernel=self.template.kernel, targets=self.template.targets,
                sigmas=None if self.fixed["sigma"] is None else [self.fixed["sigma"]],
                lams=None if self.fixed["lam"] is None else [self.fixed["lam"]],
                lam_forces=None if self.fixed["lam_forces"] is None else [self.fixed["lam_forces"]],
                center=self.template.center, score="evidence")
        if self.progress:
            print(f"\n{len(mols)} frames: selected sigma={sel.sigma:.4g}, lambda={sel.lam:.3g}, "
                  f"lambda_forces={sel.lam_forces:.3g}", file=sys.stderr)
        return {"sigma": float(sel.sigma), "lam": float(sel.lam), "lam_forces": float(sel.lam_forces)}


def _active_calculator_class() -> type:
    from ase.calculators.calculator import Calculator, all_changes

    class ActiveCalculator(Calculator):
        """Model energy and forces, or the reference's where the model's largest force std exceeds the threshold."""

        implemented_properties = ["energy", "free_energy", "forces"]

        def __init__(self, learner: _Learner, threshold: float, max_calls: int | None, ev_per_unit: float,
                     check_every: int) -> None:
            super().__init__()
            self.check_every = check_every
            self.learner = learner
            self.threshold = threshold
            self.max_calls = max_calls
            self.ev_per_unit = ev_per_unit
            self.step = 0
            self.last_std = math.nan
            self.called_at: list[int] = []
            self.model_s = 0.0
            self.budget_spent = False

        def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = tuple(all_changes)):
            super().calculate(atoms, properties, system_changes)
            from .molecules import Molecules

            t0 = time.perf_counter()
            mol = Molecules.from_list([self.atoms.numbers], [self.atoms.positions])
            check = self.step > 0 and self.step % self.check_every == 0  # step 0 is the labelled start
            if check:
                e, f, _, f_std = self.learner.model.predict_energies_and_forces(mol, return_std=True)
                self.last_std = float(np.max(f_std[0])) * self.ev_per_unit
            else:
                e, f = self.learner.model.predict_energies_and_forces(mol)
                self.last_std = math.nan
            self.model_s += time.perf_counter() - t0
            energy, forces = float(e[0]) * self.ev_per_unit, np.asarray(f[0]) * self.ev_per_unit
            calls = len(self.learner.energies)
            if check and self.last_std > self.threshold:
                if self.max_calls is not None and calls >= self.max_calls:
                    self.budget_spent = True
                else:
                    energy, forces = self.learner.label(self.atoms)
                    self.learner.refit()
                    self.called_at.append(self.step)
            self.results = {"energy": energy, "free_energy": energy, "forces": forces}

    return ActiveCalculator


def learn_on_the_fly(
    atoms: Any,
    reference: Any,
    *,
    threshold: float,
    steps: int,
    model: Any = None,
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    friction_per_fs: float = 0.01,
    seed: int = 0,
    max_calls: int | None = None,
    check_every: int = 10,
    trajectory: str | os.PathLike | None = None,
    interval: int = 10,
    progress: bool = False,
) -> LearnResult:
    """Langevin MD of ``atoms`` (an ase.Atoms; a copy is run) that learns a force field from ``reference``.

    reference : an ASE calculator (e.g. :func:`molkrr.datasets.md.xtb_calculator`), the labeller.
    threshold : eV/Å; a step whose largest predicted force std exceeds it is labelled by the reference.
    model : an unfitted MolecularKRR trained on forces (default :func:`default_model`); its σ, λ, λ_F when set
        are kept, else chosen as the module docstring says. Its energy unit must be eV (the reference's).
    max_calls : at most this many reference calls (the start's included); afterwards the model alone drives.
    check_every : predict the std (and maybe call the reference) every this many steps (default 10: 5 fs at
        0.5 fs); the steps between run on the model's energy and forces alone (a force std costs 20–60 predictions:
        O(n_train_rows²) per frame against O(n_train_rows)).
    trajectory : extended XYZ of every ``interval``-th step (energy, forces, momenta), written as the run goes.

    Returns a :class:`LearnResult`; a KeyboardInterrupt ends the run early with the model and frames so far.
    """
    from .dynamics import TrajectoryAppender, frame_with_results, integrator, run_steps
    from .units import ev_per_unit

    if not (isinstance(threshold, (int, float, np.floating)) and np.isfinite(threshold) and threshold > 0):
        raise InvalidInputError(f"threshold must be a positive number of eV/Å, got {threshold!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidInputError(f"steps must be an integer ≥ 1, got {steps!r}")
    for name, value in (("max_calls", max_calls), ("check_every", check_every)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise InvalidInputError(f"{name} must be an integer ≥ 1, got {value!r}")
    for name, value in (("timestep_fs", timestep_fs), ("friction_per_fs", friction_per_fs)):
        if not (np.isfinite(value) and value > 0):
            raise InvalidInputError(f"{name} must be a positive number, got {value!r}")
    if not (np.isfinite(temperature_K) and temperature_K >= 0):
        raise InvalidInputError(f"temperature_K must be a non-negative number, got {temperature_K!r}")
    template = default_model() if model is None else model
    if getattr(template, "targets", "energy") == "energy":
        raise InvalidInputError("on-the-fly learning trains on forces: give a model with targets='energy+forces' or 'forces'")
    unit = template.energy_unit or "eV"
    if ev_per_unit(unit) != 1.0:
        raise InvalidInputError(f"the model's energy unit must be eV (the reference calculator's), got {unit!r}")
    if np.any(atoms.pbc):
        raise InvalidInputError("periodic boundary conditions are not supported: molkrr's representations are molecular")

    atoms = atoms.copy()
    atoms.set_constraint()
    learner = _Learner(template, reference, progress)
    writer = TrajectoryAppender(trajectory) if trajectory is not None else None
    t_start = time.perf_counter()
    learner.label(atoms)
    learner.refit()
    calc = _active_calculator_class()(learner, float(threshold), max_calls, 1.0, int(check_every))
    atoms.calc = calc
    dyn = integrator(atoms, "langevin", timestep_fs=timestep_fs, temperature_K=temperature_K,
                     friction_per_fs=friction_per_fs, rng=np.random.default_rng(seed))
    max_std = np.full(steps + 1, np.nan)
    done = [0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"learn-md {atoms.get_chemical_formula()}", unit="step", file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
    info = {"energy_unit": "eV", "forces_unit": "eV/Ang", "length_unit": "Ang", "timestep_fs": float(timestep_fs)}

    def observe() -> None:
        step = dyn.nsteps
        max_std[step] = calc.last_std
        calc.step = step + 1  # the next force evaluation belongs to the next step
        done[0] = step
        if writer is not None and step % interval == 0:
            frame = frame_with_results(atoms, calc, {**info, "step": int(step), "time_fs": step * float(timestep_fs),
                                         "max_force_std": float(calc.last_std)})
            writer.write(frame)
        if bar is not None and step:
            bar.update(1)
            bar.set_postfix(calls=len(learner.energies), std=f"{calc.last_std:.3f}", refresh=False)

    def finish() -> None:
        for closer in (writer, bar):
            if closer is not None:
                closer.close()

    interrupted = run_steps(dyn, steps, observe, finish)
    wall = time.perf_counter() - t_start
    hyper = learner.model
    report = LearnReport(
        formula=atoms.get_chemical_formula(), n_atoms=len(atoms), steps=int(done[0]), steps_requested=int(steps),
        timestep_fs=float(timestep_fs), temperature_K=float(temperature_K), threshold=float(threshold),
        check_every=int(check_every),
        reference_calls=len(learner.energies), refits=learner.refits, full_fits=learner.full_fits,
        selections=learner.selections, wall_s=wall,
        reference_s=learner.reference_s, fit_s=learner.fit_s, model_s=calc.model_s,
        sigma=float(hyper.sigma_), lam=float(hyper.lam_), lam_forces=float(hyper.lam_forces_),
        interrupted=interrupted, stopped_by_max_calls=calc.budget_spent, called_at=list(calc.called_at),
        max_std=max_std[: done[0] + 1].copy(),
    )
    return LearnResult(model=learner.model, frames=learner.frames(), report=report)
