"""Energy + analytic forces for one molecule vs central finite differences of the same model.

Trains MolecularKRR on N QM9 molecules (default 10,000; fixed σ, λ so no selection time), then for
molecules from a held-out set times
  * analytic: ``predict_energies_and_forces(one molecule)``,
  * finite differences: 6·n_atoms displaced energies of the same model, evaluated as ONE batch
    (the fastest honest way to do finite differences),
and prints the per-molecule times and their ratio. With ``--qmllib`` (FCHL19 only) it also times
qmllib's dense FCHL19 gradient generation alone (gradients=True) for the same molecules.

    python benchmarks/forces.py                       # sorted CM, Gaussian, 10,000 training molecules
    python benchmarks/forces.py --representation fchl19 --qmllib
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _timing import best_time
from molkrr import MolecularKRR, kernels
from molkrr.datasets import load_qm9
from molkrr.datasets.qm9 import representation_params
from molkrr.model import finite_difference_forces
from molkrr.representations import make_representation

SIGMA = {"cm-sorted": 1000.0, "cm-unsorted": 1000.0, "cm-eigenvalues": 100.0, "bob": 500.0, "fchl19": 800.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--representation", default="cm-sorted")
    p.add_argument("--kernel", default="gaussian")
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-query", type=int, default=30)
    p.add_argument("--qmllib", action="store_true", help="also time qmllib's dense FCHL19 gradient")
    args = p.parse_args()

    mols = load_qm9(args.n_train + args.n_query, seed=1)
    train, query = mols[: args.n_train], mols[args.n_train :]
    rep = make_representation(args.representation, **representation_params(args.representation))
    t0 = time.perf_counter()
    model = MolecularKRR(rep, kernel=args.kernel, sigma=SIGMA.get(args.representation, 500.0), lam=1e-8).fit(train)
    print(f"fit on {args.n_train} molecules ({args.representation}, {args.kernel}): {time.perf_counter() - t0:.1f} s")

    model.predict_energies_and_forces(query[0])  # warm up (numba, caches)
    finite_difference_forces(model, query[0])
    singles = [query[i] for i in range(len(query))]

    def time_analytic(single_query: bool) -> tuple[list[float], list[np.ndarray]]:
        """Best of 3 per molecule, with the single-query kernel path on or off for the whole loop."""
        saved = kernels.SINGLE_QUERY_MIN_ROWS
        kernels.SINGLE_QUERY_MIN_ROWS = saved if single_query else 10**12
        try:
            times = [best_time(lambda: model.predict_energies_and_forces(mol), 3) for mol in singles]
            out = [model.predict_energies_and_forces(mol)[1][0] for mol in singles]
        finally:
            kernels.SINGLE_QUERY_MIN_ROWS = saved
        return times, out

    # A B A B: the single-query kernel path (default) against the two-GEMV path, in blocks, not
    # interleaved per call (switching between numba's and OpenBLAS's thread pools slows both)
    rounds = [time_analytic(flag) for flag in (True, False, True, False)]
    t_an = np.minimum(rounds[0][0], rounds[2][0])
    t_blas = np.minimum(rounds[1][0], rounds[3][0])
    forces = rounds[0][1]
    dev = [np.abs(F - G).max() / np.abs(F).max() for F, G in zip(forces, rounds[1][1])]
    # the two parts: the representation (transform + VJP) and one read of the training matrix
    # (a matrix-vector product: the memory-bound floor of the kernel part, which must read it once)
    rep_ = model.representation_
    t_rep = [best_time(lambda: rep_.vjp(mol, np.ones_like(rep_.transform(mol))), 3) for mol in singles]
    X_fit = model.krr_.X_fit_
    v = np.ones(X_fit.shape[1])
    t_read = best_time(lambda: X_fit @ v, 10)
    t_fd, errs = [], []
    for mol, F in zip(singles, forces):
        t0 = time.perf_counter()
        F_fd = finite_difference_forces(model, mol, h=1e-3)  # larger h: a 10,000-molecule model is noisy at 1e-13 relative
        t_fd.append(time.perf_counter() - t0)
        errs.append(np.abs(F - F_fd).max() / np.abs(F_fd).max())
    # finite differences the way they are usually written: one model call per displaced geometry
    t_seq = []
    for mol in singles[:5]:
        t0 = time.perf_counter()
        R = mol.positions
        for a in range(R.shape[0]):
            for k in range(3):
                for sgn in (1.0, -1.0):
                    Rd = R.copy()
                    Rd[a, k] += sgn * 1e-4
                    model.predict(mol.with_positions(Rd))
        t_seq.append(time.perf_counter() - t0)
    an, fd, seq, blas = np.median(t_an), np.median(t_fd), np.median(t_seq), np.median(t_blas)
    natoms = np.mean(query.n_atoms)
    print(f"{'':40s}{'median ms/molecule':>20s}{'ratio':>8s}")
    print(f"{'analytic energy + forces':40s}{an * 1e3:20.3f}{1:8.1f}")
    print(f"{'  same, two-GEMV kernel path':40s}{blas * 1e3:20.3f}{blas / an:8.1f}")
    print(f"  (max relative difference of the two paths' forces: {max(dev):.1e}, rounding order)")
    print(f"{'  of which representation + VJP':40s}{np.median(t_rep) * 1e3:20.3f}")
    print(f"{'  one read of the training matrix':40s}{t_read * 1e3:20.3f}"
          f"   ({X_fit.nbytes / 1e6:.0f} MB at {X_fit.nbytes / t_read / 1e9:.1f} GB/s)")
    print(f"{'finite differences, one batched call':40s}{fd * 1e3:20.3f}{fd / an:8.1f}")
    print(f"{'finite differences, call per geometry':40s}{seq * 1e3:20.3f}{seq / an:8.1f}")
    print(f"(mean {natoms:.1f} atoms; targets: >= 20x faster than finite differences, < 2 ms)")
    print(f"median relative difference analytic vs FD: {np.median(errs):.1e} (sorted representations: order changes within h)")

    if args.qmllib:
        from qmllib.representations import generate_fchl19
        from threadpoolctl import threadpool_limits

        t_q = []
        with threadpool_limits(1):
            for z, r in query:
                generate_fchl19(z, r, elements=[1, 6, 7, 8, 9], gradients=True)
            for z, r in query:
                t0 = time.perf_counter()
                generate_fchl19(z, r, elements=[1, 6, 7, 8, 9], gradients=True)
                t_q.append(time.perf_counter() - t0)
        q = np.median(t_q)
        print(f"{'qmllib dense FCHL19 gradient':32s}{q * 1e3:20.3f}")
        print(f"molkrr energy+forces / qmllib gradient alone: {an / q:.3f}  (target <= 0.2)")


if __name__ == "__main__":
    main()
