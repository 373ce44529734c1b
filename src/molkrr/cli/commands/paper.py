"""``molkrr paper``: reproduce the MLKRR paper (:func:`molkrr.paper.run_paper`)."""

from __future__ import annotations

import click

from .._shared import _friendly, _quiet_option, cli


@cli.command()
@click.option("--scale", type=click.Choice(["test", "quick", "full"]), default="quick", show_default=True,
              help="full: the paper's sizes (24,000 molecules, hours); quick: minutes; test: seconds (for the tests).")
@click.option("--output", "-o", type=click.Path(file_okay=False), default="paper", show_default=True,
              help="Folder for the figures, results.json and the resumable cache.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-supplementary", is_flag=True, help="Skip the HOMO–LUMO gap and Bag of Bonds curves.")
@_quiet_option
@_friendly
def paper(scale, output, seed, no_supplementary, quiet):
    """Reproduce the MLKRR paper (Fabregat et al. 2022): figures 3–7, learning curves, results.json."""
    from ...paper import run_paper

    run_paper(scale, output, seed=seed, supplementary=not no_supplementary, log=(lambda _m: None) if quiet else click.echo)
    click.echo(f"results in {output}/results.json")

