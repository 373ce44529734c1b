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

from molkrr import MolecularKRR
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
    t_an, forces = [], []
    for mol in singles:
        t0 = time.perf_counter()
        _, (F,) = model.predict_energies_and_forces(mol)
        t_an.append(time.perf_counter() - t0)
        forces.append(F)
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
    an, fd, seq = np.median(t_an), np.median(t_fd), np.median(t_seq)
    natoms = np.mean(query.n_atoms)
    print(f"{'':40s}{'median ms/molecule':>20s}{'ratio':>8s}")
    print(f"{'analytic energy + forces':40s}{an * 1e3:20.3f}{1:8.1f}")
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
