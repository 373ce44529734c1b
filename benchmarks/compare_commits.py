"""Speed of the benchmarks at two commits, in one run: the "unchanged within 5 %" check of a refactoring.

    python benchmarks/compare_commits.py --base REV [--head HEAD] [--rounds 2] [--only NAME ...]

Each commit is checked out into a temporary git worktree (removed afterwards); every benchmark of
:data:`QUICK` runs from its own tree (``PYTHONPATH=<tree>/src``, the tree's own script), base and head
interleaved round by round so that both see the same machine. Printed per benchmark: the best wall time of
the whole command at each commit and their ratio (head / base), and the lines of its output that carry times
(with ``--show``). Benchmarks that do not exist at the base commit are skipped. Numba compiles into each tree
once before the first round (not timed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name → arguments of a short run (about 10–60 s each on 2 cores) of a script in benchmarks/.
QUICK = {
    "krr_fit": ["krr_fit.py", "--n", "2000", "4000"],
    "mlkrr_step": ["mlkrr_step.py", "--sizes", "2000", "--repeats", "2"],
    "forces": ["forces.py", "--n-train", "2000", "--n-query", "30"],
    "force_training": ["force_training.py", "{data}", "--n-train", "100", "--sigma", "2.036", "--lam", "3.65e-5",
                       "--lam-forces", "3.66e-6"],
    "local_kernel": ["local_kernel.py", "--n-train", "500", "--n-test", "200", "--skip", "pairs", "kernelforge"],
    "representations": ["representations.py", "--quick"],
}
WARMUP = "import numpy as np, molkrr; from molkrr.representations import FCHL19, BagOfBonds, CoulombMatrix"


def run(tree: Path, args: list[str], data: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [sys.executable, str(tree / "benchmarks" / args[0]), *[a.format(data=data) for a in args[1:]]]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return float("nan"), out.stdout + out.stderr
    return wall, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--head", default="HEAD")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, choices=sorted(QUICK))
    p.add_argument("--show", action="store_true", help="print the timing lines of each run's output")
    a = p.parse_args()
    repo = Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    tmp = Path(tempfile.mkdtemp(prefix="molkrr-compare-"))
    trees = {}
    try:
        for label, rev in (("base", a.base), ("head", a.head)):
            trees[label] = tmp / label
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(trees[label]), rev], check=True,
                           capture_output=True)
        data = str(repo / "src" / "molkrr" / "datasets" / "data" / "ethanol_xtb_500K.extxyz.gz")
        for tree in trees.values():  # numba caches per tree: compile once, untimed
            subprocess.run([sys.executable, "-c", WARMUP], env={**os.environ, "PYTHONPATH": str(tree / "src")},
                           check=True)
        names = a.only or list(QUICK)
        best = {(n, t): float("inf") for n in names for t in trees}
        outputs = {}
        for r in range(a.rounds):
            for n in names:
                for label in (("base", "head") if r % 2 == 0 else ("head", "base")):
                    if not (trees[label] / "benchmarks" / QUICK[n][0]).exists():
                        best[(n, label)] = float("nan")
                        continue
                    wall, out = run(trees[label], QUICK[n], data)
                    best[(n, label)] = min(best[(n, label)], wall) if wall == wall else float("nan")
                    outputs[(n, label)] = out
                    print(f"round {r + 1}: {n:<16} {label}: {wall:7.1f} s", flush=True)
        print(f"\n{'benchmark':<16} {'base s':>8} {'head s':>8} {'head/base':>10}   ({a.base} → {a.head}, best of {a.rounds})")
        for n in names:
            b, h = best[(n, "base")], best[(n, "head")]
            print(f"{n:<16} {b:8.1f} {h:8.1f} {h / b:10.3f}")
        if a.show:
            for (n, label), out in outputs.items():
                lines = [ln for ln in out.splitlines() if any(u in ln for u in (" s", "ms", "s)", "GFLOP"))]
                print(f"\n--- {n} ({label})\n" + "\n".join(lines[-12:]))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
