"""The caller's cost of a send, against a fair hand-written queue.

Run: ``python bench/bench_submit.py`` (or ``nox -s bench``). Writes the ``submit``
section of docs/benchmarks.md (``--no-write``: print only).

µs per ``send_order_confirmation`` call in the caller's thread, while the
variant's consumers work at the same time, as they do in a real host (the
consumers share the interpreter lock with the caller, so work they do shows up in
the caller's figure). After each round the variant's consumers drain what was
queued, untimed, so every round starts on a quiet process.

* **tenant-notify, inprocess**: two worker threads delivering into the memory
  provider (they render subject, text and HTML in the sandbox);
* **fair hand-written queue**: build a dict and ``queue.Queue.put`` it; two
  consumer threads render the same templates with plain Jinja2
  (bench/handwritten.py) and keep the result;
* **bare put, nobody consuming**: the same ``put`` with no consumer at all: the
  floor of a queue, not like-for-like work (listed to show the GIL's share);
* **validation only**: the Notifier with a transport that drops the notification:
  the library's own checks, no thread competing;
* **eager**: rendering and delivery (memory provider) inline in the caller.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from _harness import Comparison, Sample, Variant, arguments, cpu_seconds, publish
from handwritten import TENANTS, Renderer, order

from tenant_notify import Notifier
from tenant_notify.models import Notification
from tenant_notify.transports.base import Transport

TENANT_IDS = ("acme", "globex")


class DropTransport(Transport):
    """Accepts and forgets: isolates the Notifier's own cost."""

    name = "drop"

    def submit(self, notification: Notification) -> None:
        pass


def notifier(backend: str) -> Notifier:
    return Notifier.from_settings(
        {
            "transport": {
                "backend": "eager" if backend == "drop" else backend,
                "workers": 2,
                "queue_size": 1_000_000,
            },
            "email": {"provider": "memory", "outbox": f"bench-{uuid.uuid4().hex}"},
            "tenants": TENANTS,
            "idempotency": {"ttl": 600},
        },
        transport=DropTransport if backend == "drop" else None,
    )


def measure(n: int, send: Callable[[int], object], drain: Callable[[], None]) -> Sample:
    wall, cpu, thread = time.perf_counter(), cpu_seconds(), time.thread_time()
    for i in range(n):
        send(i)
    wall = time.perf_counter() - wall
    sample = Sample(
        ops=n,
        wall=wall,
        cpu={"caller": time.thread_time() - thread, "process": cpu_seconds() - cpu},
    )
    drain()
    return sample


def library(backend: str, n: int) -> Callable[[int], Sample]:
    notify = notifier(backend)
    prefix = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))

    def send(i: int) -> object:
        tenant = TENANT_IDS[i % 2]
        o = order(next(counter), prefix, tenant)
        return notify.send_order_confirmation(
            order_id=o["order_id"],
            customer_email=o["customer_email"],
            order_total=o["order_total"],
            currency=o["currency"],
            tenant_id=tenant,
        )

    def drain() -> None:
        # Only the in-process transport has anything pending.
        while getattr(notify.transport, "pending", 0):
            time.sleep(0.01)

    return lambda round_no: measure(n, send, drain)


def hand_written(n: int, *, consumers: int) -> Callable[[int], Sample]:
    renderer = Renderer()
    jobs: queue.Queue[dict[str, Any]] = queue.Queue()
    done: list[tuple[str, str, str]] = []

    def consume() -> None:
        while True:
            job = jobs.get()
            done.append(renderer.render(job["tenant_id"], job))
            jobs.task_done()

    for _ in range(consumers):
        threading.Thread(target=consume, daemon=True).start()
    prefix = uuid.uuid4().hex[:8]

    def send(i: int) -> None:
        jobs.put({**order(i, prefix, TENANT_IDS[i % 2]), "id": uuid.uuid4().hex})

    def drain() -> None:
        if consumers:
            jobs.join()
        else:
            with jobs.mutex:
                jobs.queue.clear()
                jobs.unfinished_tasks = 0
        done.clear()

    return lambda round_no: measure(n, send, drain)


LIBRARY = "tenant-notify, inprocess, 2 workers delivering meanwhile"
QUEUE = "fair hand-written queue: 2 consumers rendering the same templates meanwhile"


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="calls per round and variant")
    args = parser.parse_args()
    # As in production: info lines filtered out, so the figures are the library's own.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    queued = "queued in memory; lost if the process dies"
    checked = "validated, idempotency key reserved, status recorded; " + queued
    variants = [
        Variant(LIBRARY, library("inprocess", args.n), guarantee=checked, short="library"),
        Variant(
            QUEUE,
            hand_written(args.n, consumers=2),
            guarantee=queued + "; nothing checked or recorded",
            baseline=True,
            short="fair queue",
        ),
        Variant(
            "bare `queue.put`, nobody consuming (not like-for-like: no work meanwhile)",
            hand_written(args.n, consumers=0),
            guarantee="none: nothing is ever sent",
            baseline=True,
            short="bare put",
        ),
        Variant(
            "validation only (the Notifier, a transport that drops the notification)",
            library("drop", args.n),
            guarantee="validated, key reserved, status recorded; then dropped",
        ),
        Variant(
            "eager (render and deliver to the memory provider inline)",
            library("eager", args.n // 5),
            guarantee="delivered when the call returns",
        ),
    ]
    result = Comparison(
        "caller's cost",
        variants,
        rounds=args.rounds,
        metric="time",
        unit="call",
        cpu_scopes={
            "caller": "the caller's thread",
            "process": "the whole process, consumers included (they run meanwhile)",
        },
        warmup=True,
    ).run()
    publish("submit", result.markdown(cpu_ratios_to=[QUEUE]), write=args.write)


if __name__ == "__main__":
    main()
