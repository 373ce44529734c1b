"""The commands of ``molkrr``, one module each; every module here adds itself to the group
(:data:`molkrr.cli._shared.cli`) with ``@cli.command(...)`` when imported.

Adding a command is one new module in this package: :func:`load_commands` imports every module here (it
runs when :mod:`molkrr.cli` is imported), and ``molkrr --help`` lists the command. Commands stay thin:
they parse options, call library functions and print.
"""

from __future__ import annotations

import importlib
import pkgutil


def load_commands() -> None:
    """Import every command module of this package that is not imported yet (each registers itself)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


load_commands()
