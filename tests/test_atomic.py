"""molkrr._atomic.atomic_write: the destination holds the old or the complete new content, never a part."""

from __future__ import annotations

import os

import numpy as np
import pytest

from molkrr._atomic import atomic_write


def test_writes_binary_and_text(tmp_path):
    p = tmp_path / "a.npz"
    atomic_write(p, lambda fh: np.savez(fh, x=np.arange(3)))
    with np.load(p) as z:
        np.testing.assert_array_equal(z["x"], [0, 1, 2])
    t = tmp_path / "b.txt"
    atomic_write(str(t), lambda fh: fh.write("Å\n"), mode="w")
    assert t.read_text(encoding="utf-8") == "Å\n"
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "model.npz"
    p.write_bytes(b"old")

    def half_then_fail(fh):
        fh.write(b"new, but only half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, half_then_fail)
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.npz"]


def test_replaces_existing_file_and_refuses_bad_mode(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"old")
    atomic_write(p, lambda fh: fh.write(b"new"))
    assert p.read_bytes() == b"new"
    with pytest.raises(ValueError):
        atomic_write(p, lambda fh: None, mode="a")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "missing-folder" / "f", lambda fh: fh.write(b"x"))

