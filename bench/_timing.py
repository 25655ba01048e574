"""Timing shared by the benchmarks (run as scripts: ``python bench/<name>.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_call(fn: Callable[[int], object], n: int, repeats: int) -> float:
    """Median over ``repeats`` runs of the mean seconds per call (after a warm-up).

    ``fn`` gets a distinct number per call (negative ones during the warm-up), so
    each call can use fresh ids and no idempotency key repeats.
    """
    for i in range(min(200, n)):
        fn(-1 - i)
    runs = []
    counter = 0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn(counter)
            counter += 1
        runs.append((time.perf_counter() - start) / n)
    return statistics.median(runs)
