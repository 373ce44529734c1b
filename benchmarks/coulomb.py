"""Throughput of CoulombMatrix.transform against qmllib, measured in the same run.

    .venv/bin/python benchmarks/coulomb.py [--n 20000] [--repeats 3]

Molecules: QM9 via molkrr.datasets.load_qm9 (random subset, seed 0). Sizes: 29 (all of QM9 fits).
qmllib is called once per molecule (its API is per molecule) with its OpenMP pool limited to one
thread: on molecules this small its threaded code is mostly synchronisation overhead (10-20x
slower on this 2-core machine; ``--qmllib-default-threads`` measures that too, which takes minutes).
Times are the best of ``--repeats`` runs after one warm-up (which also loads the numba cache).
"""

from __future__ import annotations

import argparse

import numpy as np

from _timing import best_time
from molkrr.datasets import load_qm9
from molkrr.representations.coulomb import CoulombMatrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="number of QM9 molecules")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--qmllib-default-threads", action="store_true", help="also time qmllib's default OpenMP pool")
    args = parser.parse_args()

    from qmllib.representations import generate_coulomb_matrix, generate_coulomb_matrix_eigenvalue
    from threadpoolctl import threadpool_limits

    mols, source = load_qm9(n=args.n, seed=0), f"load_qm9(n={args.n}, seed=0)"
    size = 29
    per_mol = [(Z.astype(np.float64), R) for Z, R in mols]
    print(f"{len(mols)} molecules ({source}), {int(mols.n_atoms.min())}-{int(mols.n_atoms.max())} atoms, size {size}")

    rows = []
    for variant in ("sorted", "unsorted", "eigenvalues"):
        rep = CoulombMatrix(variant, size=size).fit(mols)
        t_ours = best_time(lambda: rep.transform(mols), args.repeats, warmup=True)
        if variant == "eigenvalues":
            q = lambda: [generate_coulomb_matrix_eigenvalue(Z, R, size=size) for Z, R in per_mol]  # noqa: E731
        else:
            sorting = "row-norm" if variant == "sorted" else "unsorted"
            q = lambda: [generate_coulomb_matrix(Z, R, size=size, sorting=sorting) for Z, R in per_mol]  # noqa: E731
        reps = 1 if variant == "eigenvalues" else args.repeats  # qmllib's padded dsyev is slow
        with threadpool_limits(1, user_api="openmp"):
            t_q1 = best_time(q, reps, warmup=True)
            X = rep.transform(mols)  # same numbers?
            err = np.abs(X - np.array(q())).max()
        t_q = best_time(q, 1, warmup=True) if args.qmllib_default_threads else np.nan
        rows.append((variant, len(mols) / t_ours, len(mols) / t_q1, len(mols) / t_q, err))

    print()
    print(f"{'variant':<12} {'molkrr mol/s':>13} {'qmllib mol/s':>13} {'ratio':>7} {'max |diff|':>10}", end="")
    print(f" {'qmllib default threads':>23}" if args.qmllib_default_threads else "")
    for variant, ours, q1, q, err in rows:
        print(f"{variant:<12} {ours:13,.0f} {q1:13,.0f} {ours / q1:7.1f} {err:10.1e}", end="")
        print(f" {q:23,.0f}" if args.qmllib_default_threads else "")

    # vjp / jacobian for one molecule (the largest in the set)
    i = int(np.argmax(mols.n_atoms))
    one = mols[i]
    print()
    print(f"one molecule, {int(one.n_atoms[0])} atoms:")
    print(f"{'variant':<12} {'transform µs':>13} {'vjp µs':>9} {'jacobian µs':>12}")
    for variant in ("sorted", "unsorted", "eigenvalues"):
        rep = CoulombMatrix(variant, size=size).fit(mols)
        G = np.random.default_rng(0).normal(size=(1, rep.n_features_))
        t_x = best_time(lambda: rep.transform(one), 20, warmup=True)
        t_v = best_time(lambda: rep.vjp(one, G), 20, warmup=True)
        t_j = best_time(lambda: rep.jacobian(one), 3, warmup=True)
        print(f"{variant:<12} {t_x * 1e6:13.0f} {t_v * 1e6:9.0f} {t_j * 1e6:12.0f}")
    # vjp over the whole batch
    rep = CoulombMatrix("sorted", size=size).fit(mols)
    G = np.random.default_rng(0).normal(size=(len(mols), rep.n_features_))
    t_vb = best_time(lambda: rep.vjp(mols, G), 1, warmup=True)
    print(f"\nvjp (sorted) over all {len(mols)} molecules: {len(mols) / t_vb:,.0f} molecules/s")


if __name__ == "__main__":
    main()
