"""Molecular dynamics with a trained model: ASE's integrators driven by :class:`~molkrr.calculator.MolkrrCalculator`.

>>> from molkrr.dynamics import run_md
>>> report = run_md(model, atoms, steps=2000, timestep_fs=0.5, temperature_K=300, ensemble="nve",
...                 output="traj.extxyz", interval=10)
>>> print(report.summary())

What a run does: momenta from the Maxwell–Boltzmann distribution at ``temperature_K`` (seeded), centre-of-mass
motion and rotation removed (``Stationary``, ``ZeroRotation``); then velocity Verlet ('nve') or Langevin
('langevin', friction in 1/fs, the centre of mass held by ``FixCom``). Every step's potential and kinetic
energy are recorded from the calculator's cached results (no extra model call); every ``interval``-th frame
(step 0 included) goes to an extended XYZ file with its energy (eV), forces (eV/Å, the model's, before any
constraint) and momenta. The file appears whole with its first frame (:func:`molkrr._atomic.atomic_write`)
and later frames are appended one complete frame per write and flushed, so an interrupted run keeps every
frame it wrote.

The report puts the time per MD step beside the model's own prediction time for one frame (energy and
forces of the start geometry, best of :data:`PREDICT_REPEATS`), measured in the same run: their ratio is
the overhead of ASE, the calculator and the recording. Temperatures are 2 E_kin / (N_dof k_B) with
N_dof = 3N − 6 for NVE (momentum and angular momentum removed and conserved; 3N − 3 for N ≤ 2) and 3N − 3
for Langevin (the centre of mass fixed).
"""

from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._atomic import atomic_write
from .errors import InvalidInputError

__all__ = ["ENSEMBLES", "MDReport", "PREDICT_REPEATS", "TrajectoryAppender", "frame_with_results", "integrator",
           "run_md", "run_steps"]

#: Integrators ``run_md`` offers.
ENSEMBLES = ("nve", "langevin")
#: Prediction timings taken of the start geometry (after one warm-up call); the best is reported.
PREDICT_REPEATS = 10
_COMPRESSED = (".gz", ".bz2", ".xz", ".zip")


@dataclass
class MDReport:
    """What :func:`run_md` measured. Energies in eV, times in s unless named otherwise."""

    ensemble: str
    formula: str
    n_atoms: int
    steps: int  # steps completed (fewer than asked if interrupted)
    steps_requested: int
    timestep_fs: float
    temperature_K: float
    wall_s: float  # the steps (after the start's evaluation): integrator, model calls, recording, output, progress bar
    calculator_s: float  # of which inside MolkrrCalculator.calculate (validation and model)
    model_calls: int  # during the steps
    predict_s: float  # best of PREDICT_REPEATS predict_energies_and_forces of the start geometry
    dof: int
    frames_written: int = 0
    output: str | None = None
    interrupted: bool = False
    potential: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per recorded step (eV)
    kinetic: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def simulated_fs(self) -> float:
        return self.steps * self.timestep_fs

    @property
    def per_step_s(self) -> float:
        return self.wall_s / self.steps if self.steps else float("nan")

    @property
    def ratio(self) -> float:
        """Time per MD step / model prediction time of one frame."""
        return self.per_step_s / self.predict_s

    @property
    def temperatures(self) -> np.ndarray:
        from ase import units

        return 2.0 * self.kinetic / (self.dof * units.kB)

    @property
    def total_energy(self) -> np.ndarray:
        return self.potential + self.kinetic

    def energy_drift(self) -> tuple[float, float]:
        """(max |E_tot − E_tot(0)|, least-squares slope of E_tot over time), in meV/atom and meV/atom/ps."""
        e = 1000.0 * (self.total_energy - self.total_energy[0]) / self.n_atoms
        t_ps = np.arange(len(e)) * self.timestep_fs / 1000.0
        slope = float(np.polyfit(t_ps, e, 1)[0]) if len(e) > 1 else float("nan")
        return float(np.abs(e).max()), slope

    def summary(self) -> str:
        """The closing report, several lines of text."""
        kind = "NVE (velocity Verlet)" if self.ensemble == "nve" else "Langevin"
        lines = [
            f"{kind}: {self.steps} steps of {self.timestep_fs:g} fs = {self.simulated_fs:g} fs simulated, "
            f"{self.formula} ({self.n_atoms} atoms), velocities from {self.temperature_K:g} K"
            + (f" (interrupted after {self.steps} of {self.steps_requested} steps)" if self.interrupted else ""),
            f"wall time {self.wall_s:.3f} s: {1000 * self.per_step_s:.3f} ms per step "
            f"({1000 * self.calculator_s / max(self.steps, 1):.3f} ms of it in the calculator, "
            f"{self.model_calls} model calls)",
            f"model prediction of one frame (energy and forces, start geometry, best of {PREDICT_REPEATS}): "
            f"{1000 * self.predict_s:.3f} ms; per step / prediction = {self.ratio:.2f}",
        ]
        if self.ensemble == "nve" and self.steps:
            worst, slope = self.energy_drift()
            lines.append(f"total energy: max |E_tot - E_tot(0)| = {worst:.4f} meV/atom, linear drift {slope:+.4f} meV/atom/ps")
        T = self.temperatures
        lines.append(
            f"temperature: mean {T.mean():.1f} K, start {T[0]:.1f} K, final {T[-1]:.1f} K "
            f"(2 E_kin / (N_dof k_B), N_dof = {self.dof})"
        )
        if self.output:
            frames = f"{self.frames_written} frame" + ("" if self.frames_written == 1 else "s")
            lines.append(f"wrote {frames} to {self.output} (energy eV, forces eV/Å, momenta)")
        return "\n".join(lines)


class TrajectoryAppender:
    """Extended XYZ written one frame at a time: the first frame replaces ``path`` atomically, later frames are
    appended as one complete write each and flushed, so the file always ends on a whole frame unless the process
    dies inside a single write. Use as a context manager (close fsyncs the file)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if self.path.lower().endswith(_COMPRESSED):
            raise InvalidInputError(
                f"{self.path}: trajectories are written uncompressed (appended frame by frame); use .extxyz and compress afterwards"
            )
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise InvalidInputError(f"{self.path}: the folder {folder} does not exist")
        self.frames = 0
        self._fh: Any = None

    def write(self, atoms: Any) -> None:
        """Append one frame (an ase.Atoms with a calculator holding its energy and forces)."""
        import ase.io

        buf = io.StringIO()
        ase.io.write(buf, atoms, format="extxyz")
        text = buf.getvalue()
        if self._fh is None:
            atomic_write(self.path, lambda fh: fh.write(text), mode="w")
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        else:
            self._fh.write(text)
            self._fh.flush()
        self.frames += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "TrajectoryAppender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def time_prediction(model: Any, molecule: Any, repeats: int = PREDICT_REPEATS) -> float:
    """Best wall time (s) of ``model.predict_energies_and_forces(molecule)`` over ``repeats`` calls after one warm-up
    (which also compiles numba kernels and raises the model's errors for this molecule)."""
    model.predict_energies_and_forces(molecule)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_energies_and_forces(molecule)
        best = min(best, time.perf_counter() - t0)
    return float(best)


def integrator(atoms: Any, ensemble: str, *, timestep_fs: float, temperature_K: float, friction_per_fs: float,
               rng: np.random.Generator) -> Any:
    """The ASE integrator of ``atoms`` (which carry their calculator) after drawing velocities: Maxwell–Boltzmann at
    ``temperature_K`` from ``rng``, centre-of-mass motion and rotation removed; 'nve' is velocity Verlet, 'langevin'
    holds the centre of mass (``FixCom``) and shares ``rng``. Used by :func:`run_md` and :mod:`molkrr.active`."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet

    from .datasets.md import thermalize

    thermalize(atoms, temperature_K, rng)
    Stationary(atoms)
    if len(atoms) > 2:
        ZeroRotation(atoms)
    if ensemble == "nve":
        return VelocityVerlet(atoms, timestep_fs * units.fs)
    atoms.set_constraint(FixCom())  # ase's fixcm=True is deprecated
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction_per_fs / units.fs,
                    fixcm=False, rng=rng)


def run_steps(dyn: Any, steps: int, observe: Any, finish: Any) -> bool:
    """Run ``dyn`` for ``steps`` with ``observe()`` after every step (step 0 included) and ``finish()`` however the run
    ends (close the trajectory, the progress bar); True when a KeyboardInterrupt ended it early."""
    dyn.attach(observe, interval=1)
    try:
        dyn.run(steps)
    except KeyboardInterrupt:
        return True
    finally:
        finish()
    return False


def run_md(
    model: Any,
    atoms: Any,
    *,
    steps: int,
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    ensemble: str = "nve",
    friction_per_fs: float = 0.01,
    seed: int = 0,
    interval: int = 10,
    output: str | os.PathLike | None = None,
    energy_unit: str | None = None,
    progress: bool = False,
) -> MDReport:
    """Run MD of ``atoms`` (an ase.Atoms, modified in place: it ends at the last step) with a fitted MolecularKRR.

    Returns an :class:`MDReport`; a KeyboardInterrupt ends the run early with ``report.interrupted`` set (the
    trajectory keeps every frame written). Errors of the model (unseen elements, a molecule too large, atoms
    that collide) are raised as their typed :class:`~molkrr.errors.MolkrrError`.
    """
    from .calculator import MolkrrCalculator
    from .molecules import Molecules

    if ensemble not in ENSEMBLES:
        raise InvalidInputError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidInputError(f"steps must be an integer ≥ 1, got {steps!r}")
    if not isinstance(interval, (int, np.integer)) or interval < 1:
        raise InvalidInputError(f"interval must be an integer ≥ 1, got {interval!r}")
    for name, value, positive in (("timestep_fs", timestep_fs, True), ("temperature_K", temperature_K, False),
                                  ("friction_per_fs", friction_per_fs, True)):
        if not (np.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise InvalidInputError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")

    writer = TrajectoryAppender(output) if output is not None else None  # refuses a bad path before any work
    calc = MolkrrCalculator(model, energy_unit=energy_unit)
    predict_s = time_prediction(calc.model, Molecules.from_ase(atoms))
    atoms.calc = calc
    n = len(atoms)
    dyn = integrator(atoms, ensemble, timestep_fs=timestep_fs, temperature_K=temperature_K,
                     friction_per_fs=friction_per_fs, rng=np.random.default_rng(seed))
    dof = max(3 * n - 6 if n > 2 else 3 * n - 3, 1) if ensemble == "nve" else max(3 * n - 3, 1)

    potential = np.empty(steps + 1)
    kinetic = np.empty(steps + 1)
    recorded = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"MD {atoms.get_chemical_formula()} ({ensemble})", unit="step", file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
    info = {"energy_unit": "eV", "forces_unit": "eV/Ang", "length_unit": "Ang", "timestep_fs": float(timestep_fs)}

    mark = [time.perf_counter(), calc.calculate_seconds, calc.n_model_calls]  # reset after the start is recorded

    def observe() -> None:
        nonlocal recorded
        step = dyn.nsteps
        potential[recorded] = atoms.get_potential_energy()  # cached by ASE: no model call
        kinetic[recorded] = atoms.get_kinetic_energy()
        recorded += 1
        if writer is not None and step % interval == 0:
            writer.write(frame_with_results(atoms, calc, {**info, "step": int(step), "time_fs": step * float(timestep_fs)}))
        if step == 0:  # the timings cover the steps only, not the start's evaluation and first write
            mark[:] = [time.perf_counter(), calc.calculate_seconds, calc.n_model_calls]
        elif bar is not None:
            bar.update(1)

    wall = 0.0

    def finish() -> None:
        nonlocal wall
        wall = time.perf_counter() - mark[0]  # before the writer's fsync
        for closer in (writer, bar):
            if closer is not None:
                closer.close()

    interrupted = run_steps(dyn, steps, observe, finish)
    return MDReport(
        ensemble=ensemble, formula=atoms.get_chemical_formula(), n_atoms=n, steps=max(recorded - 1, 0),
        steps_requested=int(steps), timestep_fs=float(timestep_fs), temperature_K=float(temperature_K), wall_s=wall,
        calculator_s=calc.calculate_seconds - mark[1], model_calls=calc.n_model_calls - mark[2], predict_s=predict_s,
        dof=dof, frames_written=0 if writer is None else writer.frames, output=None if output is None else os.fspath(output),
        interrupted=interrupted, potential=potential[:recorded].copy(), kinetic=kinetic[:recorded].copy(),
    )


def frame_with_results(atoms: Any, calc: Any, info: dict) -> Any:
    """A copy of ``atoms`` carrying its energy and the model's forces (before constraints) for the writer."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    frame.set_constraint()
    frame.info = dict(info)
    energy = float(calc.results["energy"])
    frame.calc = SinglePointCalculator(frame, energy=energy, free_energy=energy,
                                       forces=np.array(calc.results["forces"], dtype=np.float64))
    return frame
