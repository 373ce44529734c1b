"""The torch backend (CUDA, or CPU for a dry run) against the numpy backend on the CPU, in one run.

Three measurements, each printed with the numpy time, the torch time, their ratio and the largest
relative difference of the results (the same computation on both backends):

* the MLKRR objective + gradient (Gaussian, or ``--kernel matern52``; d = 720 random features,
  A = identity, n_α = n_A = n/2)
  at n = 4,000, 8,000, 20,000 (``--sizes``), with the device's peak memory;
* a KRR fit (Gaussian, Cholesky) at n = 20,000 (``--krr-n``; 0 skips it);
* energy + forces of one molecule from a MolecularKRR model (sorted Coulomb matrix) trained on
  ``--forces-n`` molecules (QM9 if the data is installed, else jittered copies of ASE's G2
  molecules); the torch model is the numpy model with its KernelRidge moved to the device;
* force training (local FCHL19, energies + forces) on ``--force-frames`` frames of the shipped ethanol
  trajectory: the whole fit with the factorisation and solve of K + Λ on the device against numpy's
  (the Gram matrix is built on the CPU in both), with the largest relative difference of the forces.

On a GPU machine (the GPU model is printed)::

    python benchmarks/gpu.py                                  # cuda vs numpy: n = 4000 8000 20000, KRR 20000
    python benchmarks/gpu.py --numpy-max-n 8000               # skip the slowest numpy baselines
    python benchmarks/gpu.py --float32                        # also time float32 and report its error

Dry run on torch-CPU (any machine with torch)::

    python benchmarks/gpu.py --device cpu --sizes 1000 2000 --krr-n 2000 --forces-n 2000 --force-frames 100
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import numpy as np

D = 720


#: process CPU seconds of the best_time calls (least wall time first): a steadier figure on a shared CPU
CPU_SECONDS: list[float] = []


def best_time(fn, repeat: int):
    """(shortest of ``repeat`` wall-clock timings of fn(), the last result); its CPU time goes to CPU_SECONDS."""
    best, cpu, out = np.inf, np.inf, None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, time.process_time() - c0
    CPU_SECONDS.append(cpu)
    return best, out


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def header(device: str) -> None:
    import torch

    print(f"torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        print(f"GPU: {torch.cuda.get_device_name(torch.device(device))}, {props.total_memory / 2**30:.0f} GiB, "
              f"CUDA {torch.version.cuda}")
    else:
        print(f"device: {device} (torch-CPU dry run, {torch.get_num_threads()} torch threads)")


def peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_gb(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated(torch.device(device)) / 1e9:8.2f}"
    return f"{'-':>8s}"


def mlkrr_section(args, device: str) -> None:
    from molkrr.backends import get_backend
    from molkrr.kernels import make_kernel
    from molkrr.metric._array_objectives import mlkrr as mlkrr_on
    from molkrr.metric.mlkrr import _objective

    be = get_backend("torch", device)
    be32 = get_backend("torch", device, "float32") if args.float32 else None
    kernel = make_kernel(args.kernel)
    objective = _objective(kernel)
    print(f"\nMLKRR objective + gradient, {args.kernel}, d = {D}, A = identity ({D} components), n_alpha = n_A = n/2")
    print(f"{'n':>7s}{'numpy s':>10s}{'torch s':>10s}{'ratio':>8s}{'peak GB':>8s}{'rel diff':>10s}"
          + (f"{'fp32 s':>9s}{'fp32 err':>10s}" if be32 else ""))
    for n in args.sizes:
        rng = np.random.default_rng(n)
        X = rng.standard_normal((n, D))
        y = np.sin(X[:, :8].sum(axis=1)) + 0.1 * X[:, 8]
        A = np.eye(D)
        sigma, lam = float(np.sqrt(D)), 1e-6
        m = n // 2
        Xa, ya, XA, yA = X[:m], y[:m], X[m:], y[m:]
        data = (be.asarray(Xa), be.asarray(ya), be.asarray(XA), be.asarray(yA))
        mlkrr_on(be, kernel, A, *data, sigma, lam)  # warm-up (CUDA context, cuBLAS/cuSOLVER handles)
        peak_reset(device)
        t_torch, (loss_t, grad_t, _) = best_time(lambda: mlkrr_on(be, kernel, A, *data, sigma, lam), args.repeat)
        cpu_torch = CPU_SECONDS[-1]
        peak = peak_gb(device)
        if n <= args.numpy_max_n:
            repeat = 1 if n > 8000 else 2
            t_np, (loss_n, grad_n, _) = best_time(lambda: objective(A, Xa, ya, XA, yA, sigma, lam), repeat)
            diff = max(abs(loss_t - loss_n) / abs(loss_n), rel(grad_t, grad_n))
            line = f"{n:7d}{t_np:10.3f}{t_torch:10.3f}{t_np / t_torch:8.1f}{peak}{diff:10.1e}"
            if device == "cpu":  # both on the CPU: also the process CPU seconds (steadier on a shared machine)
                line += f"   CPU s: numpy {CPU_SECONDS[-1]:.2f}, torch {cpu_torch:.2f}"
        else:
            line = f"{n:7d}{'-':>10s}{t_torch:10.3f}{'-':>8s}{peak}{'-':>10s}"
        if be32:
            d32 = (be32.asarray(Xa), be32.asarray(ya), be32.asarray(XA), be32.asarray(yA))
            mlkrr_on(be32, kernel, A, *d32, sigma, lam)
            t32, (loss_32, grad_32, _) = best_time(lambda: mlkrr_on(be32, kernel, A, *d32, sigma, lam), args.repeat)
            err = max(abs(loss_32 - loss_t) / abs(loss_t), rel(grad_32, grad_t))
            line += f"{t32:9.3f}{err:10.1e}"
        print(line, flush=True)


def krr_section(args, device: str) -> None:
    from molkrr import KernelRidge

    n = args.krr_n
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n, D))
    y = np.sin(X[:, :8].sum(axis=1))
    Xq = rng.standard_normal((1000, D))
    sigma, lam = float(np.sqrt(D)), 1e-6
    print(f"\nKRR fit (Gaussian, Cholesky), n = {n:,}, d = {D}; predict 1,000 rows")
    KernelRidge(sigma=sigma, lam=lam, backend="torch", device=device).fit(X[:500], y[:500])  # warm-up
    peak_reset(device)
    t_torch, mt = best_time(lambda: KernelRidge(sigma=sigma, lam=lam, backend="torch", device=device).fit(X, y), 1)
    peak = peak_gb(device)
    tp_torch, pt = best_time(lambda: mt.predict(Xq), 3)
    t_np, mn = best_time(lambda: KernelRidge(sigma=sigma, lam=lam).fit(X, y), 1)
    tp_np, pn = best_time(lambda: mn.predict(Xq), 3)
    print(f"{'':14s}{'numpy s':>10s}{'torch s':>10s}{'ratio':>8s}{'peak GB':>8s}{'rel diff':>10s}")
    print(f"{'fit':14s}{t_np:10.3f}{t_torch:10.3f}{t_np / t_torch:8.1f}{peak}{rel(mt.alpha_, mn.alpha_):10.1e}")
    print(f"{'predict':14s}{tp_np:10.3f}{tp_torch:10.3f}{tp_np / tp_torch:8.1f}{'':8s}{rel(pt, pn):10.1e}")


def training_molecules(n: int):
    """(training molecules, query molecules): QM9 if available, else jittered copies of ASE's G2 molecules."""
    from molkrr import Molecules
    from molkrr.errors import DatasetError

    try:
        from molkrr.datasets import load_qm9

        mols = load_qm9(n + 10, seed=1)
        return mols[:n], mols[n:], "QM9"
    except (DatasetError, ImportError):
        pass
    from ase.build import molecule
    from ase.collections import g2

    rng = np.random.default_rng(0)
    base = [molecule(name) for name in g2.names if 3 <= len(molecule(name)) <= 18]
    atoms = []
    for i in range(n + 10):
        a = base[i % len(base)].copy()
        a.positions += 0.05 * rng.standard_normal(a.positions.shape)
        r = a.get_all_distances()[np.triu_indices(len(a), 1)]
        a.info["energy"] = float(np.sum(np.exp(-r)))  # a smooth stand-in energy: the benchmark times, not fits
        atoms.append(a)
    mols = Molecules.from_ase(atoms)
    return mols[:n], mols[n:], "jittered G2 molecules"


def forces_section(args, device: str) -> None:
    from molkrr import MolecularKRR
    from molkrr.representations.coulomb import CoulombMatrix

    train, query, source = training_molecules(args.forces_n)
    t0 = time.perf_counter()
    model = MolecularKRR(CoulombMatrix(), sigma=1000.0, lam=1e-8).fit(train)
    print(f"\nEnergy + forces of one molecule, sorted Coulomb matrix, {args.forces_n:,} training molecules "
          f"({source}; numpy fit {time.perf_counter() - t0:.1f} s)")
    gpu = copy.deepcopy(model)
    gpu.krr_.set_params(backend="torch", device=device)
    singles = [query[i] for i in range(len(query))]
    for mol in singles[:2]:
        model.predict_energies_and_forces(mol)  # warm-up (numba, caches, the upload of the training rows)
        gpu.predict_energies_and_forces(mol)
    t_np = np.median([best_time(lambda: model.predict_energies_and_forces(mol), 5)[0] for mol in singles])
    t_t = np.median([best_time(lambda: gpu.predict_energies_and_forces(mol), 5)[0] for mol in singles])
    diff = max(rel(gpu.predict_energies_and_forces(m)[1][0], model.predict_energies_and_forces(m)[1][0])
               for m in singles)
    print(f"{'':14s}{'numpy ms':>10s}{'torch ms':>10s}{'ratio':>8s}{'rel diff':>10s}")
    print(f"{'median':14s}{t_np * 1e3:10.3f}{t_t * 1e3:10.3f}{t_np / t_t:8.2f}{diff:10.1e}")


def force_training_section(args, device: str) -> None:
    from molkrr import MolecularKRR
    from molkrr.datasets.frames import read_frames
    from molkrr.datasets.md import shipped_trajectory_path
    from molkrr.representations import FCHL19

    frames = read_frames(shipped_trajectory_path())[0]
    idx = np.unique(np.linspace(0, 999, args.force_frames).round().astype(int))
    train, query = frames[idx], frames[1200:1250]
    fits, times = {}, {}
    for name in ("numpy", "torch"):
        model = MolecularKRR(FCHL19(form="atomic"), sigma=2.036, lam=3.65e-5, lam_forces=3.66e-6,
                             targets="energy+forces", energy_unit="eV", backend=name,
                             device=device if name == "torch" else None)
        t0 = time.perf_counter()
        fits[name] = model.fit(train)
        times[name] = time.perf_counter() - t0
    rows = len(idx) * 22
    F = {k: np.concatenate(m.predict_energies_and_forces(query)[1]) for k, m in fits.items()}
    print(f"\nForce training, local FCHL19, {len(idx)} ethanol frames ({rows:,} rows): the whole fit, K + Λ factorised "
          f"and solved on each backend")
    print(f"{'':14s}{'numpy s':>10s}{'torch s':>10s}{'ratio':>8s}{'rel diff':>10s}")
    print(f"{'fit':14s}{times['numpy']:10.2f}{times['torch']:10.2f}{times['numpy'] / times['torch']:8.2f}"
          f"{rel(F['torch'], F['numpy']):10.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="torch device: cuda (default when present), cuda:N or cpu")
    p.add_argument("--sizes", type=int, nargs="*", default=[4000, 8000, 20000], help="MLKRR n (none: skip)")
    p.add_argument("--numpy-max-n", type=int, default=20000, help="largest MLKRR n with a numpy baseline")
    p.add_argument("--krr-n", type=int, default=20000, help="KRR fit size (0: skip)")
    p.add_argument("--forces-n", type=int, default=20000, help="training molecules for the forces (0: skip)")
    p.add_argument("--force-frames", type=int, default=1000, help="frames for the force-training fit (0: skip)")
    p.add_argument("--repeat", type=int, default=3, help="torch timings per size (best is printed)")
    p.add_argument("--kernel", default="gaussian", help="MLKRR kernel: gaussian, matern32, matern52")
    p.add_argument("--float32", action="store_true", help="also time the MLKRR objective in float32")
    args = p.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    header(device)
    if args.sizes:
        mlkrr_section(args, device)
    if args.krr_n:
        krr_section(args, device)
    if args.forces_n:
        forces_section(args, device)
    if args.force_frames:
        force_training_section(args, device)


if __name__ == "__main__":
    main()
