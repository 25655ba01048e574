"""What task-sent events cost the caller of a send on the Celery transport.

Run: ``python bench/bench_task_sent.py`` (needs RabbitMQ and Redis on loopback; part of
``nox -s bench``). Writes the ``task-sent`` section of docs/benchmarks.md
(``--no-write``: print only).

Both variants call ``notify.send_email(...)`` (no idempotency key) on the ``celery``
transport with the default publisher confirms (``async``), no worker consuming, in
this process; the only difference is ``[celery] send_events``:

* **send_events off** (the default, and the baseline): one task message per send;
* **send_events on**: the task message and Celery's ``task-sent`` event on the
  ``celeryev`` exchange (transient, on a second channel of the same connection),
  so Flower shows the notification from the moment it is queued.

A round warms up (connections, templates) with 200 sends, then times 2,000. The
queue is purged after every round, and checked to hold one task per send.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from _harness import Comparison, Sample, Target, Variant, arguments, cpu_seconds, publish

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/15"
OFF = "send_email, celery transport, send_events off"
ON = "send_email, celery transport, send_events on (task-sent events)"
SCOPES = {"process": "the benchmark process, every thread (the caller: system under test)"}


def settings(run: str, send_events: bool) -> dict[str, Any]:
    return {
        "transport": "celery",
        "tenants": {"acme": {"name": "Acme Shop", "email_from": "orders@acme.test"}},
        "celery": {
            "broker_url": AMQP_URL,
            "result_backend": REDIS_URL,
            "queue": f"tn_bench_ts_{run}",
            "dead_letter_queue": f"tn_bench_ts_{run}.dead",
            "send_events": send_events,
        },
        "redis": {"url": REDIS_URL, "key_prefix": f"tn_bench_ts:{run}:"},
    }


def sends(run: str, send_events: bool, calls: int) -> Sample:
    import kombu

    from tenant_notify import Notifier

    table = settings(run, send_events)
    with Notifier.from_settings(table) as notify:

        def send(i: int) -> None:
            notify.send_email(
                to_email=f"c{i}@example.com", subject="Hello", body="Hi.", tenant_id="acme"
            )

        for i in range(200):
            send(i)
        started, cpu = time.perf_counter(), cpu_seconds()
        for i in range(calls):
            send(i)
        wall, used = time.perf_counter() - started, cpu_seconds() - cpu
    queue = table["celery"]["queue"]
    with kombu.Connection(AMQP_URL) as conn:
        channel = conn.channel()
        depth = channel.queue_declare(queue, durable=True, passive=True).message_count
        channel.queue_purge(queue)
    if depth != calls + 200:
        raise RuntimeError(f"{depth} tasks queued for {calls + 200} sends")
    return Sample(ops=calls, wall=wall, cpu={"process": used})


def cleanup(run: str) -> None:
    import kombu
    import redis

    table = settings(run, False)
    with kombu.Connection(AMQP_URL) as conn:
        for name in (table["celery"]["queue"], table["celery"]["dead_letter_queue"]):
            try:
                conn.channel().queue_delete(name)
                conn.channel().exchange_delete(name)
            except Exception:
                continue
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"tn_bench_ts:{run}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed sends per round")
    args = parser.parse_args()
    import logging

    logging.getLogger("tenant_notify").setLevel(logging.ERROR)
    run = uuid.uuid4().hex[:8]
    variants = [
        Variant(
            OFF,
            lambda r: sends(run, False, args.calls),
            baseline=True,
            short="off",
            guarantee="task written to the broker, confirm collected in the background",
        ),
        Variant(
            ON,
            lambda r: sends(run, True, args.calls),
            guarantee="the same, and a task-sent event (transient, unconfirmed)",
        ),
    ]
    try:
        result = Comparison(
            "task-sent events",
            variants,
            rounds=args.rounds,
            metric="time",
            unit="call",
            cpu_scopes=SCOPES,
        ).run()
    finally:
        cleanup(run)
    targets = [Target("caller's cost with task-sent events vs without", ON, OFF)]
    publish("task-sent", result.markdown(targets=targets, cpu_ratios_to=[OFF]), write=args.write)


if __name__ == "__main__":
    main()
