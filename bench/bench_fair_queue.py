"""The fair queue's hand-off: waking a waiting thread only when one waits.

Run: ``python bench/bench_fair_queue.py``. Writes the ``fair-queue`` section of
docs/benchmarks.md (``--no-write``: print only).

``FairQueue.put`` woke a waiting ``get`` (``Condition.notify``) on every item and
``get`` woke a waiting ``put`` on every item, although the worker's queue is
unbounded (nobody ever waits in ``put``) and a busy worker's threads are seldom
waiting in ``get``; in a py-spy profile of ``tenant-notify worker`` into the SMTP
sink the notify calls were about 4.5% of the samples. Now each side counts its
waiters and notifies only when there is one.

One thread puts ``--items`` (200,000) items for 4 tenants; ``--threads`` (8) threads
take them (``get`` then ``task_done``), as the worker's delivery threads do, with
no work in between, so the queue's own cost is what is timed. The baseline is
the queue as it was (always notify), kept here as a subclass.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from _harness import Comparison, Sample, Target, Variant, arguments, cpu_seconds, publish

from tenant_notify._fair import FairQueue

NEW = "FairQueue: notify only a waiting thread"
OLD = "FairQueue as before: notify on every put and get"


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


def variant(kind: type[FairQueue[Any]], items: int, threads: int) -> Any:
    def run(round_no: int) -> Sample:
        fair = kind()
        done = threading.Event()
        taken = [0] * threads

        def take(index: int) -> None:
            while True:
                item = fair.get()
                if item is None:
                    return
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
        done.set()
        assert sum(taken) == items
        return Sample(ops=items, wall=wall, cpu={"process": cpu})

    return run


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    result = Comparison(
        "fair queue hand-off",
        [
            Variant(NEW, variant(FairQueue, args.items, args.threads), short="now"),
            Variant(
                OLD, variant(AlwaysNotify, args.items, args.threads), baseline=True, short="before"
            ),
        ],
        rounds=args.rounds,
        unit="item",
        cpu_scopes={"process": "the benchmark process (every thread)"},
        warmup=True,
    ).run()
    publish(
        "fair-queue",
        result.markdown(
            targets=[Target("no slower than before", NEW, OLD, 1.0)],
            ratios_to=[OLD],
            cpu_ratios_to=[OLD],
        ),
        write=args.write,
    )


if __name__ == "__main__":
    main()
