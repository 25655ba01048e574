"""The dead-letter queue: notifications whose last attempt failed, kept for an operator.

The worker publishes a copy of each such notification to ``[celery]
dead_letter_queue`` with the reason and the time in headers; nothing consumes
that queue. :func:`replay_dead_letters` (``tenant-notify replay``) lists them or
puts them back on the work queue with a fresh set of attempts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass

from ..._redact import redact
from ...config import Settings
from ...errors import ConfigurationError, NotifyError
from ...log import get_logger, mask_recipient
from ...models import DeliveryState, DeliveryStatus, Notification
from ...stores import IdempotencyStore
from .message import Routes, kombu_module, queue_for, read_notification
from .publisher import Publisher
from .transport import shared_stores

__all__ = ["DeadLetter", "dead_letter", "replay_dead_letters"]

# Headers a dead-lettered message gets on top of the task's own.
_DEAD_ERROR = "x_tenant_notify_error"
_DEAD_AT = "x_tenant_notify_failed_at"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A notification found in the dead-letter queue.

    Attributes:
        id: Notification (and task) id.
        tenant_id, kind: What it was.
        to: The recipient, masked.
        attempts: Attempts made.
        error: Why the last one failed.
        failed_at: When it was dead-lettered (ISO 8601, UTC).
    """

    id: str
    tenant_id: str
    kind: str
    to: str
    attempts: int
    error: str
    failed_at: str


def dead_letter(
    notification: Notification,
    attempt: int,
    error: str,
    *,
    queue: str,
    publisher: Publisher,
    idempotency_store: IdempotencyStore,
    retention: float = 7 * 86_400.0,
) -> None:
    """Publish ``notification`` to the dead-letter ``queue`` (once per failed attempt).

    ``retention`` (``[stores] retention``) is how long the key that says it was
    dead-lettered at this attempt is kept.
    """
    # A redelivered message must not be dead-lettered twice.
    key = _dead_key(notification.id, attempt)
    if idempotency_store.reserve(key, notification.id, retention):
        return
    try:
        publisher.publish(
            notification,
            attempt=attempt,
            queue=queue,
            extra_headers={
                _DEAD_ERROR: redact(error)[:1000],  # headers leave the library: scrubbed
                _DEAD_AT: dt.datetime.now(dt.UTC).isoformat(),
            },
            wait=True,
        )
    except BaseException:
        # Not dead-lettered: the redelivered message must try again.
        with suppress(NotifyError):
            idempotency_store.forget(key)
        raise
    get_logger().warning(
        "notification_dead_lettered",
        tenant_id=notification.tenant_id,
        notification_id=notification.id,
        kind=notification.kind,
        queue=queue,
    )


def _dead_key(notification_id: str, attempt: int) -> str:
    return f"dead:{notification_id}:{attempt}"


def replay_dead_letters(
    settings: Settings,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    ids: Iterable[str] | None = None,
) -> list[DeadLetter]:
    """Put dead-lettered notifications back on the work queue (or just list them).

    Each replayed notification gets its full number of attempts again: its
    delivery claim is cleared and its status set back to ``queued``.

    Args:
        settings: Settings naming the broker, queues and Redis.
        limit: At most this many.
        dry_run: Only list them; the queue is left as it was.
        ids: Only these notification ids (the others stay).
    """
    wanted = set(ids) if ids is not None else None
    found: list[DeadLetter] = []
    queue_name = settings.celery.dead_letter_queue
    if not queue_name:
        raise ConfigurationError(
            "no dead-letter queue is configured", key="celery.dead_letter_queue"
        )
    kombu = kombu_module()
    status_store, idempotency_store = shared_stores(settings)
    publisher = Publisher(settings.celery, routes=Routes.from_settings(settings))
    try:
        with kombu.Connection(
            settings.celery.broker_url, connect_timeout=settings.celery.connect_timeout
        ) as conn:
            channel = conn.channel()
            queue = queue_for(queue_name)(channel)
            queue.declare()
            kept = []
            while limit is None or len(found) < limit:
                message = queue.get(no_ack=False, accept=["json"])
                if message is None:
                    break
                headers = message.headers or {}
                notification = read_notification(message.body)
                if wanted is not None and notification.id not in wanted:
                    kept.append(message)
                    continue
                found.append(
                    DeadLetter(
                        id=notification.id,
                        tenant_id=notification.tenant_id,
                        kind=notification.kind,
                        to=mask_recipient(notification.to),
                        attempts=int(headers.get("retries") or 0) + 1,
                        # Letters written before headers were scrubbed, too.
                        error=redact(str(headers.get(_DEAD_ERROR, ""))),
                        failed_at=str(headers.get(_DEAD_AT, "")),
                    )
                )
                if dry_run:
                    kept.append(message)
                    continue
                idempotency_store.forget(f"delivery:{notification.id}")
                # Its attempts start again at 1: the keys that said "dead-lettered at
                # attempt n" go, so a replay that fails again is dead-lettered again.
                last = max(int(headers.get("retries") or 0) + 1, settings.retry.max_attempts)
                for attempt in range(1, last + 1):
                    idempotency_store.forget(_dead_key(notification.id, attempt))
                current = status_store.get(notification.id)
                status_store.save(
                    (current or DeliveryStatus.queued(notification)).evolve(
                        state=DeliveryState.RETRYING,
                        error=f"replayed from {queue_name}",
                        error_type=None,
                        next_attempt_at=dt.datetime.now(dt.UTC),
                    )
                )
                publisher.publish(notification, attempt=1, wait=True)
                message.ack()
            # Unacknowledged messages go back to the queue when the channel closes.
            del kept
            channel.close()
    finally:
        publisher.close()
        status_store.close()
        idempotency_store.close()
    return found
