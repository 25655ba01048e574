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


def test_a_stall_is_split_into_the_loop_running_and_the_loop_asleep():
    async def main() -> LoopLag:
        async with LoopLag() as lag:
            deadline = time.monotonic() + 10
            while lag.samples < 20 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            time.sleep(0.08)  # blocked asleep (as behind the GIL)
            await asyncio.sleep(0.05)
            spin = time.monotonic() + 0.08
            while time.monotonic() < spin:  # blocked running (the loop's own work)
                pass
            await asyncio.sleep(0.05)
        return lag

    lag = asyncio.run(main())
    asleep, running = lag.stalls(0.05)
    assert asleep.lag >= 0.05 and running.lag >= 0.05
    assert asleep.window >= asleep.lag
    # How the 80 ms were spent, as the kernel counted them (generous for a loaded machine).
    assert asleep.asleep >= 0.06 and asleep.running < 0.02
    assert running.running + running.waiting_for_core >= 0.06 and running.asleep < 0.03
    assert "waited for a core" in str(running)
