"""Data sets and file formats: QM9 (offline, from qm9pack), XYZ / extended XYZ, sGDML/MD17 ``.npz``,
labelled frames with their units and block splits, and MD trajectories labelled by GFN2-xTB (:mod:`.md`)."""

from .frames import MissingUnitError, block_split, file_energy_unit, read_frames, write_frames
from .io import read_xyz, write_xyz
from .qm9 import load_qm9, load_qm9_table
from .sgdml import read_sgdml_npz, read_sgdml_units, write_sgdml_npz

__all__ = [
    "MissingUnitError",
    "block_split",
    "file_energy_unit",
    "load_qm9",
    "load_qm9_table",
    "read_frames",
    "read_sgdml_npz",
    "read_sgdml_units",
    "read_xyz",
    "write_frames",
    "write_sgdml_npz",
    "write_xyz",
]
