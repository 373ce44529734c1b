"""The ``molkrr`` command package (molkrr.cli): every command a module of molkrr.cli.commands, the names
molkrr.cli has always exported, and adding a command as one new module."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import molkrr.cli
import molkrr.cli.commands as commands
from molkrr.cli import cli

HERE = Path(__file__).parent
COMMANDS = {"train", "predict", "demo", "demo-md", "md", "run-md", "learn-metric", "paper"}


def test_every_command_is_one_module_and_the_old_names_remain():
    assert COMMANDS <= set(cli.commands)
    for name, command in cli.commands.items():
        module = sys.modules[command.callback.__module__]
        assert module.__name__ == f"molkrr.cli.commands.{name.replace('-', '_')}", name
    for name in ("train", "predict", "demo", "demo_md", "md", "run_md_command", "learn_metric", "paper"):
        assert getattr(molkrr.cli, name) is cli.commands[name.replace("_command", "").replace("_", "-")]
    assert molkrr.cli.EXIT_BUG == 70 and callable(molkrr.cli.main) and callable(molkrr.cli._check_split)


def test_python_dash_m_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "molkrr.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(name in out.stdout for name in COMMANDS)


def test_choices_come_from_the_registries():
    from molkrr.kernels import kernel_names
    from molkrr.solvers.registry import solver_names

    def choices(command, option):
        (param,) = [p for p in cli.commands[command].params if p.name == option]
        return tuple(param.type.choices)

    assert choices("train", "kernel") == choices("demo", "kernel") == tuple(kernel_names())
    assert choices("train", "solver") == solver_names(include_auto=True)


@pytest.fixture
def example_command(tmp_path, monkeypatch):
    """tests/example_command.py dropped into molkrr.cli.commands as a new module."""
    folder = tmp_path / "extra"
    folder.mkdir()
    shutil.copy(HERE / "example_command.py", folder / "kernel_value.py")
    monkeypatch.setattr(commands, "__path__", [*commands.__path__, str(folder)])
    monkeypatch.setattr(cli, "commands", dict(cli.commands))  # the group forgets the command afterwards
    yield folder
    sys.modules.pop("molkrr.cli.commands.kernel_value", None)


def test_a_new_command_is_one_new_module(example_command):
    commands.load_commands()  # what importing molkrr.cli does
    runner = CliRunner()
    out = runner.invoke(cli, ["--help"])
    assert out.exit_code == 0 and "kernel-value" in out.output and "Print k(a, b)" in out.output
    out = runner.invoke(cli, ["kernel-value", "0,0", "1,0", "--sigma", "2"])
    assert out.exit_code == 0, out.output
    assert float(out.output) == pytest.approx(np.exp(-1 / 8), abs=1e-6)
    out = runner.invoke(cli, ["kernel-value", "0,0", "1,0,0"])  # a MolkrrError: one line, exit 1
    assert out.exit_code == 1 and out.output.strip().splitlines() == ["Error: a has 2 features and b has 3"]
    # and in a fresh process, through the console-script entry point
    code = ("import sys, molkrr.cli.commands as c; c.__path__.append(sys.argv[1]); c.load_commands(); "
            "from molkrr.cli import main; main(sys.argv[2:])")
    proc = subprocess.run([sys.executable, "-c", code, str(example_command), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "kernel-value" in proc.stdout, proc.stderr
