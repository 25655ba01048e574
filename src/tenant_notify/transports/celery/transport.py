"""The caller's side: :class:`CeleryTransport` publishes each notification as a task.

Publisher confirms (RabbitMQ): with ``[celery] publisher_confirms = "async"`` (the
default) a send returns once the message is written to the broker connection;
the broker's confirms are read in the background, and a message left
unconfirmed (the connection died, the broker refused it) is published again on a
new connection. One that still cannot be confirmed ``publish_timeout`` seconds
later is recorded as ``failed`` with the reason (and logged as
``enqueue_unconfirmed``): never lost silently. ``"sync"`` makes every send wait
for its confirm. A broker that cannot be reached when the host sends makes the
send raise :class:`~tenant_notify.errors.EnqueueError` within ``publish_timeout``.
"""

from __future__ import annotations

from typing import Self

from ...config import CelerySettings, Settings
from ...dispatcher import Dispatcher
from ...errors import ConfigurationError
from ...models import DeliveryState, Notification
from ...stores import IdempotencyStore, StatusStore
from ..base import Transport
from .message import Routes, kombu_module
from .publisher import Publisher, _Pending

__all__ = ["CeleryTransport", "check_settings", "shared_stores"]


def shared_stores(settings: Settings) -> tuple[StatusStore, IdempotencyStore]:
    """The Redis stores the web processes and the workers share (one client)."""
    from ...stores.redis import RedisIdempotencyStore, RedisStatusStore, connect

    kombu_module()  # name the extra that brings both
    client = connect(settings)
    return (
        RedisStatusStore.from_settings(settings, client),
        RedisIdempotencyStore.from_settings(settings, client),
    )


def check_settings(settings: Settings) -> None:
    """Refuse settings with which a live attempt could lose its claim."""
    if settings.idempotency.lease < 3.0:
        raise ConfigurationError(
            "must be at least 3 seconds: the lease is renewed every third of it, and a "
            "worker that misses two renewals (a pause of a second) would lose its claim",
            key="idempotency.lease",
        )


class CeleryTransport(Transport):
    """Publishes each notification as a Celery task for workers elsewhere.

    Build it through settings (``transport = "celery"``); the Notifier then uses
    the Redis stores (:meth:`default_stores`) so statuses and idempotency keys
    are shared with the workers.

    Args:
        dispatcher: Used to record a notification as failed if the broker never
            confirms it; deliveries run in the workers.
        settings: The ``[celery]`` section.
    """

    name = "celery"

    def __init__(
        self, dispatcher: Dispatcher, *, settings: CelerySettings, routes: Routes | None = None
    ) -> None:
        super().__init__(dispatcher)
        self.settings = settings
        self.publisher = Publisher(settings, on_lost=self._unconfirmed, routes=routes)

    @classmethod
    def from_settings(cls, dispatcher: Dispatcher, settings: Settings) -> Self:
        kombu_module()
        check_settings(settings)
        return cls(dispatcher, settings=settings.celery, routes=Routes.from_settings(settings))

    @classmethod
    def default_stores(cls, settings: Settings) -> tuple[StatusStore, IdempotencyStore] | None:
        return shared_stores(settings)

    def submit(self, notification: Notification, *, delay: float | None = None) -> None:
        """Publish ``notification``; with ``delay`` (seconds), for delivery no sooner."""
        self.publisher.publish(notification, countdown=delay)

    def _unconfirmed(self, pending: _Pending, reason: str) -> None:
        current = self.dispatcher.status_store.get(pending.notification.id)
        if current is not None and current.state is not DeliveryState.QUEUED:
            return  # a worker has it (only the confirm was lost): its status stands
        self.dispatcher.abandon(pending.notification, f"not enqueued: {reason}")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the broker has confirmed every message sent so far."""
        return self.publisher.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Wait for outstanding confirms, then close the broker connections."""
        self.publisher.close(timeout)

    def __repr__(self) -> str:
        return f"<CeleryTransport queue={self.settings.queue!r}>"
