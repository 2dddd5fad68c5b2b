"""Timing shared by the benchmark scripts (imported from their own folder)."""

import math
import time


def best_ms(fn, repeat):
    """Call ``fn`` once to warm up, then ``repeat`` times; return the fastest call in ms."""
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3
