"""All representation benchmarks against qmllib, one after the other (issue #4's entry point).

    .venv/bin/python benchmarks/representations.py [--quick]

Runs benchmarks/coulomb.py, benchmarks/bob.py and benchmarks/fchl19.py in turn, each in its own process
(so one's numba caches or OpenMP pool do not affect the next). Every script measures qmllib in the same run
as molkrr and prints the ratio, so the figures stay comparable on a noisy machine. ``--quick`` uses small
batches (a smoke run, not a measurement). The trained-model force path (FCHL19 energy + forces vs qmllib's
dense gradient) is benchmarks/forces.py --representation fchl19 --qmllib.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS = {
    "coulomb.py": (["--n", "20000"], ["--n", "500", "--repeats", "1"]),
    "bob.py": (["--n", "2000"], ["--n", "200", "--repeat", "1"]),
    "fchl19.py": (["--n", "1000", "--n-single", "20"], ["--n", "50", "--n-single", "3", "--repeat", "1"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small batches: check the scripts run")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    status = 0
    for script, (full, quick) in RUNS.items():
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print(f"\n=== {script} {' '.join(cmd[2:])}", flush=True)
        rc = subprocess.run(cmd, env=env).returncode
        if rc:
            print(f"error: {script} exited with {rc}", file=sys.stderr)
            status = rc
    return status


if __name__ == "__main__":
    sys.exit(main())
