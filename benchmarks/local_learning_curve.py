"""Learning curve on QM9 atomisation energies: local vs global FCHL19 (molkrr), beside kernelforge's
``LocalKRRModel`` and ``LocalRFFModel`` where they run on this machine, on the same split, in one run.

    python benchmarks/local_learning_curve.py --output "$(mktemp -d)"   # 1k ... 20k and all of QM9
    python benchmarks/local_learning_curve.py --sizes 1000 2000 --models local global   # a quick look

One QM9 draw (seed 2029): the test molecules are the first ``--n-test`` of it, the training sets the next
N (each a prefix of the larger ones). Every model chooses its hyperparameters on its own training set
(never on the test set): molkrr's local model with ``MolecularKRR(FCHL19(form="atomic"), sigma=None,
lam=None)`` (a later block of at most 2,000 of its training molecules validates, one distance pass for the
whole σ grid); the sparse local model the same with ``n_sparse=12000`` inducing environments
(:mod:`molkrr.solvers.sparse_local`); the global model with ``molkrr.krr.select_hyperparameters`` on at most 4,000 of its
training molecules (a random fifth validates), then the exact fit on all N; kernelforge's models with the σ
that is best for the local kernel at N = 1,000 (σ = 4; RFF: σ = 4 and 16, the better on validation).
Each (model, N) runs in a fresh process: peak memory is its maximum RSS. A model is skipped at sizes
where its estimated memory exceeds ``--max-gb``. Writes ``learning_curve.json``, ``learning_curve.md``
(the table) and ``learning_curve.png`` to ``--output``. Needs ``pip install -e '.[qm9]'`` (and
``pip install kernelforge==1.1.0`` for its rows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SEED = 2029
MODELS = ("local", "local-sparse", "global", "kernelforge-krr", "kernelforge-rff")
#: Inducing environments of the sparse local model.
N_SPARSE = 12000
#: Sizes at which a model runs (beyond them it is too slow here: kernelforge's RFF fit grows ~2.5 s per 100
#: molecules; the sparse model pays off only where n·atoms ≫ its 12,000 inducing environments).
SIZES = {"local-sparse": (10_000, 10**9), "kernelforge-rff": (0, 4000)}
#: Rough peak memory per model at N molecules (GB), to skip sizes that cannot run here (measured at 1,000).
MEMORY_GB = {"local": lambda n: 0.6 + 9e-9 * n * n, "local-sparse": lambda n: 6.0 + 2e-5 * n, "global": lambda n: 0.5 + 2.4e-8 * n * n,
             "kernelforge-krr": lambda n: 17.0 * (n / 1000) ** 2, "kernelforge-rff": lambda n: 2.0 + 1e-4 * n}


def _split(n_train: int, n_test: int):
    from molkrr.datasets import load_qm9

    mols = load_qm9(n_test + n_train, seed=SEED, unit="kcal/mol")
    return mols[n_test:], mols[:n_test]


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _lists(mols):
    coords = [mols.positions[mols.atom_slice(m)] for m in range(len(mols))]
    zs = [mols.numbers[mols.atom_slice(m)].astype(np.int32) for m in range(len(mols))]
    return coords, zs


def run_one(model: str, n_train: int, n_test: int) -> dict:
    train, test = _split(n_train, n_test)
    t0 = time.perf_counter()
    info: dict = {}
    if model == "local":
        from molkrr import FCHL19, MolecularKRR

        m = MolecularKRR(FCHL19(form="atomic"), sigma=None, lam=None).fit(train)
        info = {"sigma": m.sigma_, "lam": m.lam_}
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = m.predict(test)
    elif model == "local-sparse":
        from molkrr import FCHL19, MolecularKRR

        m = MolecularKRR(FCHL19(form="atomic"), sigma=None, lam=None, n_sparse=N_SPARSE).fit(train)
        info = {"sigma": m.sigma_, "lam": m.lam_, "n_sparse": int(m.krr_.X_.shape[0])}
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = m.predict(test)
    elif model == "global":
        from molkrr import FCHL19, MolecularKRR
        from molkrr.datasets.qm9 import sized_for_qm9
        from molkrr.krr import select_hyperparameters

        rep = sized_for_qm9(FCHL19()).fit(train)
        sub = train[: min(n_train, 4000)]
        sel = select_hyperparameters(rep.transform(sub), sub.energies, sigmas=np.geomspace(10, 640, 7),
                                     lams=(1e-12, 1e-10, 1e-8, 1e-6, 1e-4))
        m = MolecularKRR(sized_for_qm9(FCHL19()), sigma=sel.sigma, lam=sel.lam).fit(train)
        info = {"sigma": m.sigma_, "lam": m.lam_}
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = m.predict(test)
    elif model in ("kernelforge-krr", "kernelforge-rff"):
        from kernelforge import LocalKRRModel, LocalRFFModel

        coords, zs = _lists(train)
        if model == "kernelforge-krr":
            kf = LocalKRRModel(sigma=4.0, l2=1e-8, elements=[1, 6, 7, 8, 9]).fit(coords, zs, energies=train.energies)
            info = {"sigma": 4.0, "lam": 1e-8}
        else:  # σ on a later block of the training set, as molkrr's local model does
            n_val = max(1, min(2000, n_train // 5))
            vc, vz = coords[-n_val:], zs[-n_val:]
            best = None
            for sigma in (4.0, 16.0):
                kf = LocalRFFModel(sigma=sigma, l2=1e-6, d_rff=4096, elements=[1, 6, 7, 8, 9])
                kf.fit(coords[:-n_val], zs[:-n_val], energies=train.energies[:-n_val])
                e, _ = kf.predict(vc, vz, compute_energy=True, compute_forces=False)
                mae = float(np.mean(np.abs(np.asarray(e).reshape(-1) - train.energies[-n_val:])))
                if best is None or mae < best[0]:
                    best = (mae, sigma)
            kf = LocalRFFModel(sigma=best[1], l2=1e-6, d_rff=4096, elements=[1, 6, 7, 8, 9])
            kf.fit(coords, zs, energies=train.energies)
            info = {"sigma": best[1], "lam": 1e-6, "d_rff": 4096}
        fit = time.perf_counter() - t0
        tc, tz = _lists(test)
        t0 = time.perf_counter()
        e, _ = kf.predict(tc, tz, compute_energy=True, compute_forces=False)
        pred = np.asarray(e).reshape(-1)
    else:
        raise SystemExit(f"unknown model {model}")
    return {"model": model, "n_train": n_train, "fit_s": fit, "predict_s": time.perf_counter() - t0,
            "mae": float(np.mean(np.abs(pred - test.energies))), "peak_gb": _peak_gb(), **info}


def _table(rows: list[dict]) -> str:
    lines = ["| model | N train | test MAE (kcal/mol) | train time (s, selection included) | peak memory (GB) | σ | λ |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['n_train']:,} | {r['error']} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['n_train']:,} | {r['mae']:.3f} | {r['fit_s']:.1f} | {r['peak_gb']:.1f} | "
                     f"{r.get('sigma', float('nan')):.3g} | {r.get('lam', float('nan')):.0e} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for model in MODELS:
        pts = sorted((r["n_train"], r["mae"]) for r in rows if r["model"] == model and "mae" in r)
        if pts:
            ax.loglog(*zip(*pts), "o-", label=model)
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.text(ax.get_xlim()[0] * 1.05, 1.02, "chemical accuracy", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("training molecules (QM9)")
    ax.set_ylabel("test MAE, atomisation energy (kcal/mol)")
    ax.set_title("Local vs global FCHL19 kernel")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1000", "2000", "4000", "10000", "20000", "all"],
                    help="training set sizes; 'all' = every QM9 molecule outside the test set")
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--max-gb", type=float, default=20.0, help="skip runs estimated to need more memory")
    ap.add_argument("--output", default=None, help="directory for the results (default: a new temp directory)")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.n_test)))
        return
    out = args.output or tempfile.mkdtemp(prefix="molkrr-learning-curve-")
    os.makedirs(out, exist_ok=True)
    rows = []
    sizes = [130_831 - args.n_test if str(n) == "all" else int(n) for n in args.sizes]
    for n in sizes:
        for model in args.models:
            if model.startswith("kernelforge"):
                try:
                    import kernelforge  # noqa: F401
                except ImportError:
                    continue
            lo, hi = SIZES.get(model, (0, 10**9))
            if not lo <= n <= hi:
                continue
            if MEMORY_GB[model](n) > args.max_gb:
                rows.append({"model": model, "n_train": n, "error": f"skipped (needs ~{MEMORY_GB[model](n):.0f} GB)"})
                print(f"{model} N={n}: skipped, needs ~{MEMORY_GB[model](n):.0f} GB", flush=True)
                continue
            proc = subprocess.run([sys.executable, __file__, "--one", model, str(n), "--n-test", str(args.n_test)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"model": model, "n_train": n, "error": f"failed (exit {proc.returncode})"})
                print(f"{model} N={n}: failed\n{proc.stderr[-1500:]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{model:16s} N={n:6d}: MAE {r['mae']:.3f} kcal/mol, train {r['fit_s']:.1f} s, "
                  f"peak {r['peak_gb']:.1f} GB (sigma {r.get('sigma')}, lambda {r.get('lam')})", flush=True)
            with open(os.path.join(out, "learning_curve.json"), "w") as fh:
                json.dump(rows, fh, indent=1)
    with open(os.path.join(out, "learning_curve.md"), "w") as fh:
        fh.write(_table(rows) + "\n")
    _plot(rows, os.path.join(out, "learning_curve.png"))
    print(_table(rows))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
