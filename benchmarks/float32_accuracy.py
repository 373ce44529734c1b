"""How accurate is the torch backend in float32? KRR and the MLKRR objective on QM9 Coulomb matrices.

Compares a float32 torch backend with the float64 one on the same device (default: CPU) for
  * a KRR fit + predictions (MAE of both on held-out molecules, or the error the float32 fit raises),
  * energies and gradients evaluated in float32 from the float64 α (the forces' kernel part),
  * the MLKRR loss and gradient,
at a tuned σ (1000 for sorted Coulomb matrices) and at σ = 100, for several λ. See docs/gpu.md.

    python benchmarks/float32_accuracy.py               # 2,000 QM9 molecules, torch-CPU
    python benchmarks/float32_accuracy.py --device cuda
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from molkrr import CoulombMatrix
from molkrr.backends import get_backend
from molkrr.datasets import load_qm9
from molkrr.kernels import Gaussian, make_kernel
from molkrr.metric._array_objectives import mlkrr as mlkrr_on


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    b64, b32 = get_backend("torch", args.device), get_backend("torch", args.device, "float32")
    mols = load_qm9(args.n, seed=1)
    X = CoulombMatrix(size=29).fit(mols).transform(mols)
    y = mols.energies - mols.energies.mean()
    n_tr = int(0.75 * args.n)
    Xtr, ytr, Xte, yte = X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:]
    for sigma, lam in ((1000.0, 1e-8), (1000.0, 1e-5), (100.0, 1e-8)):
        k = make_kernel("gaussian", sigma)
        a64, _ = b64.krr_fit(k, Xtr, ytr, lam)
        mae64 = np.mean(np.abs(b64.krr_predict(k, Xte, b64.rows(Xtr), a64) - yte))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                a32, lam32 = b32.krr_fit(k, Xtr, ytr, lam)
                mae32 = np.mean(np.abs(b32.krr_predict(k, Xte, b32.rows(Xtr), a32) - yte))
                res = f"float32 MAE {mae32:.2f} (λ used {lam32:.2g}, {len(caught)} jitter warnings)"
            except Exception as exc:  # noqa: BLE001 - the failure is the result
                res = f"float32 fails: {type(exc).__name__}"
        print(f"KRR σ={sigma:g} λ={lam:g}, n={n_tr}: float64 MAE {mae64:.2f} kcal/mol; {res}")
        v64, g64 = b64.krr_value_and_gradient(k, Xte[:10], b64.rows(Xtr), a64)
        v32, g32 = b32.krr_value_and_gradient(k, Xte[:10], b32.rows(Xtr), a64)
        print(f"    energies/gradients in float32 from the float64 α: relative error "
              f"{abs(v32 - v64).max() / abs(v64).max():.1e} / {abs(g32 - g64).max() / abs(g64).max():.1e}")
    A = np.eye(X.shape[1])
    m = n_tr // 2
    for lam in (1e-8, 1e-5):
        args_ = (A, Xtr[:m], ytr[:m], Xtr[m:], ytr[m:], 1000.0, lam)
        l64, g64, _ = mlkrr_on(b64, Gaussian(), *args_)
        try:
            l32, g32, _ = mlkrr_on(b32, Gaussian(), *args_)
            res = f"loss {abs(l32 - l64) / l64:.1e}, gradient {abs(g32 - g64).max() / abs(g64).max():.1e}"
        except Exception as exc:  # noqa: BLE001
            res = f"float32 fails: {type(exc).__name__}"
        print(f"MLKRR σ=1000 λ={lam:g}, n={n_tr}: float32 relative error {res}")


if __name__ == "__main__":
    main()
