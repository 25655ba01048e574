"""The admission check of every delivery: pauses known from memory, or read from Redis.

Run: ``python bench/bench_admission.py`` with Redis on loopback. Writes the
``admission`` section of docs/benchmarks.md (``--no-write``: print only).

Before each attempt the dispatcher asks whether the notification's provider
account is paused (``Dispatcher._admission`` -> ``Pacing.paused``). Until this
change that was a Redis GET per delivery, even when no account had ever been
paused. Now every process listens to the pause announcements (Redis pub/sub) and
answers from memory; the GET is only a fallback while it cannot listen.

Both variants deliver ``--deliveries`` (2,000) notifications one after another, in
one thread, through ``Dispatcher.deliver`` with the Redis stores (claim, statuses,
completion: what a Celery worker's delivery does) into the ``memory`` provider, so
the Redis round trips are what is measured:

* **memory** (the default now): ``Pacing`` listening to the announcements;
* **GET per delivery** (the baseline: what main did): the same dispatcher with
  ``Pacing(listen=False)``, which reads the pause key before every delivery.

The tenant and the provider account are now resolved once per delivery (at
admission) and passed on to the attempt in both variants; that part is a few
dictionary look-ups and is not separated here.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from _harness import Comparison, Sample, Target, Variant, arguments, cpu_seconds, publish

from tenant_notify.config import load_settings
from tenant_notify.dispatcher import Dispatcher
from tenant_notify.limiting import Pacing
from tenant_notify.models import Channel, Notification
from tenant_notify.stores.redis import RedisIdempotencyStore, RedisStatusStore
from tenant_notify.tenants import StaticTenantResolver

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
LISTENING = "pauses from memory (announced through Redis pub/sub)"
READING = "a Redis GET of the pause key per delivery (main before this change)"


def dispatcher(prefix: str, listen: bool) -> Dispatcher:
    config = load_settings(
        {
            "email": {"provider": "memory", "outbox": f"bench-admission-{prefix}"},
            "redis": {"url": REDIS, "key_prefix": prefix},
            "tenants": {"acme": {"name": "Acme", "email_from": "orders@acme.test"}},
        }
    )
    status = RedisStatusStore.from_settings(config)
    built = Dispatcher.from_settings(
        config,
        tenants=StaticTenantResolver(config.tenants),
        status_store=status,
        idempotency_store=RedisIdempotencyStore.from_settings(config, status.client),
    )
    if not listen:
        built.pacing.close()
        built.pacing = Pacing(client=status.client, key_prefix=prefix, listen=False)
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


def variant(listen: bool, count: int) -> Any:
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


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    args = parser.parse_args()
    result = Comparison(
        "admission: pauses from memory or from Redis",
        [
            Variant(LISTENING, variant(True, args.deliveries), short="memory"),
            Variant(READING, variant(False, args.deliveries), baseline=True, short="GET"),
        ],
        rounds=args.rounds,
        unit="email",
        cpu_scopes={"process": "the delivering process (Redis server not included)"},
        warmup=True,
    ).run()
    publish(
        "admission",
        result.markdown(
            targets=[Target("no slower than the GET per delivery", LISTENING, READING, 1.0)],
            ratios_to=[READING],
            cpu_ratios_to=[READING],
        ),
        write=args.write,
    )


if __name__ == "__main__":
    main()
