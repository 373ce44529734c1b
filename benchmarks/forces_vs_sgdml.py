"""molkrr against sGDML on the same MD frames: energy MAE, force MAE, training time, peak memory, prediction time.

From a clean clone (``pip install -e '.[md]'``; sGDML in its own environment, below)::

    python benchmarks/forces_vs_sgdml.py --n-train 200 1000 --sgdml-python V/bin/python
    python benchmarks/forces_vs_sgdml.py --n-train 200 --models molkrr --data FILE.npz [FILE.npz ...]

Data: sGDML ``.npz`` trajectories with energies and forces, frames in time order: ``--data FILE ...``, or by
default the two 3,000-frame GFN2-xTB trajectories of ``scripts/make_md_data.py benchmark`` (ethanol and
malonaldehyde) in ``--data-dir`` (default ``molkrr-md-data`` in the system temp dir); missing ones are made
there first by that script (tblite, about 10 min per molecule on one core). ``molkrr md MOLECULE -o FILE.npz``
makes others. Split (:func:`molkrr.datasets.block_split`):
training frames evenly spaced in the first 2/3 of the trajectory, ``--n-valid`` validation frames from the
block after it, ``--n-test`` test frames from the last block; both models see exactly the same frames, and
hyperparameters are chosen on the validation frames only (never on test frames).

- molkrr: MolecularKRR (``--representation``, Gaussian kernel). With ``--targets energy`` (energies only:
  the baseline) (σ, λ) are chosen on a grid by validation *force* MAE (forces are what the comparison is about);
  with other targets by ``select_force_hyperparameters`` (what MolecularKRR runs inside fit: a grid of σ and
  ridges scored by force MAE on the last block of the training frames). Training time = selection + final fit.
- sGDML 1.0.3 (``sgdml.train.GDMLTrain``, symmetries on, λ = 1e-10, closed-form solve): σ chosen on
  ``--sgdml-sigmas`` by validation force MAE at the smallest N_train; larger N_train reuse that σ (one
  sGDML fit at 1,000 ethanol frames takes ~10 min and ~18 GB). Training time = every fit of its σ grid (one σ
  at the larger N); the `fit` column is the final fit alone, for both models.

Each model runs in a fresh process (``--worker``), so peak memory (``ru_maxrss``) is that model's alone.
sGDML needs torch to import: install it outside molkrr's dependencies, e.g. in its own environment
(``python -m venv V && V/bin/pip install torch==2.13.0 sgdml==1.0.3`` — the CPU wheel of torch) and pass
``--sgdml-python V/bin/python``; the sGDML worker imports only numpy and sgdml.

Prediction time: energy and forces of all test frames in one call, per frame; and one frame at a time
(best of 20), which is what an MD step costs.
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
from pathlib import Path

import numpy as np

RESULT = "RESULT "
ROOT = Path(__file__).resolve().parents[1]
#: Where scripts/make_md_data.py puts the benchmark's trajectories by default (its BENCHMARK_DIR).
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "molkrr-md-data"
DEFAULT_MOLECULES = ("ethanol", "malonaldehyde")


def default_data(data_dir: Path) -> list[Path]:
    """The benchmark's two trajectories in ``data_dir``, made there by scripts/make_md_data.py when missing."""
    paths = [data_dir / f"{name}_xtb_500K_3000.npz" for name in DEFAULT_MOLECULES]
    missing = [name for name, p in zip(DEFAULT_MOLECULES, paths) if not p.is_file()]
    if missing:
        print(f"making {', '.join(missing)} in {data_dir} with scripts/make_md_data.py (GFN2-xTB through tblite, "
              "about 10 min per molecule) ...", flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.setdefault("OMP_NUM_THREADS", "1")  # the files then match bit for bit (docs/md-data.md)
        cmd = [sys.executable, str(ROOT / "scripts" / "make_md_data.py"), "benchmark", "--out", str(data_dir),
               "--molecules", *missing]
        if subprocess.run(cmd, env=env).returncode != 0:
            raise SystemExit("could not make the benchmark's trajectories (needs tblite: pip install 'molkrr[md]'); "
                             "or pass --data FILE.npz ...")
    return paths


# ---------------------------------------------------------------------------------------------- workers
def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _best_of(fn, repeats=20):
    fn()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def worker_molkrr(args, split) -> dict:
    from molkrr import MolecularKRR
    from molkrr.datasets import read_sgdml_npz
    from molkrr.krr import DEFAULT_LAMS, KernelRidge, default_sigmas
    from molkrr.representations import make_representation

    rss_imports = _peak_mb()
    mols = read_sgdml_npz(args.file)
    train, valid, test = (mols[split[k]] for k in ("train", "valid", "test"))
    # compile the numba kernels outside the timings: the same calls on three frames
    extra = {} if args.targets == "energy" else {"targets": args.targets}
    MolecularKRR(make_representation(args.representation), sigma=1.0, lam=1e-8, lam_forces=1e-8, energy_unit="eV",
                 **extra).fit(train[:3]).predict_energies_and_forces(test[:1])
    t0 = time.perf_counter()
    sigma = lam = None
    if args.targets == "energy":
        rep = make_representation(args.representation).fit(train)
        X, Xv = rep.transform(train), rep.transform(valid)
        best = (np.inf, None, None)
        for s in default_sigmas(X):
            for l in DEFAULT_LAMS:
                krr = KernelRidge("gaussian", s, l).fit(X, train.energies)
                _, G = krr.predict_with_gradient(Xv)
                F = -np.concatenate(rep.vjp(valid, G))
                best = min(best, (float(np.mean(np.abs(F - valid.forces))), s, l), key=lambda b: b[0])
        _, sigma, lam = best
    lam_forces = None
    if args.targets != "energy":  # the same selection MolecularKRR runs inside fit, timed on its own
        from molkrr.force_selection import select_force_hyperparameters

        rep = make_representation(args.representation).fit(train)
        sel = select_force_hyperparameters(rep, train, train.energies, targets=args.targets)
        sigma, lam, lam_forces = sel.sigma, sel.lam, sel.lam_forces
    t_select = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = MolecularKRR(make_representation(args.representation), sigma=sigma, lam=lam, lam_forces=lam_forces,
                         energy_unit="eV", **extra)
    model.fit(train)
    t_fit = time.perf_counter() - t1
    t2 = time.perf_counter()
    E, F = model.predict_energies_and_forces(test)
    t_batch = (time.perf_counter() - t2) / len(test)
    one = test[0]
    t_one = _best_of(lambda: model.predict_energies_and_forces(one))
    return {
        "e_mae_meV": 1000 * float(np.mean(np.abs(E - test.energies))),
        "f_mae_meV_A": 1000 * float(np.mean(np.abs(np.concatenate(F) - test.forces))),
        "train_s": t_select + t_fit, "fit_s": t_fit, "select_s": t_select,
        "predict_ms_batch": 1000 * t_batch, "predict_ms_one": 1000 * t_one,
        "peak_MB": _peak_mb(), "rss_after_imports_MB": rss_imports,
        "hyper": f"sigma={model.sigma_:.4g} lambda={model.lam_:.0e}"
                 + (f" lambda_F={model.lam_forces_:.0e}" if args.targets != "energy" else ""),
    }


def worker_sgdml(args, split) -> dict:
    import io
    from contextlib import redirect_stdout

    from sgdml.predict import GDMLPredict
    from sgdml.train import GDMLTrain
    from sgdml.utils import io as sio

    rss_imports = _peak_mb()
    data = dict(np.load(args.file, allow_pickle=False))
    if "e_unit" in data and str(data["e_unit"]) != "eV":
        raise SystemExit(f"{args.file}: the benchmark reports meV; this file is in {data['e_unit']}")

    def subset(idx):
        d = {k: data[k] for k in ("z", "name", "theory", "r_unit", "e_unit") if k in data}
        d.update(type="d", R=data["R"][idx], E=data["E"].reshape(-1)[idx], F=data["F"][idx])
        d["md5"] = sio.dataset_md5(d)
        return d

    tr, va, te = (subset(split[k]) for k in ("train", "valid", "test"))
    n_train, n_valid = len(split["train"]), len(split["valid"])
    gdml = GDMLTrain(max_processes=args.threads)
    sigmas = [float(s) for s in args.sgdml_sigmas.split(",")]
    best = (np.inf, None, None, None)
    t_grid = time.perf_counter()
    for sig in sigmas:
        with redirect_stdout(io.StringIO()):  # sGDML's progress output
            t0 = time.perf_counter()
            task = gdml.create_task(tr, n_train, va, n_valid, sig=sig, lam=1e-10)
            model = gdml.train(task)
            t_fit = time.perf_counter() - t0
            pred = GDMLPredict(model, max_processes=args.threads)
            _, Fv = pred.predict(va["R"].reshape(n_valid, -1))
        score = float(np.mean(np.abs(Fv.reshape(va["F"].shape) - va["F"])))
        if score < best[0]:
            best = (score, sig, model, t_fit)
    _, sig, model, t_fit = best
    t_grid = time.perf_counter() - t_grid  # every σ of the grid: fit + validation prediction
    with redirect_stdout(io.StringIO()):
        pred = GDMLPredict(model, max_processes=args.threads)
        t0 = time.perf_counter()
        E, F = pred.predict(te["R"].reshape(len(split["test"]), -1))
        t_batch = (time.perf_counter() - t0) / len(split["test"])
        one = te["R"][:1].reshape(1, -1)
        t_one = _best_of(lambda: pred.predict(one))
    return {
        "e_mae_meV": 1000 * float(np.mean(np.abs(E.reshape(-1) - te["E"]))),
        "f_mae_meV_A": 1000 * float(np.mean(np.abs(F.reshape(te["F"].shape) - te["F"]))),
        "train_s": t_grid, "fit_s": t_fit, "select_s": t_grid - t_fit,
        "predict_ms_batch": 1000 * t_batch, "predict_ms_one": 1000 * t_one,
        "peak_MB": _peak_mb(), "rss_after_imports_MB": rss_imports,
        "hyper": f"sigma={sig:g} lambda=1e-10 (grid {args.sgdml_sigmas})",
    }


# ---------------------------------------------------------------------------------------------- driver
def run_worker(kind, python, file, split_path, args, sgdml_sigmas) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", kind, "--file", str(file), "--split", str(split_path),
           "--representation", args.representation, "--targets", args.targets, "--sgdml-sigmas", sgdml_sigmas,
           "--threads", str(args.threads)]
    env = dict(os.environ)
    src = str(ROOT / "src")
    if kind == "molkrr":
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1][len(RESULT):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", type=Path,
                   help="sGDML .npz trajectories (eV, eV/Å), frames in time order (default: the two in --data-dir).")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help=f"Folder of the default trajectories, made there when missing (default {DEFAULT_DATA_DIR}).")
    p.add_argument("--n-train", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--n-valid", type=int, default=200)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--representation", default="fchl19")
    p.add_argument("--targets", default="energy", choices=["energy", "energy+forces", "forces"])
    p.add_argument("--models", nargs="+", default=["molkrr", "sgdml"], choices=["molkrr", "sgdml"])
    p.add_argument("--sgdml-python", default=sys.executable, help="Interpreter with sgdml (and torch) installed.")
    p.add_argument("--sgdml-sigmas", default="5,10,20,40", help="sGDML σ grid at the smallest N_train.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800, help="Seconds per model before giving up on it.")
    p.add_argument("--json", type=Path, help="Also write the results here.")
    # worker mode (internal)
    p.add_argument("--worker", choices=["molkrr", "sgdml"], help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--split", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        with np.load(args.split) as s:
            split = {k: s[k] for k in ("train", "valid", "test")}
        result = (worker_molkrr if args.worker == "molkrr" else worker_sgdml)(args, split)
        print(RESULT + json.dumps(result))
        return

    sys.path.insert(0, str(ROOT / "src"))
    from molkrr.datasets import block_split, read_sgdml_units

    data = args.data or default_data(args.data_dir)
    rows = []
    print(f"molkrr ({args.representation}, targets={args.targets}) vs sGDML; {args.threads} threads; "
          f"N_valid={args.n_valid}, N_test={args.n_test}; block split (train: first 2/3 of the frames)")
    header = f"{'data':<28} {'N':>5} {'model':<7} {'E MAE':>8} {'F MAE':>9} {'train':>8} {'fit':>8} {'peak':>8} {'pred/frame':>11} {'1 frame':>8}  hyperparameters"
    print(header + "\n" + " " * 28 + f" {'':>5} {'':<7} {'meV':>8} {'meV/Å':>9} {'s':>8} {'s':>8} {'MB':>8} {'ms (batch)':>11} {'ms':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for file in data:
            with np.load(file, allow_pickle=False) as d:
                n_frames = d["R"].shape[0]
            e_unit = read_sgdml_units(file)[0]
            if e_unit != "eV":
                raise SystemExit(f"{file}: energies in {e_unit!r}; this benchmark expects eV (as molkrr md writes)")
            sgdml_sigma = None
            for n in sorted(args.n_train):
                train, valid, test = block_split(n_frames, n, args.n_valid, args.n_test)
                split_path = Path(tmp) / f"split_{Path(file).stem}_{n}.npz"
                np.savez(split_path, train=train, valid=valid, test=test)
                for kind in args.models:
                    python = args.sgdml_python if kind == "sgdml" else sys.executable
                    sig = args.sgdml_sigmas if sgdml_sigma is None else sgdml_sigma
                    r = run_worker(kind, python, file, split_path, args, sig)
                    if kind == "sgdml" and "hyper" in r and sgdml_sigma is None:
                        sgdml_sigma = r["hyper"].split()[0].split("=")[1]
                    r.update(data=Path(file).name, n_train=n, model=kind)
                    rows.append(r)
                    if "error" in r:
                        print(f"{Path(file).stem[:28]:<28} {n:>5} {kind:<7} failed: {r['error']}")
                    else:
                        print(f"{Path(file).stem[:28]:<28} {n:>5} {kind:<7} {r['e_mae_meV']:8.2f} {r['f_mae_meV_A']:9.1f} "
                              f"{r['train_s']:8.1f} {r['fit_s']:8.1f} {r['peak_MB']:8.0f} {r['predict_ms_batch']:11.2f} {r['predict_ms_one']:8.2f}  {r['hyper']}")
                    sys.stdout.flush()
                _ratios(rows, Path(file).name, n)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _ratios(rows, data, n) -> None:
    by = {r["model"]: r for r in rows if r["data"] == data and r["n_train"] == n and "error" not in r}
    if "molkrr" in by and "sgdml" in by:
        m, s = by["molkrr"], by["sgdml"]
        print(f"{'':<28} {'':>5} {'ratio':<7} {m['e_mae_meV'] / s['e_mae_meV']:8.2f} {m['f_mae_meV_A'] / s['f_mae_meV_A']:9.2f} "
              f"{m['train_s'] / s['train_s']:8.2f} {m['fit_s'] / s['fit_s']:8.2f} {m['peak_MB'] / s['peak_MB']:8.2f} "
              f"{m['predict_ms_batch'] / s['predict_ms_batch']:11.2f} {m['predict_ms_one'] / s['predict_ms_one']:8.2f}  (molkrr / sGDML)")


if __name__ == "__main__":
    main()
