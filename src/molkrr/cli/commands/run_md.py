"""``molkrr run-md``: molecular dynamics with a saved model (:func:`molkrr.dynamics.run_md`)."""

from __future__ import annotations

import sys

import click

from .._shared import _friendly, _quiet_option, cli


@cli.command("run-md")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("start", metavar="START.xyz", type=click.Path(dir_okay=False))
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True, help="MD steps.")
@click.option("--timestep", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True, help="fs.")
@click.option("--temperature", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="K: the Maxwell-Boltzmann velocities (and the Langevin bath).")
@click.option("--ensemble", type=click.Choice(["nve", "langevin"]), default="nve", show_default=True,
              help="Velocity Verlet (NVE) or Langevin dynamics.")
@click.option("--friction", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Langevin friction, 1/fs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the velocities and the Langevin noise.")
@click.option("--interval", type=click.IntRange(1), default=10, show_default=True,
              help="Write every K-th step to the trajectory (step 0 included).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="Trajectory: extended XYZ with energy (eV), forces (eV/Å) and momenta, written as the run goes.")
@click.option("--unit", default=None, help="Energy unit of the model, when its file does not record one.")
@click.option("--allow-element", "allow", multiple=True, metavar="SYMBOL",
              help="Run with an element the model was not trained on (repeatable); only where the model's "
              "representation is defined for it.")
@_quiet_option
@_friendly
def run_md_command(model_path, start, steps, timestep, temperature, ensemble, friction, seed, interval, output, unit,
                   allow, quiet):
    """Molecular dynamics with a trained model, through ASE and MolkrrCalculator, from the first frame of START.xyz.

    Reports the time per step beside the model's own prediction time for one frame (measured in the same
    run), the total-energy drift (NVE) and the mean temperature. An interrupted run (Ctrl-C) keeps the
    frames written so far, prints its report and exits with status 130. See molkrr.dynamics.
    """
    from ...datasets.frames import read_frames
    from ...dynamics import run_md
    from ...model import MolecularKRR
    from ...persistence import load_model

    model = load_model(model_path, kind=MolecularKRR)
    if allow:
        from ...applicability import allow_elements

        allow_elements(model, allow)
    mols, _ = read_frames(start, require_unit=False)
    if len(mols) > 1:
        click.echo(f"note: {start} holds {len(mols)} frames; starting from the first", err=True)
    atoms = mols[0].with_labels(None, None).to_ase()[0]
    report = run_md(model, atoms, steps=steps, timestep_fs=timestep, temperature_K=temperature, ensemble=ensemble,
                    friction_per_fs=friction, seed=seed, interval=interval, output=output, energy_unit=unit,
                    progress=not quiet)
    click.echo(report.summary())
    if report.interrupted:
        sys.exit(130)

