"""The coroutine twins on the celery transport: 1,000 sends a second from one event
loop, real RabbitMQ and Redis, and the loop never waits for either."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import Notifier
from tests.integration.conftest import _cleanup, queued, settings_table
from tests.loop_lag import LoopLag

# Wall-clock figures: run with `pytest -m timing` (or `nox -s timing`) on a quiet machine;
# bench/bench_async.py measures the same against baselines and the machine's noise floor.
pytestmark = [pytest.mark.integration, pytest.mark.timing]

RATE = 1000  # sends a second
SECONDS = 5


@pytest.fixture
def settings(run_id: str) -> Iterator[dict[str, Any]]:
    # A queue of its own, with no worker: what arrives there is what was sent.
    table = settings_table(f"{run_id}_lag", 9)
    yield table
    _cleanup(table)


async def send_at_rate(notify: Notifier, count: int) -> tuple[list[str], float]:
    """Send ``count`` emails at RATE a second; the receipts' ids and the time it took.

    Like a host's request handlers, it keeps no task or receipt once a send is done
    (only its id, a string): thousands of finished tasks held to the end would reach
    the collector's oldest generation and set off full collections of their own.
    """
    loop = asyncio.get_running_loop()
    tenants = sorted(notify.settings.tenants)
    started = loop.time()
    ids: list[str] = []
    running: set[asyncio.Task[Any]] = set()

    def done(task: asyncio.Task[Any]) -> None:
        running.discard(task)
        ids.append(task.result().id)

    for i in range(count):
        due = started + i / RATE
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        send = notify.asend_email(
            to_email=f"lag{i}@example.com",
            subject=f"Loop lag {i}",
            body="Sent from a coroutine.",
            tenant_id=tenants[i % len(tenants)],
        )
        task = asyncio.create_task(send)
        running.add(task)
        task.add_done_callback(done)
    while running:
        await asyncio.gather(*running)
    return ids, loop.time() - started


def test_a_thousand_sends_a_second_never_block_the_loop(settings):
    count = RATE * SECONDS

    async def main() -> tuple[list[str], float, LoopLag]:
        async with Notifier.from_settings(settings) as notify:
            await notify.asend_email(  # connections opened before measuring
                to_email="warm@example.com", subject="Warm up", body="x", tenant_id="acme"
            )
            async with LoopLag() as lag:
                ids, elapsed = await send_at_rate(notify, count)
            # Every confirm in: a wait for a condition, generous for a loaded machine.
            assert notify.transport.flush(120)
        return ids, elapsed, lag

    ids, elapsed, lag = asyncio.run(main())
    assert len(set(ids)) == count
    assert queued(settings) == count + 1
    rate = count / elapsed
    print(
        f"\n{count} sends in {elapsed:.2f}s ({rate:.0f}/s); loop lag over {lag.samples} "
        f"samples: median {lag.median * 1e3:.3f} ms, p99 {lag.quantile(0.99) * 1e3:.3f} ms, "
        f"max {lag.max * 1e3:.3f} ms"
    )
    for stall in lag.stalls(0.002):
        print(f"stall: {stall}")
    assert rate >= 0.95 * RATE
    # A sample at least every 5 ms on average, or "never blocked 5 ms" would say little.
    assert lag.samples >= SECONDS * 200
    assert lag.median < 0.0002
    # A failure says where the loop's thread was during each stall: running, waiting
    # for a core (the machine's), or asleep (the GIL, or nothing to do).
    stalls = "\n".join(str(stall) for stall in lag.stalls(0.005))
    assert lag.max < 0.005, f"the loop was blocked {lag.max * 1e3:.2f} ms:\n{stalls}"
