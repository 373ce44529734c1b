"""``molkrr demo-md``: train on MD frames, test energies and forces on later frames, a short NVE run."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from ...representations import representation_names
from .._data import _make_model, _read_frames_for_cli, _select_on_validation
from .._shared import _friendly, _quiet_option, cli


#: (σ, λ, λ_forces) chosen by force MAE for the shipped ethanol trajectory with fchl19-local
#: (``python benchmarks/force_training.py FILE --n-train 200``); the demo's default for force targets.
FORCE_DEMO_HYPERPARAMETERS = (2.036, 3.65e-5, 3.66e-6)


@cli.command("demo-md")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Trajectory to use (default: the shipped GFN2-xTB ethanol trajectory, 1,500 frames at 500 K).")
@click.option("--unit", default=None, help="Energy unit of --data when the file does not record it.")
@click.option("--n-train", type=click.IntRange(10), default=400, show_default=True, help="Training frames, from the first 2/3 of the trajectory.")
@click.option("--n-valid", type=click.IntRange(2), default=100, show_default=True, help="Validation frames (a later block) for sigma and lambda.")
@click.option("--n-test", type=click.IntRange(1), default=300, show_default=True, help="Test frames, from the last block.")
@click.option("--targets", type=click.Choice(["energy", "energy+forces", "forces"]), default="energy", show_default=True)
@click.option("--representation", type=click.Choice(representation_names()), default="fchl19", show_default=True)
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True),
              help="Kernel width. Default: selected on the validation frames for energy targets; for force targets "
              f"{FORCE_DEMO_HYPERPARAMETERS[0]:g} (with lambda {FORCE_DEMO_HYPERPARAMETERS[1]:g}, lambda_forces "
              f"{FORCE_DEMO_HYPERPARAMETERS[2]:g}: selected on force MAE for the shipped ethanol trajectory by "
              "benchmarks/force_training.py).")
@click.option("--lam", type=click.FloatRange(min=0), help="Ridge on energy rows (with --sigma).")
@click.option("--lam-forces", type=click.FloatRange(min=0), help="Ridge on force rows (with --sigma).")
@click.option("--nve-steps", type=click.IntRange(0), default=200, show_default=True, help="Velocity-Verlet steps (0.5 fs) of the NVE check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the NVE run's initial velocities.")
@_quiet_option
@_friendly
def demo_md(data, unit, n_train, n_valid, n_test, targets, representation, sigma, lam, lam_forces, nve_steps, seed, quiet):
    """Train on MD frames (GFN2-xTB), test energies and forces on later frames, run a short NVE through the ASE calculator.

    Frames are split in blocks (train on the first 2/3 of the trajectory, validate and test on later blocks),
    so no test frame has a near-copy in training. Errors in meV and meV/Å (the trajectory's unit converted).
    """
    from ...datasets import block_split
    from ...datasets.md import shipped_trajectory_path
    from ...dynamics import run_md
    from ...units import ev_per_unit

    path = data or shipped_trajectory_path()
    mols, unit = _read_frames_for_cli(path, unit, "energy")
    if mols.forces is None:
        raise click.ClickException(f"{path} has no forces to test against")
    train, valid, test = block_split(len(mols), n_train, n_valid, n_test)
    train_set, valid_set, test_set = mols[train], mols[valid], mols[test]
    to_mev = 1000 * ev_per_unit(unit)
    formula = mols[0].to_ase()[0].get_chemical_formula()
    click.echo(f"molkrr demo-md: {Path(path).name}, {len(mols)} frames of {formula}; {representation}, targets={targets}")
    click.echo(f"block split: train {len(train)} frames from 0..{train.max()}, validation {len(valid)} from "
               f"{valid.min()}..{valid.max()}, test {len(test)} from {test.min()}..{test.max()}")
    extra = {}
    if targets == "energy" and (sigma is None or lam is None):
        sigma, lam = _select_on_validation(train_set, valid_set, representation, "gaussian", sigma, lam, unit, quiet)
    elif targets != "energy":
        if sigma is None:  # force-MAE selection takes minutes: the demo uses the setting it found once
            sigma, lam, lam_forces = FORCE_DEMO_HYPERPARAMETERS
        lam = 1e-6 if lam is None else lam
        extra["lam_forces"] = lam_forces if lam_forces is not None else lam / 10
    model = _make_model(representation, "gaussian", sigma, lam, unit, targets=targets)
    model.set_params(**extra)
    t0 = time.perf_counter()
    model.fit(train_set, progress=not quiet)
    click.echo(f"trained on {len(train_set)} frames in {time.perf_counter() - t0:.1f} s (sigma={model.sigma_:.4g}, lambda={model.lam_:.1e})")
    t0 = time.perf_counter()
    energies, forces = model.predict_energies_and_forces(test_set)
    t_pred = (time.perf_counter() - t0) / len(test_set)
    F_ref, F = test_set.forces, np.concatenate(forces)
    e_mae = to_mev * float(np.mean(np.abs(energies - test_set.energies)))
    e_base = to_mev * float(np.mean(np.abs(test_set.energies - train_set.energies.mean())))
    f_mae = to_mev * float(np.mean(np.abs(F - F_ref)))
    f_base = to_mev * float(np.mean(np.abs(F_ref)))
    click.echo(f"held-out energy MAE: {e_mae:8.2f} meV     (predicting the training mean: {e_base:.1f} meV)")
    click.echo(f"held-out force MAE:  {f_mae:8.1f} meV/Å   (predicting zero force: {f_base:.1f} meV/Å)")
    click.echo(f"prediction: {1000 * t_pred:.2f} ms per frame (energy and forces, {len(test_set)} frames in one batch)")
    if nve_steps:  # velocity Verlet through MolkrrCalculator (molkrr.dynamics.run_md), 300 K velocities seeded by --seed
        report = run_md(model, test_set[0].to_ase()[0], steps=nve_steps, timestep_fs=0.5, temperature_K=300.0,
                        ensemble="nve", seed=seed)
        if report.interrupted:
            raise KeyboardInterrupt  # Ctrl-C ends the demo (run_md itself returns the steps done)
        e_total = report.total_energy  # eV, step 0 included
        drift, fluct = float(e_total[-1] - e_total[0]), float(np.abs(e_total - e_total[0]).max())
        ms_per_step = 1000 * report.per_step_s
        click.echo(f"NVE through MolkrrCalculator, {nve_steps} steps of 0.5 fs from test frame 0 (300 K velocities): "
                   f"total energy drift {1000 * drift:+.2f} meV, max deviation {1000 * fluct:.2f} meV ({ms_per_step:.2f} ms/step)")

