"""What waits on the broker, by tenant: ``tenant-notify backlog``.

One passive declare per work queue of :class:`.message.Routes` (depth and
consumers) and, for a queue with messages, a look at the one at its head
(fetched unacknowledged and handed straight back) for how long it has waited.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from ...config import Settings
from .message import Routes, kombu_module

__all__ = ["QueueBacklog", "queue_backlog"]


@dataclass(frozen=True, slots=True)
class QueueBacklog:
    """One work queue's backlog.

    Attributes:
        tenant_id: The tenant whose queue it is; ``"*"`` for the shared queue,
            ``"(deferred)"`` for retries and delayed sends waiting for their time.
        queue: The queue's name.
        waiting: Messages ready in it (not those a worker holds).
        consumers: Worker consumers on it.
        oldest_wait: Seconds the message at its head has waited since it was
            queued (or fell due), if there is one.
    """

    tenant_id: str
    queue: str
    waiting: int
    consumers: int
    oldest_wait: float | None


def queue_backlog(settings: Settings) -> list[QueueBacklog]:
    """The backlog of every work queue (queues not declared yet count as empty)."""
    kombu = kombu_module()
    routes = Routes.from_settings(settings)
    rows = []
    with kombu.Connection(
        settings.celery.broker_url, connect_timeout=settings.celery.connect_timeout
    ) as conn:
        channel = conn.channel()
        for name in routes.names():
            try:
                _, waiting, consumers = channel.queue_declare(name, passive=True)
            except Exception:
                channel = conn.channel()  # a 404 closes the channel
                waiting, consumers = 0, 0
            oldest = _head_wait(channel, name) if waiting else None
            tenant = routes.tenant_of(name)
            if tenant is None:
                tenant = "(deferred)" if name == routes.deferred and routes.fair else "*"
            rows.append(QueueBacklog(tenant, name, waiting, consumers, oldest))
    return rows


def _head_wait(channel: object, name: str) -> float | None:
    message = channel.basic_get(name, no_ack=False)  # type: ignore[attr-defined]
    if message is None:
        return None
    try:
        headers = message.properties.get("application_headers") or {}
        since = headers.get("eta")
        if not since:
            args = json.loads(message.body)
            since = args[0][0].get("created_at")
        if not since:
            return None
        start = dt.datetime.fromisoformat(str(since))
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.UTC)
        return max(0.0, (dt.datetime.now(dt.UTC) - start).total_seconds())
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    finally:
        channel.basic_reject(message.delivery_tag, requeue=True)  # type: ignore[attr-defined]
