"""(σ, λ) of the Nyström model on a QM9 validation set, sharing one distance matrix across σ.

Same split as benchmarks/large_n.py (seed-0 permutation; validation = the 3,000 molecules after the first
110,831) and the same features: read from the cache large_n.py writes (--cache, same default: $MOLKRR_BENCH_CACHE,
else ``molkrr-bench`` in the system temp dir), computed there first when missing (a few minutes). Prints the
validation MAE and the CG iterations per (σ, λ).

From a clean clone (``pip install -e '.[qm9]'``)::

    python benchmarks/large_n_tune.py N M SIGMAS LAMS TOL [--cache DIR]
    python benchmarks/large_n_tune.py 20000 5000 85,120,170,340 1e-10,1e-9,1e-8 1e-5
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from large_n import DEFAULT_CACHE, ensure_features  # noqa: E402  (the sibling script: one cache, one split)


def floats(text):
    return [float(v) for v in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("n", type=int, help="training molecules (a prefix of the seed-0 permutation, ≤ 110,831)")
    p.add_argument("m", type=int, help="Nyström centres")
    p.add_argument("sigmas", type=floats, help="comma-separated σ values")
    p.add_argument("lams", type=floats, help="comma-separated λ values")
    p.add_argument("tol", type=float, help="CG relative residual tolerance")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"folder of the cached QM9 features (default {DEFAULT_CACHE})")
    args = p.parse_args()
    if not 2 <= args.n <= 110831 or not 1 <= args.m <= args.n:
        p.error("need 2 ≤ n ≤ 110,831 and 1 ≤ m ≤ n")

    warnings.simplefilter("ignore")
    from molkrr.kernels import squared_distances
    from molkrr.solvers.falkon import choose_centers, preconditioned_cg

    fx, fe = ensure_features(args.cache)
    X = np.load(fx, mmap_mode="r")
    E = np.load(fe)
    perm = np.random.default_rng(0).permutation(len(E))
    n, m, tol = args.n, args.m, args.tol
    va, tr = perm[110831:113831], perm[:n]
    Xtr = np.ascontiguousarray(X[tr]); ytr = E[tr]; Xva = np.ascontiguousarray(X[va]); yva = E[va]
    mu = ytr.mean(); c = choose_centers(n, m, 0); C = Xtr[c]
    t = time.perf_counter()
    D = squared_distances(Xtr, C); Dmm = squared_distances(C, C); Dva = squared_distances(Xva, C)
    print("distances", time.perf_counter() - t, flush=True)
    for sigma in args.sigmas:
        g = -0.5 / sigma**2
        K = np.exp(D * g)
        for lam in args.lams:
            t = time.perf_counter()
            r = preconditioned_cg(lambda V: K.T @ (K @ V), K.T @ (ytr - mu), lambda: np.exp(Dmm * g), n, lam, tol=tol,
                                  max_iter=400)
            print(n, m, sigma, lam, r.n_iter, "val MAE %.4f" % np.mean(np.abs(np.exp(Dva * g) @ r.alpha + mu - yva)),
                  "%.1f s" % (time.perf_counter() - t), flush=True)
        del K


if __name__ == "__main__":
    main()
