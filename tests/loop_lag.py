"""A loop-lag monitor: how long the event loop makes a newly arrived event wait.

A thread (not the loop) posts a callback into the loop with
``call_soon_threadsafe`` every ``interval`` seconds and notes the time; the lag of
that sample is how much later the loop ran it. An event loop that is blocked (by
a socket read in a coroutine, say) for 3 ms makes a sample wait up to 3 ms. The
monitor thread sleeps between samples, so it costs the loop one tiny callback per
sample and keeps no core busy. Unlike a timer the loop sets for itself, it does not
count the millisecond rounding of the loop's own ``epoll`` timeout as lag.

Usage::

    async with LoopLag() as lag:
        ...  # the work
    lag.max, lag.median, lag.samples
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from types import TracebackType

__all__ = ["LoopLag"]


class LoopLag:
    """Samples the loop's lag every ``interval`` seconds while in its ``async with``."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> LoopLag:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._sample, args=(loop,), daemon=True)
        self._thread.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        assert self._thread is not None
        await asyncio.to_thread(self._thread.join)

    def _sample(self, loop: asyncio.AbstractEventLoop) -> None:
        done = threading.Event()

        def ran(posted: float) -> None:
            self.lags.append(time.perf_counter() - posted)
            done.set()

        while not self._stop.wait(self.interval):
            done.clear()
            loop.call_soon_threadsafe(ran, time.perf_counter())
            # One sample in flight at a time: a blocked loop counts once, fully.
            while not done.wait(0.1):
                if self._stop.is_set() or loop.is_closed():
                    return

    @property
    def samples(self) -> int:
        return len(self.lags)

    @property
    def max(self) -> float:
        return max(self.lags)

    @property
    def median(self) -> float:
        return statistics.median(self.lags)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
