"""A complete ``molkrr`` command in one module, as a new one would be written (used by test_cli_commands.py).

``molkrr kernel-value`` prints k(a, b) of two feature vectors: it parses options and calls library functions
(``molkrr.kernels``), nothing else. The test copies this file into ``molkrr.cli.commands`` and checks that
nothing else needs an edit: ``molkrr --help`` lists it, it runs, and its errors take the one-line form.
It is not imported by the package itself.
"""

from __future__ import annotations

import click
import numpy as np

from molkrr.cli._shared import _friendly, _kernel_option, cli


@cli.command("kernel-value")
@click.argument("a")
@click.argument("b")
@_kernel_option
@click.option("--sigma", type=float, default=1.0, show_default=True)
@_friendly
def kernel_value(a, b, kernel, sigma):
    """Print k(a, b) for two comma-separated feature vectors (a worked example)."""
    from molkrr.kernels import make_kernel
    from molkrr.errors import ShapeMismatchError

    x, y = (np.array([float(v) for v in s.split(",")]) for s in (a, b))
    if x.shape != y.shape:
        raise ShapeMismatchError(f"a has {x.size} features and b has {y.size}")
    click.echo(f"{float(make_kernel(kernel, sigma)(x[None], y[None])[0, 0]):.6f}")
