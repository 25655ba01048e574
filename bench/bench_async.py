"""The coroutine twins on the celery transport: event-loop lag at 1,000 sends a second.

Run: ``python bench/bench_async.py`` (RabbitMQ and Redis on loopback, as the
integration tests). Writes the ``async`` section of docs/benchmarks.md
(``--no-write``: print only).

Every variant sends the same emails from one event loop, paced at ``--rate`` a
second, on the celery transport (real RabbitMQ with publisher confirms, real
Redis), while a loop-lag monitor runs (tests/loop_lag.py: a child process writes
a timestamp into a socket every millisecond, which the loop reads as it reads a
request; its lag is how much later the loop ran the reader):

* **tenant-notify, asend_email**: the coroutine twin: checks in the loop, the
  enqueue on the notifier's bounded pool of threads;
* **send_email in the coroutine**: the blocking method called from the loop,
  what a host without the twins would write (baseline: the lag the twins remove);
* **asyncio.to_thread(send_email)**: the blocking method on asyncio's default
  executor, the usual hand-written offload (baseline);
* **tenant-notify, asend_email, gc.freeze()**: the same after ``gc.freeze()``, as
  a latency-minded host would start: CPython's full (generation 2) collections
  walk the whole heap while holding the GIL, and one can stop the loop for
  longer than any send does;
* **tenant-notify, asend_email, switch interval 1 ms**: the same with
  ``sys.setswitchinterval(0.001)`` (CPython's default is 5 ms): a thread that
  wants the GIL waits up to that long for the thread holding it to let go, so
  while the offload thread runs Python the loop may wait that long for it;
* **idle loop**: the monitor alone, nothing sent: the machine's own noise floor,
  measured in the same rounds (other processes take the cores too).

Rounds interleave the variants; each round builds a fresh notifier on queues and
a key prefix of its own, warms up, then measures. The rate table is the
harness's; the lag table gives, per variant, the median over rounds of each
round's median, 99th percentile and maximum lag, with their ranges, and beside them
the garbage collections of the same window (``gc.callbacks``): how many full
(generation 2) collections ran and the longest of any generation, which holds the
GIL and so stops the loop wherever it runs.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _harness import Comparison, Sample, Variant, arguments, cpu_seconds, publish

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import AMQP_URL as AMQP
from tests.integration.conftest import REDIS_URL as REDIS
from tests.integration.conftest import _cleanup as cleanup
from tests.loop_lag import LoopLag

TENANTS = {
    "acme": {"name": "Acme Shop", "email_from": "orders@acme.test"},
    "globex": {"name": "Globex Café", "email_from": "hello@globex.test", "locale": "de"},
}
WARM_UP = 50

LAGS: dict[str, list[LoopLag]] = {}
GCS: dict[str, list[GcPauses]] = {}


class GcPauses:
    """The garbage collections while in its ``with``: full ones counted, the longest timed."""

    def __init__(self) -> None:
        self.full = 0
        self.longest = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.longest = max(self.longest, time.perf_counter() - self._started)
        if info["generation"] == 2:
            self.full += 1

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


def settings(tag: str) -> dict[str, Any]:
    return {
        "transport": "celery",
        "email": {"provider": "console"},
        "tenants": TENANTS,
        "celery": {
            "broker_url": AMQP,
            "result_backend": REDIS,
            "queue": f"bench_async_{tag}",
            "dead_letter_queue": f"bench_async_{tag}.dead",
            # A loaded machine's broker can take longer than the 5 s default to answer;
            # the bench measures the loop, not that.
            "publish_timeout": 60.0,
        },
        "redis": {"url": REDIS, "key_prefix": f"bench_async:{tag}:"},
    }


Send = Callable[[Any, int], Awaitable[Any]]


def email(i: int) -> dict[str, Any]:
    return {
        "to_email": f"customer{i}@example.com",
        "subject": f"Your order {i}",
        "body": "Thank you for your order.",
        "tenant_id": ("acme", "globex")[i % 2],
    }


async def twin(notify: Any, i: int) -> Any:
    return await notify.asend_email(**email(i))


async def blocking(notify: Any, i: int) -> Any:
    return notify.send_email(**email(i))


async def to_thread(notify: Any, i: int) -> Any:
    return await asyncio.to_thread(lambda: notify.send_email(**email(i)))


def variant(
    name: str,
    send: Send | None,
    count: int,
    rate: float,
    *,
    freeze: bool = False,
    switch_interval: float | None = None,
) -> Callable[[int], Sample]:
    def run(round_no: int) -> Sample:
        default = sys.getswitchinterval()
        if switch_interval is not None:
            sys.setswitchinterval(switch_interval)
        try:
            return asyncio.run(main())
        finally:
            sys.setswitchinterval(default)

    async def main() -> Sample:
        from tenant_notify import Notifier

        if send is None:  # the idle loop
            started, cpu = time.perf_counter(), cpu_seconds()
            with GcPauses() as pauses:
                async with LoopLag() as lag:
                    await asyncio.sleep(count / rate)
            LAGS.setdefault(name, []).append(lag)
            GCS.setdefault(name, []).append(pauses)
            return Sample(ops=count, wall=time.perf_counter() - started,
                          cpu={"process": cpu_seconds() - cpu})  # fmt: skip
        table = settings(f"{uuid.uuid4().hex[:8]}")
        try:
            async with Notifier.from_settings(table) as notify:
                await asyncio.gather(*(send(notify, -1 - i) for i in range(WARM_UP)))
                if freeze:
                    gc.collect()
                    gc.freeze()
                loop = asyncio.get_running_loop()
                # Like a host's request handlers (and the timing test), nothing is kept once
                # a send is done but its id: thousands of finished tasks and receipts held
                # to the end reach the collector's oldest generation and set off full
                # collections of their own.
                ids: list[str] = []
                running: set[asyncio.Task[Any]] = set()

                def done(task: asyncio.Task[Any]) -> None:
                    running.discard(task)
                    ids.append(task.result().id)

                started, cpu = time.perf_counter(), cpu_seconds()
                with GcPauses() as pauses:
                    async with LoopLag() as lag:
                        begin = loop.time()
                        for i in range(count):
                            due = begin + i / rate
                            if due > loop.time():
                                await asyncio.sleep(due - loop.time())
                            task = asyncio.create_task(send(notify, i))
                            running.add(task)
                            task.add_done_callback(done)
                        while running:
                            await asyncio.gather(*running)
                wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
                if len(set(ids)) != count:
                    raise RuntimeError(f"{name}: {len(set(ids))} receipts for {count}")
                # flush() can answer False while a link is in the confirm reader's hands
                # (BOARD 14:34): ask again until every confirm is in, or 120 s pass.
                deadline = time.monotonic() + 120
                while not notify.transport.flush(1):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: the broker did not confirm every message")
        finally:
            gc.unfreeze()
            cleanup(table)
        LAGS.setdefault(name, []).append(lag)
        GCS.setdefault(name, []).append(pauses)
        return Sample(ops=count, wall=wall, cpu={"process": cpu})

    return run


def ms(value: float) -> str:
    return f"{value * 1e3:.3f}"


def lag_table(rate: float) -> str:
    rows = [
        f"Event-loop lag while sending at {rate:,.0f}/s (ms; median over rounds "
        "[range], each round's figure over ~1 sample per ms):",
        "",
        "| Variant | median lag | p99 lag | max lag | samples per round "
        "| full GCs per round | longest GC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, lags in LAGS.items():
        cells = []
        for figure in (
            [lag.median for lag in lags],
            [lag.quantile(0.99) for lag in lags],
            [lag.max for lag in lags],
        ):
            cells.append(f"{ms(statistics.median(figure))} [{ms(min(figure))}-{ms(max(figure))}]")
        samples = statistics.median(lag.samples for lag in lags)
        pauses = GCS[name]
        full = [p.full for p in pauses]
        longest = [p.longest for p in pauses]
        cells += [
            f"{samples:.0f}",
            f"{statistics.median(full):.0f} [{min(full)}-{max(full)}]",
            f"{ms(statistics.median(longest))} [{ms(min(longest))}-{ms(max(longest))}]",
        ]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(rows)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="sends a second")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds sent per round")
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    result = Comparison(
        f"asyncio sends on celery at {args.rate:,.0f}/s",
        [
            Variant(
                "tenant-notify, asend_email",
                variant("tenant-notify, asend_email", twin, count, args.rate),
                guarantee="checked in the loop, queued with confirms; the loop never waits",
            ),
            Variant(
                "tenant-notify, asend_email, gc.freeze()",
                variant(
                    "tenant-notify, asend_email, gc.freeze()", twin, count, args.rate, freeze=True
                ),
                guarantee="the same; the host froze the heap it started with",
            ),
            Variant(
                "tenant-notify, asend_email, switch interval 1 ms",
                variant(
                    "tenant-notify, asend_email, switch interval 1 ms",
                    twin,
                    count,
                    args.rate,
                    switch_interval=0.001,
                ),
                guarantee="the same; the host set sys.setswitchinterval(0.001)",
            ),
            Variant(
                "send_email in the coroutine",
                variant("send_email in the coroutine", blocking, count, args.rate),
                guarantee="the same send, with the loop waiting for Redis and the broker",
                baseline=True,
            ),
            Variant(
                "asyncio.to_thread(send_email)",
                variant("asyncio.to_thread(send_email)", to_thread, count, args.rate),
                guarantee="the same send on asyncio's default executor",
                baseline=True,
            ),
            Variant(
                "idle loop (noise floor)",
                variant("idle loop (noise floor)", None, count, args.rate),
                guarantee="nothing sent",
                baseline=True,
            ),
        ],
        rounds=args.rounds,
        metric="rate",
        unit="email",
        cpu_scopes={"process": "the sending process, every thread (the system under test)"},
    ).run()
    publish("async", result.markdown() + "\n\n" + lag_table(args.rate), write=args.write)


if __name__ == "__main__":
    main()
