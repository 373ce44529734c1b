"""Shared test fixtures."""

from __future__ import annotations

import pytest

from molkrr.errors import DatasetError


@pytest.fixture(scope="session")
def qm9_rows():
    """``qm9_rows(indices)``: the QM9 molecules at those 0-based file rows (row 0 is CH4), in that order.

    Skips the test when the QM9 data (qm9pack) is unavailable."""
    from molkrr.datasets import load_qm9

    def load(indices):
        try:
            return load_qm9(indices=indices)
        except DatasetError as exc:
            pytest.skip(f"QM9 data unavailable: {exc}")

    return load
