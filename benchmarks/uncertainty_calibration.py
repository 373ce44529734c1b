"""Calibration of the predictive force std on held-out MD frames, and what the std costs per frame.

    nice -n 19 python benchmarks/uncertainty_calibration.py [--n-train 200] [--n-test 300] [--timed 50]

On the shipped GFN2-xTB ethanol trajectory (1,500 frames at 500 K, eV): an energy+forces model with the
local FCHL19 kernel at the demo's hyperparameters (``molkrr demo-md``'s ``FORCE_DEMO_HYPERPARAMETERS``,
chosen once by force MAE), trained on ``--n-train`` frames of the first 2/3 of the trajectory
(:func:`molkrr.datasets.block_split`, as ``molkrr demo-md``), tested on the last ``--n-test`` frames.
Prints the Spearman rank correlation between the per-frame mean predicted force std and the per-frame
force MAE (and, for reference, per component and for energies), the fraction of force errors within
1 and 2 predicted std, and the time of one frame's ``predict_energies_and_forces`` with and without
``return_std`` (``--timed`` single frames each, after one warm-up call, median), and of the whole test set.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

from molkrr import MolecularKRR
from molkrr.cli.commands.demo_md import FORCE_DEMO_HYPERPARAMETERS
from molkrr.datasets import block_split, read_frames
from molkrr.datasets.md import shipped_trajectory_path
from molkrr.representations import make_representation
from molkrr.units import ev_per_unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--timed", type=int, default=50, help="single frames timed with and without std")
    args = parser.parse_args()

    mols, unit = read_frames(shipped_trajectory_path())
    train_idx, _, test_idx = block_split(len(mols), args.n_train, 0, args.n_test)
    train, test = mols[train_idx], mols[test_idx]
    sigma, lam, lam_f = FORCE_DEMO_HYPERPARAMETERS
    model = MolecularKRR(make_representation("fchl19-local"), sigma=sigma, lam=lam, lam_forces=lam_f,
                         targets="energy+forces", energy_unit=unit)
    t0 = time.perf_counter()
    model.fit(train)
    t_fit = time.perf_counter() - t0
    to_mev = 1000 * ev_per_unit(unit)
    print(f"{len(train)} training frames ({train_idx.min()}..{train_idx.max()}), {len(test)} test frames "
          f"({test_idx.min()}..{test_idx.max()}); sigma={sigma}, lam={lam:g}, lam_forces={lam_f:g}; fit {t_fit:.1f} s")

    t0 = time.perf_counter()
    E, F, E_std, F_std = model.predict_energies_and_forces(test, return_std=True)
    t_batch_std = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.predict_energies_and_forces(test)
    t_batch = time.perf_counter() - t0

    err = [np.abs(f - test.forces[test.atom_slice(i)]) for i, f in enumerate(F)]
    frame_mae = np.array([e.mean() for e in err]) * to_mev
    frame_std = np.array([s.mean() for s in F_std]) * to_mev
    rho, p = spearmanr(frame_std, frame_mae)
    rho_c, _ = spearmanr(np.concatenate(F_std).ravel(), np.concatenate(err).ravel())
    rho_e, _ = spearmanr(E_std, np.abs(E - test.energies))
    z = np.concatenate(err).ravel() / np.concatenate(F_std).ravel()
    print(f"force MAE {frame_mae.mean():.2f} meV/Å (per frame {frame_mae.min():.2f}..{frame_mae.max():.2f}); "
          f"mean predicted force std {frame_std.mean():.2f} meV/Å ({frame_std.min():.2f}..{frame_std.max():.2f})")
    print(f"Spearman(per-frame mean force std, per-frame force MAE) = {rho:.3f} (p = {p:.1e}, {len(test)} frames)")
    print(f"Spearman per force component (|error| vs std) = {rho_c:.3f}; energies (|error| vs std) = {rho_e:.3f}")
    print(f"force errors within 1 std: {np.mean(z <= 1):.3f} (Gaussian 0.683), within 2 std: {np.mean(z <= 2):.3f} (0.954)")

    frames = [test[i] for i in np.linspace(0, len(test) - 1, args.timed).round().astype(int)]
    model.predict_energies_and_forces(frames[0])
    model.predict_energies_and_forces(frames[0], return_std=True)
    times = {False: [], True: []}
    for f in frames:
        for with_std in (False, True):
            t0 = time.perf_counter()
            model.predict_energies_and_forces(f, return_std=with_std)
            times[with_std].append(time.perf_counter() - t0)
    t1, t1s = (1000 * float(np.median(times[k])) for k in (False, True))
    print(f"one frame: predict_energies_and_forces {t1:.2f} ms, with return_std {t1s:.2f} ms ({t1s / t1:.1f}x); "
          f"{len(test)} frames at once: {1000 * t_batch / len(test):.2f} ms/frame, with std "
          f"{1000 * t_batch_std / len(test):.2f} ms/frame")


if __name__ == "__main__":
    main()
