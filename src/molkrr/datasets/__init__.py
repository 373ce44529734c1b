"""Data sets and file formats: QM9 (offline, from qm9pack) and XYZ / extended XYZ."""

from .io import read_sgdml_npz, read_xyz, write_xyz
from .qm9 import load_qm9, load_qm9_table

__all__ = ["load_qm9", "load_qm9_table", "read_sgdml_npz", "read_xyz", "write_xyz"]
