"""``python -m molkrr.cli``: the ``molkrr`` command."""

from . import main

main()
