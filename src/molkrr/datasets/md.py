"""Molecular-dynamics data made here: Langevin MD labelled with GFN2-xTB (through ``tblite``).

>>> from molkrr.datasets.md import run_langevin, write_trajectory
>>> frames = run_langevin("ethanol", n_frames=1500, temperature=500.0, timestep=0.5, stride=10, seed=0)
>>> write_trajectory("ethanol_500K.extxyz.gz", frames)

Each frame is an ``ase.Atoms`` whose energy and forces (GFN2-xTB, **eV** and **eV/Å**) sit in a
``SinglePointCalculator``; :func:`write_trajectory` writes them as extended XYZ (``energy=`` on the
comment line, a ``forces`` column) and records the units and the run's settings in every frame's
info: ``energy_unit="eV"``, ``forces_unit="eV/Ang"``, ``length_unit="Ang"``, ``method``,
``temperature_K``, ``timestep_fs``, ``stride``, ``seed``, ``step``, ``time_fs``. :func:`molkrr.datasets.read_frames`
reads those units back, so ``molkrr train --data FILE`` needs no ``--unit``.

The dynamics: velocities drawn from the Maxwell–Boltzmann distribution at the temperature (centre-of-
mass motion and rotation removed), then ``equilibration`` Langevin steps that are not recorded, then
``n_frames * stride`` steps, keeping every ``stride``-th (ase's Langevin integrator, friction in 1/fs).
The random numbers come from ``numpy.random.default_rng(seed)``: a run is reproducible for the same
seed, settings, tblite version and number of OpenMP threads (the SCF's sums may round differently with
another thread count). Consecutive frames are strongly correlated: split such data in blocks of frames
(:func:`molkrr.datasets.block_split`), never at random.

``tblite`` is an optional dependency: ``pip install "molkrr[md]"``. Any other ASE calculator can be
passed as ``calculator=`` (then ``method`` records its class name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, InvalidInputError

__all__ = [
    "BUILTIN_MOLECULES",
    "builtin_molecule",
    "load_structure",
    "SHIPPED_TRAJECTORY",
    "run_langevin",
    "shipped_trajectory_path",
    "thermalize",
    "write_trajectory",
    "xtb_calculator",
]

#: Friendly names of molecules known without a file: name → ase.build.molecule name, or
#: "data:FILE" for a geometry shipped with molkrr (GFN2-xTB minima, src/molkrr/datasets/data/molecules).
#: Any other name of ``ase.collections.g2`` (e.g. "CH3CH2OH", "H2O", "C6H6") works too.
BUILTIN_MOLECULES: dict[str, str] = {
    "water": "H2O",
    "methane": "CH4",
    "methanol": "CH3OH",
    "ethanol": "CH3CH2OH",
    "acetaldehyde": "CH3CHO",
    "acetic-acid": "CH3COOH",
    "benzene": "C6H6",
    "malonaldehyde": "data:malonaldehyde.xyz",
    "aspirin": "data:aspirin.xyz",
}

#: Units recorded in every frame written by :func:`write_trajectory`.
UNITS_INFO = {"energy_unit": "eV", "forces_unit": "eV/Ang", "length_unit": "Ang"}


def builtin_molecule(name: str) -> Any:
    """The ``ase.Atoms`` of a built-in molecule (see :data:`BUILTIN_MOLECULES`) or of any ``ase.collections.g2`` name.

    Raises InvalidInputError for an unknown name (the message lists the friendly names).
    """
    from ase.build import molecule
    from ase.collections import g2

    key = BUILTIN_MOLECULES.get(name.strip().lower(), name.strip())
    if key.startswith("data:"):
        import ase.io

        ref = resources.files("molkrr.datasets").joinpath("data", "molecules", key[len("data:") :])
        with resources.as_file(ref) as path:
            return ase.io.read(path, format="xyz")
    if key in g2.names:
        return molecule(key)
    raise InvalidInputError(
        f"unknown molecule {name!r}: use an XYZ file, one of {', '.join(sorted(BUILTIN_MOLECULES))}, "
        "or a name of ase.collections.g2 (e.g. 'CH3CH2OH')"
    )


def load_structure(source: Any) -> Any:
    """The starting structure: an ``ase.Atoms`` (copied), an existing XYZ/extXYZ file (its first frame) or a built-in name."""
    from ase import Atoms

    if isinstance(source, Atoms):
        atoms = source.copy()
    elif isinstance(source, (str, os.PathLike)) and Path(os.fspath(source)).is_file():
        import ase.io

        try:
            atoms = ase.io.read(os.fspath(source), index=0)
        except Exception as exc:
            raise DatasetError(f"cannot read {source}: {' '.join(str(exc).split())[:200]}") from exc
    elif isinstance(source, str):
        atoms = builtin_molecule(source)
    else:
        raise InvalidInputError(f"a starting structure must be an ase.Atoms, an XYZ file or a molecule name, got {source!r}")
    atoms.calc = None
    atoms.pbc = False
    if len(atoms) == 0:
        raise InvalidInputError(f"{source}: the structure has no atoms")
    return atoms


def xtb_calculator(method: str = "GFN2-xTB", **kwargs: Any) -> Any:
    """A ``tblite.ase.TBLite`` calculator (silent); raises a DatasetError naming the extra when tblite is missing."""
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise DatasetError(
            "GFN2-xTB labels need the optional package tblite: pip install 'molkrr[md]' (or pip install tblite)"
        ) from exc
    return TBLite(method=method, verbosity=0, **kwargs)


def run_langevin(
    structure: Any,
    *,
    n_frames: int,
    stride: int = 10,
    temperature: float = 500.0,
    timestep: float = 0.5,
    friction: float = 0.01,
    equilibration: int = 1000,
    seed: int = 0,
    method: str = "GFN2-xTB",
    calculator: Any = None,
    progress: bool = False,
) -> list:
    """Run Langevin MD and return the recorded frames with their energies and forces.

    Parameters
    ----------
    structure : ase.Atoms, path or str
        Starting geometry: atoms, an XYZ file or a built-in molecule name (:func:`load_structure`).
    n_frames : int
        Frames to record (≥ 1).
    stride : int
        MD steps between recorded frames.
    temperature : float
        Thermostat (and initial velocity) temperature in K.
    timestep : float
        MD time step in fs.
    friction : float
        Langevin friction in 1/fs (0.01/fs: a velocity relaxation time of 100 fs).
    equilibration : int
        Steps run (and not recorded) before the first frame.
    seed : int
        Seeds the initial velocities and the thermostat's noise.
    method : str
        tblite method ('GFN2-xTB', 'GFN1-xTB', 'IPEA1-xTB'); ignored when ``calculator`` is given.
    calculator : ASE calculator, optional
        Label with this calculator instead of tblite (energies in eV, forces in eV/Å, as ASE's are).
    progress : bool
        Show a tqdm progress bar (on stderr).

    Returns
    -------
    list of ase.Atoms, ``n_frames`` long: positions (Å), a SinglePointCalculator with
    ``energy`` (eV) and ``forces`` (n_atoms, 3; eV/Å), and ``info`` with the run's settings and units.
    """
    from ase import units
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    for name, value, low in (("n_frames", n_frames, 1), ("stride", stride, 1), ("equilibration", equilibration, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise InvalidInputError(f"{name} must be an integer ≥ {low}, got {value!r}")
    for name, value in (("temperature", temperature), ("timestep", timestep), ("friction", friction)):
        if not (np.isfinite(value) and value > 0):
            raise InvalidInputError(f"{name} must be a positive number, got {value!r}")
    atoms = load_structure(structure)
    atoms.calc = xtb_calculator(method) if calculator is None else calculator
    label = method if calculator is None else type(calculator).__name__
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature, rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())  # the centre of mass stays put (fixcm=True is deprecated in ase)
    dyn = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                   fixcm=False, rng=rng)
    info = {
        **UNITS_INFO,
        "method": label,
        "temperature_K": float(temperature),
        "timestep_fs": float(timestep),
        "friction_per_fs": float(friction),
        "stride": int(stride),
        "seed": int(seed),
    }
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=equilibration + n_frames * stride, desc=f"MD {atoms.get_chemical_formula()} ({label})",
                   unit="step", file=sys.stderr, dynamic_ncols=True)
    frames = []
    try:
        if equilibration:
            _run(dyn, equilibration, bar)
        for i in range(n_frames):
            _run(dyn, stride, bar)
            step = equilibration + (i + 1) * stride
            frame = Atoms(numbers=atoms.numbers, positions=atoms.positions)  # no velocities, no constraint
            # the physical forces: FixCom's adjusted forces (mass-weighted projection) are the integrator's business
            forces = np.array(atoms.get_forces(apply_constraint=False), dtype=np.float64)
            frame.calc = SinglePointCalculator(frame, energy=float(atoms.get_potential_energy()), forces=forces)
            frame.info = {**info, "step": step, "time_fs": step * float(timestep)}
            frames.append(frame)
    finally:
        if bar is not None:
            bar.close()
    return frames


def write_trajectory(path: str | os.PathLike, frames: Sequence[Any]) -> None:
    """Write frames (with energies and forces) as extended XYZ; ``.gz``/``.bz2``/``.xz`` suffixes compress.

    The frames' calculators are ASE's (eV, eV/Å): the units of :data:`UNITS_INFO` are recorded in every
    frame's comment line with the frame's own info (the run's settings). Velocities are not written.
    """
    from ..molecules import Molecules
    from .frames import write_frames

    frames = list(frames)
    if not frames:
        raise InvalidInputError("no frames to write")
    for i, a in enumerate(frames):
        results = getattr(a.calc, "results", {}) if a.calc is not None else {}
        if "energy" not in results or "forces" not in results:
            raise InvalidInputError(f"frame {i} carries no energy and forces to write")
    write_frames(path, Molecules.from_ase(frames), energy_unit=UNITS_INFO["energy_unit"], info=[a.info for a in frames])


def thermalize(atoms: Any, temperature: float, rng: Any) -> None:
    """Momenta drawn from the Maxwell–Boltzmann distribution at ``temperature`` (K) with ``rng``."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ase ≥ 3.29
        vd.thermalize_momenta(atoms, temperature, rng=rng)
    else:  # pragma: no cover - older ase
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)


def _run(dyn: Any, steps: int, bar: Any) -> None:
    dyn.run(steps)
    if bar is not None:
        bar.update(steps)


#: The trajectory shipped with molkrr (made by scripts/make_md_data.py): ethanol, GFN2-xTB, Langevin
#: at 500 K, 0.5 fs steps, every 10th of 15,000 steps after 1,000 equilibration steps (1,500 frames, 7.5 ps).
SHIPPED_TRAJECTORY = "ethanol_xtb_500K.extxyz.gz"


def shipped_trajectory_path() -> Path:
    """Path of :data:`SHIPPED_TRAJECTORY` inside the installed package (energies eV, forces eV/Å)."""
    ref = resources.files("molkrr.datasets").joinpath("data", SHIPPED_TRAJECTORY)
    path = Path(str(ref))
    if not path.is_file():
        raise DatasetError(f"the shipped trajectory {SHIPPED_TRAJECTORY} is missing from the installation ({path})")
    return path
