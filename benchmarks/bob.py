"""Bag of Bonds throughput against qmllib's generate_bob, measured in the same run on QM9 molecules.

    .venv/bin/python benchmarks/bob.py [--n 2000] [--repeat 3]

Prints molecules per second of molkrr's BagOfBonds.transform and of qmllib's generate_bob called in a
Python loop (the way qmllib is used), with the same bag sizes; the values are checked to agree. Then
the latency of one-molecule calls: transform, vjp (∂E/∂R from G = ∂E/∂X) and the explicit Jacobian.

qmllib's Fortran uses OpenMP; for molecules this small one thread is its fastest setting on a shared
2-core machine, so OMP_NUM_THREADS defaults to 1 here (set it yourself to override).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before qmllib loads its OpenMP runtime

import argparse

import numpy as np

from _timing import best_time
from molkrr.datasets import load_qm9
from molkrr.representations.bob import BagOfBonds

SYMBOL = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="QM9 molecules (default 2000)")
    ap.add_argument("--skip", type=int, default=10000, help="QM9 rows (file order) skipped first")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    args = ap.parse_args()

    from qmllib.representations import generate_bob

    mols = load_qm9(indices=range(args.skip, args.skip + args.n))
    rep = BagOfBonds().fit(mols)
    asize = {SYMBOL[int(z)]: int(s) for z, s in zip(rep.elements_, rep.bag_sizes_)}
    pairs = list(mols)

    def qml():
        return np.array([generate_bob(z, r, None, size=30, asize=asize) for z, r in pairs])

    X = rep.transform(mols)
    err = np.abs(X - qml()).max()
    t_q = best_time(qml, args.repeat)
    t_m = best_time(lambda: rep.transform(mols), args.repeat)

    G = np.random.default_rng(0).normal(size=X.shape)
    t_vjp_batch = best_time(lambda: rep.vjp(mols, G), args.repeat)

    one = mols[int(np.argmax(mols.n_atoms))]
    g1 = G[:1]
    z1, r1 = next(iter(one))
    k = 200
    t_q1 = best_time(lambda: [generate_bob(z1, r1, None, size=30, asize=asize) for _ in range(k)], args.repeat) / k
    t_t1 = best_time(lambda: [rep.transform(one) for _ in range(k)], args.repeat) / k
    t_v1 = best_time(lambda: [rep.vjp(one, g1) for _ in range(k)], args.repeat) / k
    t_j1 = best_time(lambda: [rep.jacobian(one) for _ in range(10)], args.repeat) / 10

    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"QM9: {len(mols)} molecules ({mols.n_atoms.min()}-{mols.n_atoms.max()} atoms), "
          f"bag sizes {asize}, {rep.n_features_} features; max |molkrr − qmllib| = {err:.1e}")
    print()
    print(f"{'batch of ' + str(len(mols)):<40}{'molecules/s':>14}{'ratio to qmllib':>18}")
    print(f"{'qmllib generate_bob (Python loop)':<40}{len(mols) / t_q:>14,.0f}{1.0:>18.2f}")
    print(f"{'molkrr BagOfBonds.transform':<40}{len(mols) / t_m:>14,.0f}{t_q / t_m:>18.2f}")
    print(f"{'molkrr BagOfBonds.vjp':<40}{len(mols) / t_vjp_batch:>14,.0f}{t_q / t_vjp_batch:>18.2f}")
    print()
    print(f"{'one molecule, ' + str(int(one.n_atoms[0])) + ' atoms':<40}{'time (µs)':>14}{'ratio to qmllib':>18}")
    print(f"{'qmllib generate_bob':<40}{t_q1 * 1e6:>14,.1f}{1.0:>18.2f}")
    print(f"{'molkrr transform':<40}{t_t1 * 1e6:>14,.1f}{t_t1 / t_q1:>18.2f}")
    print(f"{'molkrr vjp':<40}{t_v1 * 1e6:>14,.1f}{t_v1 / t_q1:>18.2f}")
    print(f"{'molkrr jacobian (reference loop)':<40}{t_j1 * 1e6:>14,.1f}{t_j1 / t_q1:>18.2f}")


if __name__ == "__main__":
    main()
