"""Thread policy for many small products: worker threads with one BLAS thread each.

Local-kernel blocks and per-element predictions are many moderate GEMMs followed by elementwise kernel
work; threaded BLAS on such matrices mostly waits on its own threads, and numpy's elementwise functions
run on one core. Spreading the blocks over :data:`N_WORKERS` Python threads (numpy releases the GIL)
with BLAS limited to one thread uses every core for both.
"""

from __future__ import annotations

import os
from typing import Any

#: Threads that compute blocks concurrently (each with single-threaded BLAS).
N_WORKERS = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 8))

_CONTROLLER = None


def single_threaded_blas() -> Any:
    """Context: BLAS on one thread."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def map_in_threads(run: Any, tasks: list) -> Any:
    """run(task) for each task, in task order: over :data:`N_WORKERS` threads with one BLAS thread each
    when there is more than one task (results are yielded in order, so sums over them are deterministic)."""
    if N_WORKERS == 1 or len(tasks) < 2:
        yield from map(run, tasks)
        return
    from concurrent.futures import ThreadPoolExecutor

    with single_threaded_blas(), ThreadPoolExecutor(N_WORKERS) as pool:
        yield from pool.map(run, tasks)


__all__ = ["N_WORKERS", "map_in_threads", "single_threaded_blas"]
