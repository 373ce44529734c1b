"""``molkrr predict``: energies (and forces) of every frame of a file with a saved model."""

from __future__ import annotations

import click
import numpy as np

from .._shared import CHUNK, _friendly, _progress, _quiet_option, cli


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("xyz", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--forces", is_flag=True, help="Also predict forces (−∂E/∂R).")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write an extended XYZ with the predictions (energy, forces; the model's unit recorded).")
@click.option("--allow-element", "allow", multiple=True, metavar="SYMBOL",
              help="Predict for an element the model was not trained on (repeatable); only where the model's "
              "representation is defined for it. Without it such molecules are refused.")
@_quiet_option
@_friendly
def predict(model_path, xyz, forces, output, allow, quiet):
    """Predict energies (and forces) for every frame of FILE (XYZ/extended XYZ or sGDML .npz).

    When FILE carries reference energies (forces) in a recorded unit, the MAE against them is printed too.
    """
    from ...applicability import allow_elements
    from ...datasets.frames import file_energy_unit, read_frames, write_frames
    from ...model import MolecularKRR
    from ...persistence import load_model

    model = load_model(model_path, kind=MolecularKRR)
    if allow:
        allow_elements(model, allow)
    file_unit = file_energy_unit(xyz)
    mols, _ = read_frames(xyz, unit=model.energy_unit if file_unit else None, require_unit=False)
    idx = np.arange(len(mols))
    chunks = [idx[i : i + CHUNK] for i in range(0, len(idx), CHUNK)]
    energies, all_forces = [], []
    for c in _progress(chunks, "predicting", quiet or len(chunks) < 2, unit="chunk"):
        if forces:
            e, f = model.predict_energies_and_forces(mols[c])
            all_forces.extend(f)
        else:
            e = model.predict(mols[c])
        energies.append(e)
    energies = np.concatenate(energies)
    unit = model.energy_unit or "(model units)"
    if output:
        write_frames(output, mols.with_labels(None, None), energy_unit=model.energy_unit, energies=energies,
                     forces=all_forces if forces else None)
        click.echo(f"wrote {len(mols)} frames to {output}")
    else:
        for i, e in enumerate(energies):
            line = f"{i:6d}  E = {e: .6f} {unit}"
            if forces:
                line += f"  max|F| = {np.abs(all_forces[i]).max():.4g} {unit}/Å"
            click.echo(line)
    if file_unit and model.energy_unit and mols.energies is not None:
        line = f"against the file's reference: energy MAE {np.mean(np.abs(energies - mols.energies)):.4g} {unit}"
        if forces and mols.forces is not None:
            line += f", force MAE {np.mean(np.abs(np.concatenate(all_forces) - mols.forces)):.4g} {unit}/Å"
        click.echo(line)

