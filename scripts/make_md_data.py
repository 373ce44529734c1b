"""Make the MD data sets molkrr uses: the shipped ethanol trajectory and the sGDML benchmark's trajectories.

    python scripts/make_md_data.py shipped              # src/molkrr/datasets/data/ethanol_xtb_500K.extxyz.gz
    python scripts/make_md_data.py benchmark            # $TMPDIR/molkrr-md-data/{ethanol,malonaldehyde}_xtb_500K_3000.npz
    python scripts/make_md_data.py benchmark --out DIR --molecules ethanol

The benchmark's folder defaults to ``molkrr-md-data`` in the system temp dir (:func:`tempfile.gettempdir`),
where ``benchmarks/forces_vs_sgdml.py`` looks for (and, when missing, makes) its trajectories.

GFN2-xTB through tblite (``pip install 'molkrr[md]'``), Langevin at 500 K, 0.5 fs steps, every 10th
step recorded, after 1,000 unrecorded equilibration steps. Run with OMP_NUM_THREADS=1 for files that
match bit for bit (the shipped one was made so; about 1.5 min on one core, the benchmark's about 10 min).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from molkrr.datasets.md import run_langevin, write_trajectory

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "molkrr" / "datasets" / "data" / "ethanol_xtb_500K.extxyz.gz"
SETTINGS = dict(temperature=500.0, timestep=0.5, stride=10, equilibration=1000, friction=0.01)
#: Default folder of the benchmark's trajectories (benchmarks/forces_vs_sgdml.py uses the same).
BENCHMARK_DIR = Path(tempfile.gettempdir()) / "molkrr-md-data"
BENCHMARK_MOLECULES = ("ethanol", "malonaldehyde")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["shipped", "benchmark"])
    parser.add_argument("--out", type=Path, default=BENCHMARK_DIR,
                        help=f"Folder for the benchmark's trajectories (default {BENCHMARK_DIR}).")
    parser.add_argument("--molecules", nargs="+", choices=BENCHMARK_MOLECULES, default=list(BENCHMARK_MOLECULES),
                        help="Which benchmark trajectories to make (default both).")
    args = parser.parse_args()
    if args.which == "shipped":
        jobs = [("ethanol", 1500, 0, SHIPPED)]
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        jobs = [(name, 3000, 1, args.out / f"{name}_xtb_500K_3000.npz") for name in args.molecules]
    for name, n_frames, seed, path in jobs:
        t0 = time.perf_counter()
        frames = run_langevin(name, n_frames=n_frames, seed=seed, progress=True, **SETTINGS)
        if path.suffix == ".npz":
            from molkrr.datasets import write_sgdml_npz
            from molkrr.molecules import Molecules

            write_sgdml_npz(path, Molecules.from_ase(frames), energy_unit="eV",
                            theory="GFN2-xTB (tblite), Langevin 500 K", name=name)
        else:
            write_trajectory(path, frames)
        print(f"{name}: {n_frames} frames -> {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
