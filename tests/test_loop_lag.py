"""The loop-lag monitor the timing tests and bench/bench_async.py rely on: it sees a
blocked loop, and it adds no thread to the process it measures."""

from __future__ import annotations

import asyncio
import threading
import time

from tests.loop_lag import LoopLag


def test_a_blocked_loop_shows_as_lag_and_the_monitor_is_no_thread_of_ours():
    async def main() -> tuple[LoopLag, int]:
        async with LoopLag() as lag:
            threads = threading.active_count()
            deadline = time.monotonic() + 10  # the child is started: wait for its samples
            while lag.samples < 20 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            time.sleep(0.08)  # the loop blocked: the sample in flight waits for it
            await asyncio.sleep(0.1)
        return lag, threads

    before = threading.active_count()
    lag, during = asyncio.run(main())
    assert during == before
    assert lag.samples >= 20
    assert lag.max >= 0.05
    assert len(lag.posted) == lag.samples
    # Most samples met an idle loop; the blocked stretch counts once, not once per interval.
    assert sum(1 for value in lag.lags if value >= 0.05) == 1
