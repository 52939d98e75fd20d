"""Wall time and peak memory of one reconstruction call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psutil


class PeakRSS:
    """Peak resident memory above the starting point, sampled every ``interval`` seconds
    in a background thread, of this process plus its children (e.g. the ``bart``
    binary). Torch's CPU allocations do not go through Python's allocator, so tracemalloc
    would miss them; RSS sees everything, at the price of counting freed-but-kept pages."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _rss(self) -> int:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._base)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._base = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._base, 0)


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, int]:
    """``(fn(*args), seconds, peak extra RSS in bytes)``."""
    with PeakRSS() as meter:
        start = time.perf_counter()
        out = fn(*args)
        seconds = time.perf_counter() - start
    return out, seconds, meter.peak
