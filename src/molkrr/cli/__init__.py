"""The ``molkrr`` command: train, predict, demo, demo-md, md, run-md, learn-metric, paper.

Exit status: 0 on success; 1 with a one-line ``Error: <message>`` on stderr for bad input (any
:class:`~molkrr.errors.MolkrrError`, an unreadable or unwritable file); 2 for usage errors (click);
70 (``EX_SOFTWARE``) with the full traceback for anything else, which is a bug in molkrr.

Layout: :mod:`molkrr.cli._shared` holds the click group :data:`cli`, the error wrapper and the common options;
:mod:`molkrr.cli._data` the data and model helpers of the training commands; :mod:`molkrr.cli.commands` one
module per command, each registering itself on the group (adding a command is one new module there).
"""

from __future__ import annotations

from ._data import (
    _check_split,
    _load_frame_sets,
    _load_training_data,
    _make_model,
    _read_frames_for_cli,
    _report_test_errors,
    _select_on_validation,
)
from ._shared import (
    CHUNK,
    EXIT_BUG,
    _friendly,
    _kernel_option,
    _one_line,
    _progress,
    _quiet_option,
    _rep_option,
    _representation_option,
    cli,
)
from .commands import load_commands

# the commands by the names molkrr.cli has always had (e.g. ``from molkrr.cli import train``)
from .commands.demo import demo
from .commands.demo_md import FORCE_DEMO_HYPERPARAMETERS, demo_md
from .commands.learn_metric import learn_metric
from .commands.md import md
from .commands.paper import paper
from .commands.predict import predict
from .commands.run_md import run_md_command
from .commands.train import train

__all__ = [
    "CHUNK",
    "EXIT_BUG",
    "FORCE_DEMO_HYPERPARAMETERS",
    "cli",
    "demo",
    "demo_md",
    "learn_metric",
    "load_commands",
    "main",
    "md",
    "paper",
    "predict",
    "run_md_command",
    "train",
]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``molkrr`` command."""
    cli.main(args=argv, prog_name="molkrr")
