"""Timing helpers shared by the benchmark scripts (each script imports them as ``from _timing import ...``).

Benchmarks report the shortest of several wall-clock timings: on a shared machine the minimum is
the least disturbed by other work, and every script prints ratios against a baseline measured in
the same run rather than absolute times alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["best_time", "timings"]


def timings(fn: Callable[..., Any], repeat: int, *, warmup: bool = False,
            setup: Callable[[], Any] | None = None) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn``.

    Parameters
    ----------
    fn : callable
        Called with no argument, or with the value ``setup()`` returned when ``setup`` is given.
    repeat : int
        Number of timed calls (at least 1).
    warmup : bool
        Make one untimed call first (compilation, caches).
    setup : callable, optional
        Called before every timed call, outside the timing (e.g. a fresh copy that ``fn`` overwrites).
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")

    def call() -> float:
        arg = () if setup is None else (setup(),)
        t0 = time.perf_counter()
        fn(*arg)
        return time.perf_counter() - t0

    if warmup:
        call()
    return [call() for _ in range(repeat)]


def best_time(fn: Callable[..., Any], repeat: int, *, warmup: bool = False,
              setup: Callable[[], Any] | None = None) -> float:
    """Shortest of :func:`timings` (seconds)."""
    return min(timings(fn, repeat, warmup=warmup, setup=setup))
