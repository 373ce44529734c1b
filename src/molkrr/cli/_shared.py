"""What every ``molkrr`` command shares: the click group, the error wrapper, the common options, progress bars.

A command is a module of :mod:`molkrr.cli.commands` that adds itself to :data:`cli` with ``@cli.command(...)``
and wraps its function in :func:`_friendly` (the exit statuses of :mod:`molkrr.cli`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import traceback
import warnings
from typing import Any, Callable

import click

from ..errors import MolkrrError
from ..kernels import kernel_names
from ..representations import representation_names

CHUNK = 1000  # molecules per progress-bar step
#: Exit status for an unexpected exception (a bug), after its traceback: EX_SOFTWARE of sysexits.h.
EXIT_BUG = 70


def _friendly(func: Callable) -> Callable:
    """Bad input → ``Error: <message>`` and exit 1; a bug → its traceback and exit :data:`EXIT_BUG`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _edge_warnings_as_lines():
                return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except MolkrrError as exc:
            raise click.ClickException(_one_line(exc)) from None
        except OSError as exc:  # the file system said no: missing directory, permissions, disk full
            name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{name}{exc.strerror or _one_line(exc)}") from None
        except MemoryError:
            raise click.ClickException("not enough memory for this run (try fewer molecules)") from None
        except Exception:
            traceback.print_exc()
            click.echo(
                f"molkrr: internal error (exit status {EXIT_BUG}): this is a bug in molkrr, not a problem with your "
                "input; please report it with the traceback above",
                err=True,
            )
            sys.exit(EXIT_BUG)

    return wrapper


@contextlib.contextmanager
def _edge_warnings_as_lines():
    """Each selection's grid-edge warning (molkrr.selection.GridEdgeWarning) as one ``warning:`` line on stderr."""
    from ..selection import GridEdgeWarning

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, GridEdgeWarning):
                click.echo(f"warning: {message}", err=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", GridEdgeWarning)
        yield


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _progress(iterable, desc: str, quiet: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=quiet, file=sys.stderr, dynamic_ncols=True, **kw)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="molkrr")
def cli() -> None:
    """Kernel ridge regression on molecules, with analytic forces and metric learning."""


def _representation_option(default: str):
    return click.option("--representation", type=click.Choice(representation_names()), default=default, show_default=True,
                        help="Per-atom forms (fchl19-local, fchl19-atomic) use the local kernel (sum over atom pairs).")


_rep_option = _representation_option("cm-sorted")
_kernel_option = click.option("--kernel", type=click.Choice(kernel_names()), default="gaussian", show_default=True)
_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
