"""Local FCHL19 energies on QM9: the fit of molkrr's element-blocked local Gram, beside the molecule-pair
path it replaced and kernelforge's ``LocalKRRModel`` (benchmark-only: ``pip install kernelforge==1.1.0``),
on the same molecules, in one run, with the GEMM floor measured on this machine.

    python benchmarks/local_kernel.py --n-train 1000 --n-test 500
    python benchmarks/local_kernel.py --n-train 10000 --n-test 1000 --skip pairs kernelforge

Each model runs in a fresh process (peak memory = that process's maximum RSS). Fixed σ = 4, λ = 1e-8 (the
tuned local FCHL19 values of ../shared-science at N = 1,000); fit time includes the representation.
"pairs" is the previous path (batched products over runs of molecules with equal labels: on QM9 every run is
one molecule), timed for the Gram matrix and the solve only. The GEMM floor is Σ_z n_z(n_z + 1)/2 · 2d flops
(the same-element atom pairs on and below the diagonal, what the Gram computes) at the GEMM rate measured
here. Needs the QM9 data: ``pip install -e '.[qm9]'``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SIGMA, LAM, SEED = 4.0, 1e-8, 2029
MODELS = ("molkrr", "pairs", "kernelforge")


def _data(n_train: int, n_test: int):
    from molkrr.datasets import load_qm9

    mols = load_qm9(n_train + n_test, seed=SEED, unit="kcal/mol")
    return mols[:n_train], mols[n_train:]


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux → GB


def run_one(model: str, n_train: int, n_test: int) -> dict:
    """Fit (and test) one model in this process; the dict printed as JSON."""
    train, test = _data(n_train, n_test)
    if model == "molkrr":
        from molkrr import FCHL19, MolecularKRR

        t0 = time.perf_counter()
        m = MolecularKRR(FCHL19(form="atomic"), sigma=SIGMA, lam=LAM).fit(train)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = m.predict(test)
        return {"fit_s": fit, "predict_s": time.perf_counter() - t0, "mae": float(np.mean(np.abs(pred - test.energies))),
                "peak_gb": _peak_gb()}
    if model == "pairs":
        from molkrr import FCHL19
        from molkrr import derivative_krr as dk
        from molkrr.kernels import Gaussian
        from molkrr.linalg import spd_factor, spd_solve

        env = dk.environments(FCHL19(form="atomic").fit(train), train)
        t0 = time.perf_counter()
        rows = dk.row_layout(env, "energy")
        L, _ = spd_factor(lambda: dk.grouped_gram_matrix(Gaussian(SIGMA), env, "energy", rows, np.full(n_train, LAM)), 0.0)
        spd_solve(L, train.energies - train.energies.mean())
        return {"fit_s": time.perf_counter() - t0, "peak_gb": _peak_gb(), "note": "Gram + solve only"}
    if model == "kernelforge":
        from kernelforge import LocalKRRModel

        coords = [train.positions[train.atom_slice(m)] for m in range(len(train))]
        zs = [train.numbers[train.atom_slice(m)].astype(np.int32) for m in range(len(train))]
        t0 = time.perf_counter()
        kf = LocalKRRModel(sigma=SIGMA, l2=LAM, elements=[1, 6, 7, 8, 9]).fit(coords, zs, energies=train.energies)
        fit = time.perf_counter() - t0
        tc = [test.positions[test.atom_slice(m)] for m in range(len(test))]
        tz = [test.numbers[test.atom_slice(m)].astype(np.int32) for m in range(len(test))]
        t0 = time.perf_counter()
        pred, _ = kf.predict(tc, tz, compute_energy=True, compute_forces=False)
        return {"fit_s": fit, "predict_s": time.perf_counter() - t0,
                "mae": float(np.mean(np.abs(np.asarray(pred).reshape(-1) - test.energies))), "peak_gb": _peak_gb()}
    raise SystemExit(f"unknown model {model}")


def gemm_floor(n_train: int) -> tuple[float, float]:
    """(GEMM rate in GFLOP/s measured now, floor in seconds of the local Gram's distance GEMMs)."""
    from molkrr import FCHL19
    from molkrr.datasets import load_qm9

    a = np.random.default_rng(0).standard_normal((4000, 720))
    a @ a.T
    best = min(_timed(lambda: a @ a[:3000].T) for _ in range(3))
    rate = 2 * 4000 * 3000 * 720 / best / 1e9
    mols = load_qm9(n_train, seed=SEED)
    counts = np.bincount(mols.numbers)
    d = FCHL19(form="atomic").fit(mols[:10]).n_features_
    flops = sum(2.0 * d * c * (c + 1) / 2 for c in counts if c)
    return rate, flops / (rate * 1e9)


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--skip", nargs="*", default=[], choices=MODELS, help="models not to run")
    ap.add_argument("--one", choices=MODELS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.n_train, args.n_test)))
        return
    rate, floor = gemm_floor(args.n_train)
    print(f"N = {args.n_train} QM9 molecules (seed {SEED}), {args.n_test} test; sigma = {SIGMA}, lambda = {LAM:g}")
    print(f"GEMM rate now: {rate:.1f} GFLOP/s; GEMM floor of the local Gram: {floor:.2f} s")
    results = {}
    for model in MODELS:
        if model in args.skip:
            continue
        if model == "kernelforge":
            try:
                import kernelforge  # noqa: F401
            except ImportError:
                print("kernelforge: not installed (pip install kernelforge==1.1.0), skipped")
                continue
        out = subprocess.run([sys.executable, __file__, "--one", model, "--n-train", str(args.n_train),
                              "--n-test", str(args.n_test)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{model}: failed\n{out.stderr[-2000:]}")
            continue
        results[model] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[model]
        mae = f"test MAE {r['mae']:.3f} kcal/mol, " if "mae" in r else ""
        pred = f"predict {r['predict_s']:.2f} s, " if "predict_s" in r else ""
        print(f"{model:12s} fit {r['fit_s']:8.2f} s  ({mae}{pred}peak {r['peak_gb']:.2f} GB){' ' + r.get('note', '')}")
    if "molkrr" in results:
        base = results["molkrr"]["fit_s"]
        print(f"molkrr fit / GEMM floor: {base / floor:.2f}")
        for model, r in results.items():
            if model != "molkrr":
                print(f"{model} / molkrr: fit {r['fit_s'] / base:.2f}x, peak memory "
                      f"{r['peak_gb'] / results['molkrr']['peak_gb']:.2f}x")


if __name__ == "__main__":
    main()
