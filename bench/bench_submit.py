"""The caller's cost of a send on each transport, against hand-written baselines.

Run: ``python bench/bench_submit.py`` (or ``nox -s bench``). Prints a Markdown table for
docs/benchmarks.md. Every figure is measured in the same run:

* baseline ``queue.put``: what a hand-written background queue costs the caller: build a dict with
  the same fields and put it on a ``queue.Queue`` (no validation, no status, no idempotency).
* ``inprocess``: ``notify.send_order_confirmation(...)`` on the in-process transport (validation,
  tenant lookup, template check, idempotency reservation, status record, enqueue), with workers
  delivering into the memory provider at the same time.
* ``validation only``: the same send with a transport that drops the notification: what the
  Notifier itself costs the caller, without worker threads competing for the GIL.
* ``inprocess, 5 ms provider``: the same, with a provider that waits 5 ms per message as a
  network API does; the workers then mostly wait instead of holding the GIL.
* ``eager``: the same send delivered inline (rendering both parts and the memory provider included).
"""

from __future__ import annotations

import argparse
import logging
import queue
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import structlog
from _timing import per_call

from tenant_notify import DeliveryResult, EmailMessage, Notifier
from tenant_notify.models import Notification
from tenant_notify.providers.memory import MemoryProvider
from tenant_notify.transports.base import Transport

TENANTS = {
    "acme": {"name": "Acme Shop", "email_from": "Acme Shop <orders@acme.test>"},
    "globex": {"name": "Globex Café", "email_from": "hello@globex.test", "locale": "de"},
}


class DropTransport(Transport):
    """Accepts and forgets: isolates the Notifier's own cost."""

    name = "drop"

    def submit(self, notification: Notification) -> None:
        pass


class SlowProvider(MemoryProvider):
    """The memory provider behind 5 ms of network latency."""

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        time.sleep(0.005)
        return super().send_email(message)


def notifier(transport: str) -> Notifier:
    drop = transport == "drop"
    return Notifier.from_settings(
        {
            "transport": {
                "backend": {"drop": "eager", "slow": "inprocess"}.get(transport, transport),
                # waiting on the network, more threads keep up (as in production)
                "workers": 16 if transport == "slow" else 2,
                "queue_size": 1_000_000,
            },
            "email": {"provider": SlowProvider(outbox="bench")}
            if transport == "slow"
            else {"provider": "memory", "outbox": "bench"},
            "tenants": TENANTS,
            "idempotency": {"ttl": 600},
        },
        transport=DropTransport if drop else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="calls per run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # As in production: info lines filtered out, so the figures are the library's own.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run = 0

    # Baseline: a hand-written background queue.
    q: queue.Queue[dict[str, object]] = queue.Queue()

    def baseline(i: int) -> None:
        q.put(
            {
                "id": uuid.uuid4().hex,
                "tenant_id": "acme",
                "kind": "order_confirmation",
                "to": "jane@example.com",
                "order_id": f"A-{i}",
                "order_total": Decimal("99.99"),
                "currency": "USD",
            }
        )

    def sender(notify: Notifier) -> Callable[[int], object]:
        nonlocal run
        run += 1
        prefix = f"r{run}-"

        def send(i: int) -> object:
            return notify.send_order_confirmation(
                order_id=prefix + str(i),
                customer_email="jane@example.com",
                order_total=Decimal("99.99"),
                currency="USD",
                tenant_id="acme",
            )

        return send

    base = per_call(baseline, args.n, args.repeats)
    results = {"baseline queue.put": base}
    labels = {
        "drop": "validation only (no transport)",
        "inprocess": "inprocess",
        "slow": "inprocess, 5 ms provider",
        "eager": "eager",
    }
    for transport in labels:
        notify = notifier(transport)
        send = sender(notify)
        send(-1)  # warm caches (templates, validation) outside the timing
        results[labels[transport]] = per_call(send, args.n, args.repeats)
        notify.close(timeout=120)

    print(f"caller's cost per send_order_confirmation, n={args.n} x {args.repeats} (median)\n")
    print("| what | µs per call | ratio to baseline |")
    print("|---|---:|---:|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds * 1e6:.1f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()
