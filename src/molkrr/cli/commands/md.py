"""``molkrr md``: an MD trajectory labelled with xTB (:func:`molkrr.datasets.md.run_langevin`)."""

from __future__ import annotations

import time

import click
import numpy as np

from .._shared import _friendly, _quiet_option, cli


@cli.command("md")
@click.argument("structure", metavar="MOLECULE|FILE.xyz")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="Trajectory file: extended XYZ (.extxyz, .xyz, optionally .gz) or sGDML .npz.")
@click.option("--frames", "n_frames", type=click.IntRange(1), default=1500, show_default=True, help="Frames to record.")
@click.option("--stride", type=click.IntRange(1), default=10, show_default=True, help="MD steps between recorded frames.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=500.0, show_default=True, help="K.")
@click.option("--timestep", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True, help="fs.")
@click.option("--friction", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True, help="Langevin friction, 1/fs.")
@click.option("--equilibration", type=click.IntRange(0), default=1000, show_default=True, help="Unrecorded steps before the first frame.")
@click.option("--method", type=click.Choice(["GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"]), default="GFN2-xTB", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_quiet_option
@_friendly
def md(structure, output, n_frames, stride, temperature, timestep, friction, equilibration, method, seed, quiet):
    """Langevin MD labelled with xTB (tblite): energies in eV and forces in eV/Å, units recorded in the file.

    MOLECULE is a built-in name (ethanol, malonaldehyde, aspirin, ... or any ase.collections.g2 name such as
    CH3CH2OH) or an XYZ file whose first frame starts the run. Needs the optional package tblite
    (pip install 'molkrr[md]').
    """
    from ...datasets.md import run_langevin, write_trajectory
    from ...datasets.sgdml import write_sgdml_npz

    t0 = time.perf_counter()
    frames = run_langevin(structure, n_frames=n_frames, stride=stride, temperature=temperature, timestep=timestep,
                          friction=friction, equilibration=equilibration, seed=seed, method=method, progress=not quiet)
    if str(output).endswith(".npz"):
        from ...molecules import Molecules

        write_sgdml_npz(output, Molecules.from_ase(frames), energy_unit="eV", name=frames[0].get_chemical_formula(),
                        theory=f"{method} (tblite), Langevin {temperature:g} K")
    else:
        write_trajectory(output, frames)
    energies = np.array([a.get_potential_energy() for a in frames])
    click.echo(
        f"wrote {len(frames)} frames of {frames[0].get_chemical_formula()} ({method}, {temperature:g} K, "
        f"{n_frames * stride * timestep / 1000:g} ps recorded) to {output} in {time.perf_counter() - t0:.0f} s; "
        f"energy spread {1000 * energies.std():.0f} meV (eV, eV/Å)"
    )

