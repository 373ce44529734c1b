"""``molkrr learn-md``: on-the-fly learning of a force field with xTB (:func:`molkrr.active.learn_on_the_fly`)."""

from __future__ import annotations

import sys

import click

from .._shared import _friendly, _quiet_option, cli


@cli.command("learn-md")
@click.argument("structure", metavar="MOLECULE|START.xyz")
@click.option("--method", type=click.Choice(["GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"]), default="GFN2-xTB", show_default=True,
              help="Reference method (tblite).")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="eV/Å: a step whose largest predicted force std exceeds it is labelled by the reference.")
@click.option("--steps", type=click.IntRange(1), default=2000, show_default=True, help="Langevin MD steps.")
@click.option("--timestep", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True, help="fs.")
@click.option("--temperature", type=click.FloatRange(min=0), default=300.0, show_default=True, help="K.")
@click.option("--friction", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Langevin friction, 1/fs.")
@click.option("--check-every", type=click.IntRange(1), default=10, show_default=True,
              help="Predict the force std (and maybe call the reference) every K steps.")
@click.option("--max-calls", type=click.IntRange(1), default=None, help="At most this many reference calls.")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), help="Fix the kernel width (default: selected as frames arrive).")
@click.option("--lam", type=click.FloatRange(min=0), help="Fix the ridge on energy rows (eV²).")
@click.option("--lam-forces", type=click.FloatRange(min=0), help="Fix the ridge on force rows (eV²/Å²).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the velocities and the Langevin noise.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="The learned model (.npz).")
@click.option("--frames", "frames_path", type=click.Path(dir_okay=False),
              help="The labelled frames (extended XYZ, eV and eV/Å; default: next to the model, .extxyz).")
@click.option("--trajectory", type=click.Path(dir_okay=False), help="Every 10th MD step as extended XYZ, written as the run goes.")
@_quiet_option
@_friendly
def learn_md(structure, method, threshold, steps, timestep, temperature, friction, check_every, max_calls, sigma, lam, lam_forces,
             seed, output, frames_path, trajectory, quiet):
    """Learn a force field on the fly: Langevin MD with the model, xTB where the model is unsure.

    Starts from MOLECULE (a built-in name such as ethanol) or the first frame of START.xyz, labels it with
    xTB, and runs MD with a local FCHL19 model trained on energies and forces; a step whose largest
    predicted force standard deviation exceeds --threshold is labelled by xTB, joins the training set
    and the model is refitted. Writes the model and the labelled frames; an interrupted run (Ctrl-C)
    writes both as they are and exits with status 130. See molkrr.active.
    """
    from pathlib import Path

    from ...active import default_model, learn_on_the_fly
    from ...datasets.frames import write_frames
    from ...datasets.md import load_structure, xtb_calculator
    from ...persistence import save_model

    atoms = load_structure(structure)
    reference = xtb_calculator(method)
    model = default_model().set_params(sigma=sigma, lam=lam, lam_forces=lam_forces)
    result = learn_on_the_fly(atoms, reference, threshold=threshold, steps=steps, model=model, timestep_fs=timestep,
                              temperature_K=temperature, friction_per_fs=friction, seed=seed, max_calls=max_calls, check_every=check_every,
                              trajectory=trajectory, progress=not quiet)
    save_model(result.model, output)
    frames_path = frames_path or str(Path(output).with_suffix("")) + "-frames.extxyz"
    frames = result.frames
    write_frames(frames_path, frames, energy_unit="eV", energies=frames.energies, forces=frames.forces,
                 info={"reference": method})
    click.echo(result.report.summary())
    click.echo(f"wrote the model to {output} and {len(frames)} labelled frames to {frames_path}")
    if result.report.interrupted:
        sys.exit(130)
