"""FCHL19 against qmllib's generate_fchl19, measured in the same run on QM9 molecules.

    .venv/bin/python benchmarks/fchl19.py [--n 1000] [--n-single 20] [--skip 30000] [--repeat 3]

(a) Throughput of values: molkrr's FCHL19().transform on a batch (global form) against qmllib's
    generate_fchl19 called per molecule in a Python loop (the way qmllib is used) and summed over atoms.
    Target: ratio ≥ 1.
(b) Force path latency for one molecule: molkrr's transform + vjp (∂E/∂R from G = ∂E/∂X) against
    qmllib's generate_fchl19(..., gradients=True) alone (the dense (n, 720, n, 3) gradient a force
    calculation would contract afterwards). Per molecule the best of --repeat calls; the table gives the
    sum over --n-single molecules. Target: ratio ≥ 5.
Values are checked to agree. Numba compilation is excluded (warm-up first).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _timing import best_time
from molkrr.datasets import load_qm9
from molkrr.representations.fchl19 import FCHL19

ELEMENTS = [1, 6, 7, 8, 9]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="molecules for the throughput test (default 1000)")
    ap.add_argument("--n-single", type=int, default=20, help="molecules for the one-molecule latency test")
    ap.add_argument("--skip", type=int, default=30000, help="QM9 rows (file order) skipped first")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    args = ap.parse_args()

    from qmllib.representations import generate_fchl19

    mols = load_qm9(indices=range(args.skip, args.skip + args.n))
    print(f"{len(mols)} QM9 molecules (rows {args.skip}..{args.skip + len(mols) - 1}), "
          f"{mols.n_atoms.mean():.1f} atoms on average, max {mols.n_atoms.max()}")

    rep = FCHL19().fit(mols)
    t0 = time.perf_counter()
    rep.transform(mols[:2])
    rep.vjp(mols[:2], np.ones((2, rep.n_features_)))
    print(f"warm-up (numba compile or cache load): {time.perf_counter() - t0:.2f} s")

    # ---- (a) values throughput
    def qml_values():
        return np.array([generate_fchl19(z, r, elements=ELEMENTS).sum(axis=0) for z, r in mols])

    X = rep.transform(mols)
    err = np.abs(X - qml_values()).max()
    t_ours = best_time(lambda: rep.transform(mols), args.repeat)
    t_qml = best_time(qml_values, args.repeat)

    # ---- (b) one molecule: transform + vjp against qmllib's dense gradient
    single = [mols[i] for i in np.linspace(0, len(mols) - 1, min(args.n_single, len(mols))).astype(int)]
    rng = np.random.default_rng(0)
    ours_b, qml_b, vjp_only, grad_err = 0.0, 0.0, 0.0, 0.0
    for m in single:
        G = rng.normal(size=(1, rep.n_features_))
        z, r = m.numbers, m.positions

        def ours():
            rep.transform(m)
            return rep.vjp(m, G)

        def qml():
            return generate_fchl19(z, r, elements=ELEMENTS, gradients=True)

        v = ours()[0]
        _, grad = qml()
        ref = np.einsum("f,afbc->bc", G[0], grad)
        grad_err = max(grad_err, np.abs(v - ref).max() / np.abs(ref).max())
        ours_b += best_time(ours, args.repeat)
        vjp_only += best_time(lambda: rep.vjp(m, G), args.repeat)
        qml_b += best_time(qml, args.repeat)
    n_atoms_b = np.mean([len(m.numbers) for m in single])

    rows = [
        ("(a) values, molecules/s", len(mols) / t_ours, len(mols) / t_qml, t_qml / t_ours, "≥ 1"),
        (f"(b) force path, ms/molecule ({len(single)} mols, {n_atoms_b:.1f} atoms)",
         1e3 * ours_b / len(single), 1e3 * qml_b / len(single), qml_b / ours_b, "≥ 5"),
        ("    of which vjp alone, ms/molecule", 1e3 * vjp_only / len(single), float("nan"), float("nan"), ""),
    ]
    print()
    print(f"{'measure':58s} {'molkrr':>10s} {'qmllib':>10s} {'ratio':>8s} {'target':>7s}")
    for name, a, b, ratio, target in rows:
        cells = [f"{v:10.3f}" if np.isfinite(v) else f"{'-':>10s}" for v in (a, b)]
        rcell = f"{ratio:8.2f}" if np.isfinite(ratio) else f"{'-':>8s}"
        print(f"{name:58s} {cells[0]} {cells[1]} {rcell} {target:>7s}")
    print()
    print("(a) is molkrr FCHL19().transform (global) on the batch vs qmllib generate_fchl19 per molecule + sum;")
    print("(b) is transform + vjp vs generate_fchl19(..., gradients=True) alone. Ratio = qmllib time / molkrr time.")
    print(f"max |X - X_qmllib| = {err:.2e}; max relative |vjp - G·grad_qmllib| = {grad_err:.2e}")


if __name__ == "__main__":
    main()
