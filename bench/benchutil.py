"""What the benchmark scripts share: their percentile and their way of running load threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The value at rank ``int(q * n)`` of the sorted values (clamped to the last); 0 < q < 1."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_threads(target: Callable[..., Any], arguments: Sequence[tuple[Any, ...]]) -> float:
    """Run ``target(*args)`` in one thread per entry of ``arguments``, all at once; return the
    wall-clock seconds from the first start to the last join."""
    threads = [threading.Thread(target=target, args=args) for args in arguments]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start
