"""The event consumer's throughput: domain events to queued notifications per second.

Run: ``python bench/bench_events.py`` (needs RabbitMQ and Redis on loopback; part of
``nox -s bench``). Writes the ``events`` section of docs/benchmarks.md
(``--no-write``: print only).

Each round publishes the same number of ``com.example.order.created`` CloudEvents
(a distinct order and customer each, two tenants) with plain kombu to a queue of
this run's own, untimed, then times each consumer draining them, connection and
declarations included, in this process:

* **plain kombu consumer, JSON only** (the baseline): ``kombu.Consumer`` with the
  same prefetch, ``json.loads`` of each body and an ack. It does nothing with the
  event: what reading events off RabbitMQ costs before any work.
* **tenant-notify, celery transport**: ``EventConsumer`` with the settings' rule:
  read the CloudEvent, validate it against its JSON Schema, apply the rule
  (paths, tenant, the Notifier's checks, the idempotency key reserved and the
  ``queued`` status written in Redis), publish one Celery task per event, ack. No
  worker runs: a notification counts once its task is on the Celery queue (with
  ``publisher_confirms = "async"``, the default: written to the broker
  connection, the confirm collected in the background; and ``"sync"``, the
  setting docs/events.md recommends for a consumer: the confirm awaited before
  the ack).
* **tenant-notify, inprocess transport**: the same consumer on the embedded
  default, two worker threads delivering into the memory provider at the same
  time (queued means: in this process's memory).

CPU per event is the benchmark process, every thread (the system under test; the
broker and Redis are not counted). After every round the Celery queue is checked
to hold one task per event, so a variant that drops work fails.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _harness import Comparison, Sample, Target, Variant, arguments, cpu_seconds, publish

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/15"
SCHEMAS = ROOT / "tests" / "events" / "schemas"
TYPE = "com.example.order.created"
RULE = {
    "type": TYPE,
    "kind": "order_confirmation",
    "to": "data.customer_email",
    "context": {
        "order_id": "data.order_id",
        "order_total": "data.total",
        "currency": "data.currency",
        "customer_name": "data.customer_name",
    },
}
TENANTS = {
    "acme": {"name": "Acme Shop", "email_from": "Acme Shop <orders@acme.test>"},
    "globex": {"name": "Globex Café", "email_from": "hello@globex.test", "locale": "de"},
}
BASELINE = "plain kombu consumer, JSON decoding only"
CELERY = "tenant-notify EventConsumer, celery transport, confirms async"
CELERY_SYNC = "tenant-notify EventConsumer, celery transport, confirms sync"
INPROCESS = "tenant-notify EventConsumer, inprocess transport (2 workers, memory provider)"
SCOPES = {"process": "the benchmark process, every thread (system under test)"}


def events_table(run: str) -> dict[str, Any]:
    return {
        "broker_url": AMQP_URL,
        "exchange": f"tn_bench_{run}.domain_events",
        "queue": f"tn_bench_{run}.events",
        "dead_letter_queue": f"tn_bench_{run}.events.dead",
        "schemas_dir": str(SCHEMAS),
        "rules": [RULE],
    }


def settings(run: str, transport: str, confirms: str = "async") -> dict[str, Any]:
    return {
        "transport": {"backend": transport, "workers": 2, "queue_size": 1_000_000},
        "email": {"provider": "memory", "outbox": "bench-events"},
        "tenants": TENANTS,
        "idempotency": {"ttl": 600},
        "celery": {
            "broker_url": AMQP_URL,
            "result_backend": REDIS_URL,
            "queue": f"tn_bench_{run}.celery",
            "dead_letter_queue": f"tn_bench_{run}.celery.dead",
            "publisher_confirms": confirms,
        },
        "redis": {"url": REDIS_URL, "key_prefix": f"tn_bench:{run}:"},
        "events": events_table(run),
    }


def fill(run: str, count: int, tag: str) -> None:
    """Publish ``count`` distinct events to the run's queue (untimed)."""
    import kombu

    table = events_table(run)
    with kombu.Connection(AMQP_URL, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        exchange = kombu.Exchange(table["exchange"], type="topic", durable=True)
        kombu.Queue(table["queue"], exchange, routing_key=TYPE, durable=True)(channel).declare()
        producer = kombu.Producer(conn.channel(), exchange=exchange)
        for i in range(count):
            event = {
                "specversion": "1.0",
                "id": f"{tag}-{i}",
                "source": "/bench/orders",
                "type": TYPE,
                "tenantid": "acme" if i % 2 else "globex",
                "datacontenttype": "application/json",
                "data": {
                    "order_id": f"{tag}-{i}",
                    "customer_email": f"customer{i}@example.com",
                    "customer_name": "Jane Doe",
                    "total": 59.9,
                    "currency": "EUR",
                    "channel": "web",
                },
            }
            producer.publish(
                json.dumps(event),
                routing_key=TYPE,
                content_type="application/cloudevents+json",
                content_encoding="utf-8",
                delivery_mode=2,
            )


def queue_depth(name: str) -> int:
    import kombu

    with kombu.Connection(AMQP_URL) as conn:
        return int(conn.channel().queue_declare(name, durable=True, passive=True).message_count)


def purge(name: str) -> None:
    import kombu

    with kombu.Connection(AMQP_URL) as conn:
        conn.channel().queue_purge(name)


def plain_kombu(run: str, count: int) -> Sample:
    import kombu

    table = events_table(run)
    fill(run, count, f"k{uuid.uuid4().hex[:6]}")
    seen = 0
    started, cpu = time.perf_counter(), cpu_seconds()
    with kombu.Connection(AMQP_URL) as conn:
        channel = conn.channel()
        exchange = kombu.Exchange(table["exchange"], type="topic", durable=True)
        queue = kombu.Queue(table["queue"], exchange, routing_key=TYPE, durable=True)

        def on_message(message: Any) -> None:
            nonlocal seen
            json.loads(message.body)
            message.ack()
            seen += 1

        with kombu.Consumer(channel, [queue], on_message=on_message, prefetch_count=64):
            while seen < count:
                conn.drain_events(timeout=10)
    return Sample(
        ops=count, wall=time.perf_counter() - started, cpu={"process": cpu_seconds() - cpu}
    )


def library(run: str, count: int, transport: str, confirms: str = "async") -> Sample:
    from tenant_notify import Notifier
    from tenant_notify.events import EventConsumer

    table = settings(run, transport, confirms)
    with Notifier.from_settings(table) as notify:
        consumer = EventConsumer(notify)
        fill(run, count, f"l{uuid.uuid4().hex[:6]}")
        started, cpu = time.perf_counter(), cpu_seconds()
        stats = consumer.run(max_events=count)
        wall, used = time.perf_counter() - started, cpu_seconds() - cpu
    if stats.acked != count or stats.notifications != count or stats.duplicates:
        raise RuntimeError(f"{transport}: {stats}")
    if transport == "celery":
        queued = queue_depth(table["celery"]["queue"])
        purge(table["celery"]["queue"])
        if queued != count:
            raise RuntimeError(f"{queued} tasks on the Celery queue for {count} events")
    return Sample(ops=count, wall=wall, cpu={"process": used})


def cleanup(run: str) -> None:
    import kombu
    import redis

    table = settings(run, "celery")
    with kombu.Connection(AMQP_URL) as conn:
        for name in (
            table["events"]["queue"],
            table["events"]["dead_letter_queue"],
            table["celery"]["queue"],
            table["celery"]["dead_letter_queue"],
        ):
            try:
                conn.channel().queue_delete(name)
            except Exception:
                continue
        for name in (table["events"]["exchange"], table["celery"]["queue"]):
            try:
                conn.channel().exchange_delete(name)
            except Exception:
                continue
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"tn_bench:{run}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events per round and variant")
    args = parser.parse_args()
    import logging

    logging.getLogger("tenant_notify").setLevel(logging.ERROR)
    run = uuid.uuid4().hex[:8]
    count = args.events
    # The first round of the first variant pays for the first connections and the
    # schema's compilation: its events are published and consumed like the rest.
    variants = [
        Variant(
            BASELINE,
            lambda r: plain_kombu(run, count),
            baseline=True,
            short="kombu",
            guarantee="decoded, acked; nothing done",
        ),
        Variant(
            CELERY,
            lambda r: library(run, count, "celery"),
            guarantee="task written to the broker, confirm collected in the background",
        ),
        Variant(
            CELERY_SYNC,
            lambda r: library(run, count, "celery", "sync"),
            guarantee="task confirmed by the broker before the event's ack",
        ),
        Variant(
            INPROCESS,
            lambda r: library(run, count, "inprocess"),
            guarantee="queued in this process's memory",
        ),
    ]
    try:
        result = Comparison(
            "event consumer",
            variants,
            rounds=args.rounds,
            metric="rate",
            unit="event",
            cpu_scopes=SCOPES,
            warmup=True,
        ).run()
    finally:
        cleanup(run)
    targets = [Target("consumer (celery) vs plain kombu, JSON only", CELERY, BASELINE)]
    publish("events", result.markdown(targets=targets, cpu_ratios_to=[BASELINE]), write=args.write)


if __name__ == "__main__":
    main()
