"""Time and peak memory of one MLKRR objective + gradient evaluation (d = 720, n_α = n_A = n/2).

Each size runs in a fresh subprocess (peak RSS = VmHWM of /proc/self/status, ru_maxrss elsewhere; it includes the
interpreter, the imports and the n × 720 data). The same run measures this machine's float64 GEMM
and Cholesky rates, and prints the time beside the flop count and the flop floor
(GEMM-class flops / GEMM rate + Cholesky flops / Cholesky rate), and beside a naive dense
implementation of the paper's formulas (:func:`naive_loss_and_grad`: K, Q, H⁻¹ and the weight
matrices W, W̃ stored, the gradient assembled as A·Σ W_ij x_ij x_ijᵀ in feature space with lemma 1)
measured in the same run, in its own subprocess, on the same data. The naive gradient is checked
against molkrr's before any timing.

    .venv/bin/python benchmarks/mlkrr_step.py                 # n = 2000 4000 8000
    .venv/bin/python benchmarks/mlkrr_step.py --sizes 2000 4000 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from _timing import best_time, timings

D = 720


def naive_loss_and_grad(A, Xa, ya, XA, yA, sigma, lam):
    """The paper's eqs 6–10 and 13 as written (the baseline): dense K, Q, explicit H⁻¹, W and W̃ stored,
    ∂L/∂A = −(2/σ²) A [Σ_ij W_ij x_ij x_ijᵀ − Σ_ab W̃_ab x_ab x_abᵀ] with the sums by lemma 1 (d × d)."""
    import numpy as np

    def gauss(P, R):
        d2 = (P * P).sum(1)[:, None] + (R * R).sum(1)[None, :] - 2.0 * P @ R.T
        return np.exp(-np.maximum(d2, 0.0) / (2.0 * sigma**2))

    Za, ZA = Xa @ A.T, XA @ A.T
    K, Q = gauss(Za, Za), gauss(ZA, Za)
    Hinv = np.linalg.inv(K + lam * np.eye(len(ya)))
    alpha = Hinv @ ya
    r = Q @ alpha - yA
    beta = Hinv @ (Q.T @ r)
    W = r[:, None] * Q * alpha[None, :]
    Wt = beta[:, None] * K * alpha[None, :]
    S = (XA.T @ (W.sum(1)[:, None] * XA) + Xa.T @ (W.sum(0)[:, None] * Xa) - XA.T @ W @ Xa - Xa.T @ W.T @ XA
         - Xa.T @ ((Wt.sum(1) + Wt.sum(0))[:, None] * Xa) + Xa.T @ (Wt + Wt.T) @ Xa)
    return float(r @ r), -(2.0 / sigma**2) * (A @ S)


def flops(n: int, d: int = D, c: int = D) -> tuple[float, float]:
    """(GEMM-class flops, Cholesky flops) of one evaluation as implemented."""
    m = n // 2
    na = n - m
    gemm = (
        2.0 * n * d * c  # Z = X Aᵀ
        + m * m * (c + 2)  # lower half of the α Gram matrix
        + 2.0 * na * m * (c + 2)  # Q Gram matrix
        + 2 * 2.0 * na * m * (c + 1)  # Q [α, α∘Z_α] and Qᵀ [r, r∘Z_A]
        + 2 * m * m * (2.0 * c + 2)  # two triangular products with 2c + 2 columns
        + 2.0 * n * c * d  # G_Aᵀ X_A + G_αᵀ X_α
    )
    return gemm, m**3 / 3.0


def machine_rates() -> tuple[float, float]:
    """(GEMM, Cholesky) GFLOP/s, float64, best of 3."""
    import numpy as np
    from scipy.linalg import cho_factor

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, D))
    b = rng.standard_normal((D, 4000))
    out = np.empty((4000, 4000))
    best = best_time(lambda: np.matmul(a, b, out=out), 3)
    gemm = 2 * 4000 * 4000 * D / best / 1e9
    h = a @ a.T / D
    h.flat[::4001] += 1.0
    # the factorisation overwrites its input: a fresh Fortran-ordered copy per call, outside the timing
    best = best_time(lambda f: cho_factor(f, lower=False, overwrite_a=True, check_finite=False), 3,
                     setup=lambda: np.array(h, order="F"))
    chol = 4000**3 / 3 / best / 1e9
    return gemm, chol


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB: VmHWM from /proc (Linux), else ru_maxrss.

    ru_maxrss alone is misleading in a child process: Linux carries the parent's high-water mark
    across fork + exec, so the worker would report at least the parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6  # kB -> GB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def check_naive() -> float:
    """Largest relative difference between the naive and molkrr's gradient on a small problem."""
    import numpy as np

    from molkrr.metric import mlkrr_loss_and_grad

    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 40))
    y = X[:, :3].sum(1)
    A = np.eye(40) + 0.05 * rng.standard_normal((40, 40))
    l1, g1 = naive_loss_and_grad(A, X[:120], y[:120], X[120:], y[120:], 4.0, 1e-6)
    l2, g2 = mlkrr_loss_and_grad(A, X[:120], y[:120], X[120:], y[120:], 4.0, 1e-6)
    return max(abs(l1 / l2 - 1), float(np.abs(g1 - g2).max() / np.abs(g2).max()))


def worker(n: int, repeats: int, naive: bool = False) -> None:
    import numpy as np

    from molkrr.metric import mlkrr_loss_and_grad

    if naive:
        mlkrr_loss_and_grad = naive_loss_and_grad  # noqa: F811

    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, D))
    y = X[:, :10].sum(axis=1) + 0.1 * rng.standard_normal(n)
    A = np.eye(D)
    m = n // 2
    rss0 = peak_rss_gb()
    result = {}

    def evaluate() -> None:  # keeps the loss only: the gradient is freed before the next evaluation
        result["loss"] = mlkrr_loss_and_grad(A, X[:m], y[:m], X[m:], y[m:], sigma=30.0, lam=1e-9)[0]

    times = timings(evaluate, repeats)
    loss = result["loss"]
    peak = peak_rss_gb()
    print(json.dumps({"n": n, "times": times, "rss_before_GB": rss0, "peak_GB": peak, "loss": loss}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rates", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=None, help="evaluations per size (default 3, 1 for n > 10000)")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.repeats or 1, args.naive)
        return
    if args.rates:
        print(json.dumps(machine_rates()))
        return

    # measured in a subprocess so that this parent stays small (see peak_rss_gb)
    out = subprocess.run([sys.executable, __file__, "--rates"], capture_output=True, text=True, check=True)
    gemm_rate, chol_rate = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"machine: float64 GEMM {gemm_rate:.1f} GFLOP/s, Cholesky {chol_rate:.1f} GFLOP/s (measured now); "
          f"naive vs molkrr gradient: max relative difference {check_naive():.1e}")
    header = (f"{'n':>6} {'GFLOP':>7} {'floor s':>8} {'time s':>8} {'/floor':>7} {'naive s':>8} {'/naive':>6} "
              f"{'peak GB':>8} {'naive GB':>8} {'/naive':>6} {'base GB':>8}")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        repeats = args.repeats or (1 if n > 10000 else 3)
        out = subprocess.run([sys.executable, __file__, "--worker", str(n), "--repeats", str(repeats)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        out = subprocess.run([sys.executable, __file__, "--worker", str(n), "--repeats", str(repeats), "--naive"],
                             capture_output=True, text=True, check=True)
        rn = json.loads(out.stdout.strip().splitlines()[-1])
        g, ch = flops(n)
        floor = g / (gemm_rate * 1e9) + ch / (chol_rate * 1e9)
        t = min(r["times"])
        naive_t, naive_m = min(rn["times"]), rn["peak_GB"]
        print(f"{n:>6} {(g + ch) / 1e9:>7.0f} {floor:>8.2f} {t:>8.2f} {t / floor:>7.2f} {naive_t:>8.2f} "
              f"{t / naive_t:>6.2f} {r['peak_GB']:>8.2f} {naive_m:>8.2f} {r['peak_GB'] / naive_m:>6.2f} "
              f"{r['rss_before_GB']:>8.2f}")
        sys.stdout.flush()
    print("time: best of the evaluations; peak GB: VmHWM of the worker process (interpreter + imports + "
          "data + evaluation); base GB: VmHWM before the first evaluation (interpreter + imports + data);\n"
          "floor: GEMM-class flops at the GEMM rate + Cholesky flops at the Cholesky rate; "
          f"load average at the end: {open('/proc/loadavg').read().split()[0] if sys.platform == 'linux' else '?'}")


if __name__ == "__main__":
    main()
