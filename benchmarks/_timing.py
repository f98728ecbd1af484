"""Timing shared by the benchmarks (run as ``python benchmarks/<file>.py``, so this imports as ``_timing``)."""
import time
from typing import Any, Callable, Tuple


def best_of(fn: Callable[[], Any], repeat: int, warmup: bool = False) -> Tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` (after one untimed call if ``warmup``), and the
    last call's result."""
    result = fn() if warmup else None
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result
