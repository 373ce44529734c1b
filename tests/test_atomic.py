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



def test_result_has_the_permissions_of_any_file_the_user_writes(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    p = tmp_path / "m.npz"
    atomic_write(p, lambda fh: fh.write(b"x"))
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's 0600


def _water(n=3):
    from molkrr import Molecules

    rng = np.random.default_rng(0)
    R = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + 0.01 * rng.standard_normal((n, 3, 3))
    return Molecules(np.tile([8, 1, 1], n), R.reshape(-1, 3), np.arange(n + 1) * 3, rng.standard_normal(n),
                     rng.standard_normal((3 * n, 3)))


@pytest.mark.parametrize("name", ["w.extxyz", "w.extxyz.gz", "w.extxyz.bz2", "w.extxyz.xz", "w.npz"])
def test_frame_files_are_written_atomically(name, tmp_path, monkeypatch):
    """write_frames (compressed or not) and write_sgdml_npz: a failure mid-write keeps the old file, no temporary."""
    import ase.io

    from molkrr.datasets import read_frames, write_frames, write_sgdml_npz
    from molkrr.errors import DatasetError

    mols, p = _water(), tmp_path / name

    def write():
        (write_sgdml_npz if name.endswith(".npz") else write_frames)(p, mols, energy_unit="eV")

    write()
    back, unit = read_frames(p)
    assert unit == "eV"
    np.testing.assert_allclose(back.energies, mols.energies, rtol=1e-12)  # extXYZ keeps 8 decimals of positions
    old = p.read_bytes()

    def half_then_fail(fh, *args, **kwargs):
        import io

        fh.write("half" if isinstance(fh, io.TextIOBase) else b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", half_then_fail)
    monkeypatch.setattr(ase.io, "write", half_then_fail)
    with pytest.raises(DatasetError, match="No space left"):
        write()
    assert p.read_bytes() == old
    assert os.listdir(tmp_path) == [name]
