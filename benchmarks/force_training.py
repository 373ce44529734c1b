"""Force training on an MD trajectory: energy and force MAE on a later block, fit time, peak memory, time per frame.

    nice -n 10 python benchmarks/force_training.py TRAJ.extxyz --n-train 200 [--targets energy+forces]
        [--representation fchl19-local] [--sigma S --lam L --lam-forces LF]

From a clean clone, on the shipped trajectory (1,500 frames; ``molkrr md`` or ``scripts/make_md_data.py`` make others)::

    python benchmarks/force_training.py src/molkrr/datasets/data/ethanol_xtb_500K.extxyz.gz --n-train 200

Block split (MD frames are correlated): training frames evenly spaced over the first ``--pool`` frames
(default 2,000), test frames the last ``--n-test`` (default 500). Hyperparameters not given are selected
on a held-out later block of the training frames (:mod:`molkrr.force_selection`), never on test frames.
Run one N per process: the peak memory printed is the process's (ru_maxrss).
Baselines measured in the same run: predicting zero force, and (with --baseline) the energy-only model.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np
from ase.io import read

from molkrr.model import MolecularKRR
from molkrr.molecules import Molecules
from molkrr.representations import make_representation


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trajectory")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--targets", default="energy+forces")
    p.add_argument("--representation", default="fchl19-local")
    p.add_argument("--kernel", default="gaussian")
    p.add_argument("--sigma", type=float)
    p.add_argument("--lam", type=float)
    p.add_argument("--lam-forces", type=float)
    p.add_argument("--baseline", action="store_true", help="also fit the energy-only FCHL19-global model")
    a = p.parse_args()
    frames = read(a.trajectory, index=":")
    mols = Molecules.from_ase(frames)
    elements = sorted(set(int(z) for z in mols.numbers))
    train_idx = np.unique(np.linspace(0, min(a.pool, len(mols) - a.n_test) - 1, a.n_train).round().astype(int))
    train, test = mols.subset(train_idx), mols[len(mols) - a.n_test:]
    print(f"{a.trajectory}: {len(mols)} frames, train {len(train)} (from the first {a.pool}), test the last {len(test)}")
    print(f"zero-force MAE: {1000 * np.abs(test.forces).mean():.1f} meV/A")
    rep = make_representation(a.representation, elements=elements)
    model = MolecularKRR(rep, kernel=a.kernel, sigma=a.sigma, lam=a.lam, lam_forces=a.lam_forces, targets=a.targets,
                         energy_unit="eV")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(train, progress=True)
    fit_s = time.perf_counter() - t0
    for w in caught:
        print("warning:", w.message)
    E, F = model.predict_energies_and_forces(test)
    e_mae = 1000 * np.abs(E - test.energies).mean()
    f_mae = 1000 * np.abs(np.concatenate(F) - test.forces).mean()
    one = test[:1]
    model.predict_energies_and_forces(one)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        model.predict_energies_and_forces(one)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"{a.representation} {a.targets} N={len(train)}: sigma={model.sigma_:.4g} lam={model.lam_:.3g} "
          f"lam_forces={getattr(model, 'lam_forces_', float('nan')):.3g}")
    print(f"  energy MAE {e_mae:.2f} meV, force MAE {f_mae:.1f} meV/A, fit {fit_s:.1f} s (incl. selection), "
          f"peak memory {peak:.2f} GB, energy+forces per frame {1000 * min(times):.2f} ms (best of 20)")
    if a.baseline:
        base = MolecularKRR(make_representation("fchl19", elements=elements), lam=None, energy_unit="eV")
        t0 = time.perf_counter()
        base.fit(train)
        Eb, Fb = base.predict_energies_and_forces(test)
        print(f"  baseline fchl19-global energy-only: energy MAE {1000 * np.abs(Eb - test.energies).mean():.2f} meV, "
              f"force MAE {1000 * np.abs(np.concatenate(Fb) - test.forces).mean():.1f} meV/A "
              f"({time.perf_counter() - t0:.1f} s); force MAE ratio {f_mae / (1000 * np.abs(np.concatenate(Fb) - test.forces).mean()):.3f}")


if __name__ == "__main__":
    main()
