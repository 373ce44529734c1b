"""Large-n KRR on QM9 (FCHL19-global): time, peak memory and test MAE against n, exact vs FALKON vs Dask.

Every point runs in a fresh subprocess (peak RSS from getrusage is per process; for the Dask points the
workers' peak is added, from RUSAGE_CHILDREN after the cluster has closed). Split (fixed, seed 0): a
permutation of QM9's 130,831 molecules; the last 10,000 are the test set, the 10,000 before them are kept
for validation (unused here), training sets are prefixes of the rest (n ≤ 110,831).

Printed beside each measurement, the cost model:
  exact   flops 2n²d (kernel) + n³/3 (Cholesky); memory 8n² bytes (one n×n matrix)
  falkon  flops 2nmd (K_nm) + 4m³/3 (two Cholesky + LᵀL); per CG iteration 4nm + 4m²;
          memory n·m·s (s = 8 or 4 bytes) + 16m²; bytes read per CG iteration 2·n·m·s
  dask    as falkon, split over workers; network per CG iteration and worker: 16·m bytes per shard it holds
          (the m-vector out, the m-vector back), independent of n
and the ratios (exact/falkon time and memory at the same n, dask/single time at the same n).

Features: FCHL19-global of all of QM9 (offline, from qm9pack), computed on the first run (a few minutes)
and cached as .npy (about 0.75 GB) in --cache: default $MOLKRR_BENCH_CACHE, else ``molkrr-bench`` in the
system temp dir (:func:`tempfile.gettempdir`). benchmarks/large_n_tune.py reads the same cache.

From a clean clone (``pip install -e '.[qm9,dask]'``)::

    python benchmarks/large_n.py                                   # n = 10k, 20k, 50k, 110,831
    python benchmarks/large_n.py --n 20000 --exact-max 20000 --m 8000 --dask-n 0
    python benchmarks/large_n.py --n 110831 --m 16000 --exact-max 0 --dask-n 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

N_QM9 = 130_831
N_TEST = 10_000
N_VALIDATION = 10_000
N_TRAIN_MAX = N_QM9 - N_TEST - N_VALIDATION  # 110,831
#: Folder of the cached features: $MOLKRR_BENCH_CACHE, else molkrr-bench in the system temp dir.
DEFAULT_CACHE = os.environ.get("MOLKRR_BENCH_CACHE") or os.path.join(tempfile.gettempdir(), "molkrr-bench")

CHILD = r"""
import json, os, resource, sys, time, warnings
import numpy as np
args = json.loads(sys.argv[1])
X_all = np.load(args["features"], mmap_mode="r")
E = np.load(args["energies"])
perm = np.random.default_rng(0).permutation(len(E))
tr, te = perm[: args["n"]], perm[len(E) - %(N_TEST)d :]
X, y = np.ascontiguousarray(X_all[tr]), E[tr]
Xte, yte = np.ascontiguousarray(X_all[te]), E[te]
from molkrr import KernelRidge  # imported before the clock starts
info = {}
if args["mode"] == "dask":
    from distributed import Client, LocalCluster
    from molkrr.solvers.dask import falkon_solve_dask
    from molkrr.solvers.falkon import choose_centers
    cluster = LocalCluster(n_workers=args["workers"], threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=0)
    client = Client(cluster)
    client.run(lambda: __import__("molkrr.solvers.falkon"))  # workers import before the clock starts
t0 = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if args["mode"] == "dask":
        model = KernelRidge("gaussian", args["sigma"], args["lam"], solver="falkon", n_centers=args["m"])
        mean = y.mean()
        C = np.ascontiguousarray(X[choose_centers(len(y), args["m"], 0)])
        res = falkon_solve_dask(client, model._kernel(), X, y - mean, args["lam"], C, tol=args["tol"],
                                max_iter=args["max_iter"], dtype=args["dtype"], progress=args["progress"])
        seconds = time.perf_counter() - t0
        model.X_fit_, model.alpha_, model.y_mean_, model.n_features_in_ = C, res.alpha, mean, X.shape[1]
        info["n_iter"] = res.n_iter
    else:
        model = KernelRidge("gaussian", args["sigma"], args["lam"], solver=args["mode"], n_centers=args["m"],
                            cg_tol=args["tol"], cg_max_iter=args["max_iter"])
        if args["mode"] == "falkon" and args["dtype"] != "float64":
            from molkrr.solvers import falkon as fk
            from molkrr.solvers.falkon import choose_centers
            mean = y.mean()
            C = np.ascontiguousarray(X[choose_centers(len(y), args["m"], 0)])
            res = fk.falkon_solve(model._kernel(), X, y - mean, args["lam"], C, tol=args["tol"],
                                  max_iter=args["max_iter"], dtype=args["dtype"], progress=args["progress"])
            model.X_fit_, model.alpha_, model.y_mean_, model.n_features_in_ = C, res.alpha, mean, X.shape[1]
            info["n_iter"] = res.n_iter
        else:
            model.fit(X, y, progress=args["progress"])
            info["n_iter"] = getattr(model, "n_iter_", None)
        seconds = time.perf_counter() - t0
info["warnings"] = [str(w.message)[:120] for w in caught]
mae = float(np.mean(np.abs(model.predict(Xte) - yte)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if args["mode"] == "dask":
    client.close(); cluster.close(); time.sleep(1)
    info["worker_peak_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "test_mae": mae, **info}))
""" % {"N_TEST": N_TEST}


def ensure_features(cache: str) -> tuple[str, str]:
    """Paths of the cached FCHL19-global features of all of QM9 (file order) and their energies (kcal/mol)."""
    fx, fe = os.path.join(cache, "qm9_fchl19_X.npy"), os.path.join(cache, "qm9_energies_kcal.npy")
    if os.path.exists(fx) and os.path.exists(fe):
        return fx, fe
    import numpy as np

    from molkrr.datasets import load_qm9
    from molkrr.representations.fchl19 import FCHL19

    os.makedirs(cache, exist_ok=True)
    print(f"computing FCHL19-global features of all of QM9 into {cache} (a few minutes, once) ...", flush=True)
    mols = load_qm9(None, unit="kcal/mol")
    rep = FCHL19(form="global").fit(mols)
    X = np.concatenate([rep.transform(mols[s : s + 5000]) for s in range(0, len(mols), 5000)])
    np.save(fx, X)
    np.save(fe, mols.energies)
    return fx, fe


def run_point(args: dict) -> dict:
    # with --progress the child's stderr (the CG bar with its residual) goes straight to ours
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                          stderr=None if args["progress"] else subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = ((proc.stderr or "").strip().splitlines() or ["see the output above"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cost_model(mode: str, n: int, m: int, d: int, itemsize: int, workers: int) -> str:
    if mode == "cholesky":
        return f"flops {2 * n * n * d + n**3 / 3:.2e}; n×n matrix {8 * n * n / 1e9:.2f} GB"
    setup = 2 * n * m * d + 4 * m**3 / 3
    per_it = 4 * n * m + 4 * m * m
    mem = n * m * itemsize + 16 * m * m
    line = (f"setup flops {setup:.2e}; per CG it {per_it:.2e} flops, {2 * n * m * itemsize / 1e9:.2f} GB read; "
            f"K_nm + precond {mem / 1e9:.2f} GB")
    if mode == "dask":
        line += f"; network per it and worker {16 * m / 1e3:.0f} kB ({workers} workers, 1 shard each)"
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 20_000, 50_000, N_TRAIN_MAX])
    p.add_argument("--m", type=int, nargs="+", default=[8000], help="Nyström centres (one or one per n)")
    p.add_argument("--sigma", type=float, default=680.0)
    p.add_argument("--lam", type=float, default=1e-10)
    p.add_argument("--tol", type=float, default=1e-5, help="CG relative residual tolerance")
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--exact-max", type=int, default=20_000, help="largest n for the exact solver (0: none)")
    p.add_argument("--exact-sigma", type=float, default=None, help="σ for the exact solver (default --sigma)")
    p.add_argument("--dask-n", type=int, nargs="*", default=[50_000], help="n at which to compare Dask (2 workers)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--progress", action="store_true", help="show the CG progress bar (residual) of every point")
    p.add_argument("--cache", default=DEFAULT_CACHE,
                   help=f"Folder of the cached QM9 features, made on the first run (default {DEFAULT_CACHE}).")
    args = p.parse_args()
    if any(n > N_TRAIN_MAX or n < 2 for n in args.n):
        p.error(f"n must lie in [2, {N_TRAIN_MAX}]")
    ms = args.m * len(args.n) if len(args.m) == 1 else args.m
    if len(ms) != len(args.n):
        p.error("give one --m or one per --n")
    fx, fe = ensure_features(args.cache)
    import numpy as np

    d = int(np.load(fx, mmap_mode="r").shape[1])
    itemsize = 8 if args.dtype == "float64" else 4
    print(f"QM9 FCHL19-global (d={d}), gaussian sigma={args.sigma:g}, lambda={args.lam:g}, CG tol={args.tol:g}, "
          f"K_nm {args.dtype}; test set {N_TEST}", flush=True)
    print(f"{'solver':>9} {'n':>7} {'m':>6} {'iters':>5} {'seconds':>8} {'peak GB':>8} {'test MAE':>9}  cost model",
          flush=True)
    results = []
    for n, m in zip(args.n, ms):
        modes = (["cholesky"] if n <= args.exact_max else []) + ["falkon"] + (["dask"] if n in args.dask_n else [])
        for mode in modes:
            sigma = args.exact_sigma if (mode == "cholesky" and args.exact_sigma) else args.sigma
            point = {"mode": mode, "n": n, "m": min(m, n), "sigma": sigma, "lam": args.lam, "tol": args.tol,
                     "max_iter": args.max_iter, "dtype": args.dtype, "workers": args.workers,
                     "features": fx, "energies": fe, "progress": args.progress}
            r = run_point(point)
            results.append({**point, **r})
            if "error" in r:
                print(f"{mode:>9} {n:>7} {'':>6} {r['error']}", flush=True)
                continue
            peak = r["peak_bytes"] + r.get("worker_peak_bytes", 0)
            m_txt = "" if mode == "cholesky" else str(min(m, n))
            it_txt = "" if r.get("n_iter") is None else str(r["n_iter"])
            print(f"{mode:>9} {n:>7} {m_txt:>6} {it_txt:>5} {r['seconds']:8.1f} {peak / 1e9:8.2f} {r['test_mae']:9.4f}  "
                  f"{cost_model(mode, n, min(m, n), d, itemsize, args.workers)}", flush=True)
            for w in r.get("warnings", []):
                print(f"{'':>9} warning: {w}", flush=True)
        by_mode = {x["mode"]: x for x in results if x["n"] == n and "error" not in x}
        if "cholesky" in by_mode and "falkon" in by_mode:
            e, f = by_mode["cholesky"], by_mode["falkon"]
            print(f"{'':>9} n={n}: falkon/exact time {f['seconds'] / e['seconds']:.2f}, peak memory "
                  f"{f['peak_bytes'] / e['peak_bytes']:.2f}, MAE {f['test_mae'] / e['test_mae'] - 1:+.1%}", flush=True)
        if "dask" in by_mode and "falkon" in by_mode:
            f, k = by_mode["falkon"], by_mode["dask"]
            print(f"{'':>9} n={n}: Dask ({args.workers} local workers) / single process time "
                  f"{k['seconds'] / f['seconds']:.2f}, |ΔMAE| {abs(k['test_mae'] - f['test_mae']):.1e}", flush=True)


if __name__ == "__main__":
    main()
