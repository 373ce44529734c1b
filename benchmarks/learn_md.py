"""On-the-fly learning with GFN2-xTB against models trained on uniformly sampled frames of a plain xTB run.

    python benchmarks/learn_md.py [--steps 20000] [--threshold 0.05] [--temperature 500] [--uniform 300 1000]

Needs tblite (``pip install 'molkrr[md]'``). From a clean clone this uses the shipped trajectory
(GFN2-xTB Langevin MD of ethanol at 500 K, 1,500 frames 5 fs apart; ``scripts/make_md_data.py`` made it):

* on-the-fly: :func:`molkrr.active.learn_on_the_fly` from the trajectory's first frame, Langevin MD at
  ``--temperature`` with the model, xTB where the largest predicted force std passes ``--threshold``
  (σ, λ, λ_F re-selected as frames arrive, :mod:`molkrr.active`);
* uniform: the same model class trained on N frames evenly spaced over the trajectory's first 1,000 frames,
  σ/λ/λ_F selected on a later block of them (:mod:`molkrr.force_selection`);
* both tested on the last 500 frames (never used for any choice): force MAE in meV/Å.

Prints xTB calls, wall times and the ratio of each MAE to the uniform model with the most frames.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from molkrr.active import default_model, learn_on_the_fly
from molkrr.datasets.frames import read_frames
from molkrr.datasets.md import shipped_trajectory_path, xtb_calculator


def force_mae(model, test) -> float:
    _, F = model.predict_energies_and_forces(test)
    return 1000.0 * float(np.mean(np.abs(np.concatenate(F) - test.forces)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="trajectory (eV, eV/Å; default: the shipped ethanol one)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--threshold", type=float, default=0.05, help="eV/Å")
    p.add_argument("--temperature", type=float, default=500.0)
    p.add_argument("--max-calls", type=int, default=None)
    p.add_argument("--check-every", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uniform", type=int, nargs="*", default=[300, 1000])
    p.add_argument("--sigma", type=float, help="fix σ (and --lam, --lam-forces) for the on-the-fly model")
    p.add_argument("--lam", type=float)
    p.add_argument("--lam-forces", type=float)
    p.add_argument("--n-test", type=int, default=500)
    a = p.parse_args()

    mols, unit = read_frames(a.data or shipped_trajectory_path())
    assert unit == "eV", unit
    test = mols[len(mols) - a.n_test:]
    print(f"data: {len(mols)} frames, test: the last {a.n_test}")

    t0 = time.perf_counter()
    model = default_model().set_params(sigma=a.sigma, lam=a.lam, lam_forces=a.lam_forces)
    res = learn_on_the_fly(mols[0].to_ase()[0], xtb_calculator("GFN2-xTB"), threshold=a.threshold, steps=a.steps,
                           model=model,
                           temperature_K=a.temperature, seed=a.seed, max_calls=a.max_calls, check_every=a.check_every, progress=True)
    t_otf = time.perf_counter() - t0
    print(res.report.summary())
    otf_mae = force_mae(res.model, test)
    rows = [("on-the-fly", res.report.reference_calls, t_otf, otf_mae)]
    for n in a.uniform:
        idx = np.unique(np.linspace(0, 999, n).round().astype(int))
        t0 = time.perf_counter()
        model = default_model().fit(mols[idx])
        rows.append((f"uniform {n}", len(idx), time.perf_counter() - t0, force_mae(model, test)))
    ref = rows[-1][3]
    print(f"\n{'model':<14} {'xTB frames':>10} {'wall s':>8} {'force MAE meV/Å':>16} {'ratio':>6}")
    for name, calls, wall, mae in rows:
        print(f"{name:<14} {calls:>10d} {wall:>8.1f} {mae:>16.2f} {mae / ref:>6.2f}")
    print("(uniform: wall = fit incl. selection; the plain xTB run that made its frames is not counted)")


if __name__ == "__main__":
    main()
