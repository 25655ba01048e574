"""The per-delivery costs of the scheduler: the admission check and the fair queue's hand-off.

Run: ``python bench/bench_admission.py`` (``--only admission`` or ``--only fair-queue``)
with Redis on loopback. Writes the ``admission`` and ``fair-queue`` sections of
docs/benchmarks.md (``--no-write``: print only).

**Admission** (``admission``). Before each attempt the dispatcher asks whether the
notification's provider account is paused (``Dispatcher._admission`` ->
``Pacing.paused``). Until this change that was a Redis GET per delivery, even when
no account had ever been paused. Now every process listens to the pause
announcements (Redis pub/sub) and answers from memory; the GET is only a fallback
while it cannot listen. Both variants deliver ``--deliveries`` (2,000)
notifications one after another, in one thread, through ``Dispatcher.deliver``
on the worker's dispatcher (``build_dispatcher``: the Redis stores, claim,
statuses, completion) into the ``memory`` provider, so the Redis round trips are
what is measured:

* **memory** (the default now): ``Pacing`` listening to the announcements;
* **GET per delivery** (the baseline: what main did): the same dispatcher with
  ``Pacing(listen=False)``, which reads the pause key before every delivery.

The tenant and the provider account are now resolved once per delivery (at
admission) and passed on to the attempt in both variants; that part is a few
dictionary look-ups and is not separated here.

**Fair queue** (``fair-queue``). ``FairQueue.put`` woke a waiting ``get``
(``Condition.notify``) on every item and ``get`` woke a waiting ``put`` on every
item, although the worker's queue is unbounded (nobody ever waits in ``put``) and
a busy worker's threads are seldom waiting in ``get``; in a py-spy profile of
``tenant-notify worker`` into the SMTP sink the notify calls were about 4.5% of
the samples. Now each side counts its waiters and notifies only when there is
one. One thread puts ``--items`` (200,000) items for 4 tenants; ``--threads`` (8)
threads take them (``get`` then ``task_done``), as the worker's delivery threads
do, with no work in between, so the queue's own cost is what is timed. The
baseline is the queue as it was (always notify), kept here as a subclass.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from _harness import Comparison, Sample, Target, Variant, arguments, cpu_seconds, publish

from tenant_notify._fair import FairQueue
from tenant_notify.config import load_settings
from tenant_notify.dispatcher import Dispatcher
from tenant_notify.limiting import Pacing
from tenant_notify.models import Channel, Notification
from tenant_notify.transports.celery.worker import build_dispatcher

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
LISTENING = "pauses from memory (announced through Redis pub/sub)"
READING = "a Redis GET of the pause key per delivery (main before this change)"
NEW_QUEUE = "FairQueue: notify only a waiting thread"
OLD_QUEUE = "FairQueue as before: notify on every put and get"


# --- admission ---------------------------------------------------------------------------


def dispatcher(prefix: str, listen: bool) -> Dispatcher:
    config = load_settings(
        {
            "email": {"provider": "memory", "outbox": f"bench-admission-{prefix}"},
            "redis": {"url": REDIS, "key_prefix": prefix},
            "tenants": {"acme": {"name": "Acme", "email_from": "orders@acme.test"}},
        }
    )
    built = build_dispatcher(config)
    if not listen:
        built.pacing.close()
        client = built.status_store.client  # type: ignore[attr-defined]
        built.pacing = Pacing(client=client, key_prefix=prefix, listen=False)
    return built


def notification() -> Notification:
    return Notification(
        id=uuid.uuid4().hex,
        tenant_id="acme",
        kind="email",
        channel=Channel.EMAIL,
        to="customer@example.com",
        context={"subject": "Your order", "body": "Thank you."},
    )


def admission(listen: bool, count: int) -> Callable[[int], Sample]:
    def run(round_no: int) -> Sample:
        prefix = f"bench_admission:{uuid.uuid4().hex[:8]}:"
        built = dispatcher(prefix, listen)
        try:
            for _ in range(20):  # connections, templates, the listener
                built.deliver(notification())
            deadline = time.monotonic() + 10
            while listen and not built.pacing.listening and time.monotonic() < deadline:
                time.sleep(0.01)
            notes = [notification() for _ in range(count)]
            wall, cpu = time.perf_counter(), cpu_seconds()
            for note in notes:
                built.deliver(note)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            return Sample(ops=count, wall=wall, cpu={"process": cpu})
        finally:
            client = built.status_store.client  # type: ignore[attr-defined]
            built.close()
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])

    return run


# --- the fair queue's hand-off -------------------------------------------------------------


class AlwaysNotify(FairQueue[Any]):
    """The queue before the change: put and get always notify the other side."""

    def put(
        self,
        tenant: str,
        item: Any,
        *,
        urgent: bool = False,
        timeout: float | None = None,
        force: bool = False,
    ) -> None:
        with self.not_full:
            self._put(tenant, item, urgent)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def get(self, timeout: float | None = None) -> Any:
        with self.not_empty:
            while not self._size and not self._woken:
                self.not_empty.wait(timeout)
            if self._woken:
                self._woken -= 1
                return None
            item = self._take()
            self.not_full.notify()
            return item


def hand_off(kind: type[FairQueue[Any]], items: int, threads: int) -> Callable[[int], Sample]:
    def run(round_no: int) -> Sample:
        fair = kind()
        taken = [0] * threads

        def take(index: int) -> None:
            while fair.get() is not None:
                taken[index] += 1
                fair.task_done()

        workers = [threading.Thread(target=take, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        wall, cpu = time.perf_counter(), cpu_seconds()
        for i in range(items):
            fair.put(f"tenant-{i % 4}", i)
        with fair.all_tasks_done:
            while fair.unfinished_tasks:
                fair.all_tasks_done.wait()
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        fair.wake(threads)
        for worker in workers:
            worker.join()
        assert sum(taken) == items
        return Sample(ops=items, wall=wall, cpu={"process": cpu})

    return run


# --- main ---------------------------------------------------------------------------------


def compare(
    key: str, title: str, now: Variant, before: Variant, rounds: int, unit: str, write: bool
) -> None:
    result = Comparison(
        title,
        [now, before],
        rounds=rounds,
        unit=unit,
        cpu_scopes={"process": "the benchmark process, every thread (Redis not included)"},
        warmup=True,
    ).run()
    markdown = result.markdown(
        targets=[Target("no slower than before", now.name, before.name, 1.0)],
        ratios_to=[before.name],
        cpu_ratios_to=[before.name],
    )
    publish(key, markdown, write=write)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000, help="per admission round")
    parser.add_argument("--items", type=int, default=200_000, help="per fair-queue round")
    parser.add_argument("--threads", type=int, default=8, help="taking from the fair queue")
    parser.add_argument("--only", choices=("admission", "fair-queue"), action="append")
    args = parser.parse_args()
    chosen = set(args.only or ("admission", "fair-queue"))
    if "admission" in chosen:
        compare(
            "admission",
            "admission: pauses from memory or from Redis",
            Variant(LISTENING, admission(True, args.deliveries), short="memory"),
            Variant(READING, admission(False, args.deliveries), baseline=True, short="GET"),
            args.rounds,
            "email",
            args.write,
        )
    if "fair-queue" in chosen:
        compare(
            "fair-queue",
            "fair queue hand-off",
            Variant(NEW_QUEUE, hand_off(FairQueue, args.items, args.threads), short="now"),
            Variant(
                OLD_QUEUE,
                hand_off(AlwaysNotify, args.items, args.threads),
                baseline=True,
                short="before",
            ),
            args.rounds,
            "item",
            args.write,
        )


if __name__ == "__main__":
    main()
