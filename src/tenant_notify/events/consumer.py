"""The event consumer: CloudEvents from a RabbitMQ topic exchange to notifications.

``tenant-notify events consume`` runs :meth:`EventConsumer.run`. It declares the
``[events] exchange`` (topic, durable), the ``queue`` (durable) bound to it with
``routing_keys`` (default: the rules' types) and the ``dead_letter_queue``, then
for every message:

1. reads it as a structured-mode CloudEvent and validates its data against the
   schema of its type (:mod:`tenant_notify.events.schemas`);
2. applies the rules (:class:`~tenant_notify.events.rules.EventRules`): every
   path is resolved and the tenant looked up before the first send, and each
   send carries an idempotency key derived from the event's source and id;
3. acknowledges the message once every notification is queued.

An event that can never be sent (not a CloudEvent, fails its schema, no rule
for its type, unknown tenant, a recipient the Notifier refuses) is published to
the dead-letter queue with the reason in the ``x-tenant-notify-reason`` header
and the error, recipients masked, in ``x-tenant-notify-error``; it is
acknowledged once the broker has confirmed the dead letter. A transport or
store that is down (:class:`~tenant_notify.errors.EnqueueError`) puts the event
back on the queue and the consumer waits before the next one. A redelivered
event (the consumer was killed before its acknowledgement) or one published
twice sends nothing new: the Notifier returns the first receipts.

Needs ``pip install 'tenant-notify[events]'`` (kombu, cloudevents, jsonschema).
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import EventsSettings, Settings
from ..errors import (
    ConfigurationError,
    EnqueueError,
    EventError,
    MissingDependencyError,
    NotifyError,
    UnknownTenantError,
    ValidationError,
)
from ..log import get_logger
from ._mask import mask_text as _mask_text
from .envelope import Event, parse_event
from .rules import EventRules

if TYPE_CHECKING:
    from ..notifier import Notifier

__all__ = [
    "DEAD_ERROR_HEADER",
    "DEAD_REASON_HEADER",
    "ConsumerStats",
    "EventConsumer",
    "Handled",
    "broker_url",
]

#: Header of a dead-lettered event: the reason code (``invalid``, ``schema``,
#: ``path``, ``unmapped``, ``unknown_tenant``, ``rejected``, ``crashed``).
DEAD_REASON_HEADER = "x-tenant-notify-reason"
#: Header of a dead-lettered event: what went wrong, recipients masked.
DEAD_ERROR_HEADER = "x-tenant-notify-error"
_DEAD_AT_HEADER = "x-tenant-notify-dead-at"
_DEAD_ROUTING_KEY_HEADER = "x-tenant-notify-routing-key"
_DEAD_EXCHANGE_HEADER = "x-tenant-notify-exchange"


def _kombu() -> Any:
    try:
        import kombu
    except ModuleNotFoundError as err:
        raise MissingDependencyError("kombu", "events", key="events.broker_url") from err
    return kombu


def broker_url(settings: Settings) -> str:
    """``[events] broker_url``, else ``[celery] broker_url``."""
    return settings.events.broker_url or settings.celery.broker_url


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one event.

    Attributes:
        action: ``ack`` (its notifications are queued), ``dead`` (dead-letter
            it) or ``retry`` (put it back: the transport did not take a send).
        reason: The dead-letter reason code, or None.
        error: What went wrong, recipients masked, or None.
        notifications: Receipts of the notifications queued (``ack``).
        duplicates: How many of them an earlier delivery had queued already.
    """

    action: str
    reason: str | None = None
    error: str | None = None
    notifications: int = 0
    duplicates: int = 0


@dataclass(slots=True)
class ConsumerStats:
    """Counts since :meth:`EventConsumer.run` started."""

    received: int = 0
    acked: int = 0
    notifications: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    requeued: int = 0


class EventConsumer:
    """Consumes domain events and sends what the rules say through a Notifier.

    Args:
        notifier: Sends the notifications (any transport; with ``celery`` the
            idempotency keys live in Redis, so they hold across consumers).
        settings: The ``[events]`` settings; default ``notifier.settings.events``.
        rules: Compiled rules; default built from ``settings``.
        url: Broker URL; default :func:`broker_url`.

    Raises:
        ConfigurationError: bad rules or schemas (naming the key).
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        settings: EventsSettings | None = None,
        rules: EventRules | None = None,
        url: str | None = None,
    ) -> None:
        self.notifier = notifier
        self.settings = settings or notifier.settings.events
        self.rules = rules or EventRules.from_settings(self.settings)
        self.url = url or self.settings.broker_url or notifier.settings.celery.broker_url
        self.stats = ConsumerStats()
        self._log = get_logger()
        self._stop = threading.Event()
        self.routing_keys = tuple(self.settings.routing_keys or self.rules.types)
        if not self.routing_keys:
            raise ConfigurationError(
                "no rules and no routing_keys: the queue would receive nothing",
                key="events.rules",
            )

    # --- one event (no broker) -------------------------------------------------------

    def handle(self, body: bytes | str) -> Handled:
        """Apply the rules to one message body; say what to do with the message."""
        event: Event | None = None
        try:
            event = parse_event(body)
            receipts = self.rules.apply(self.notifier, event)
        except EnqueueError as err:
            return Handled("retry", error=_mask_text(str(err), event))
        except EventError as err:
            return Handled("dead", reason=err.reason, error=_mask_text(str(err), event))
        except UnknownTenantError as err:
            return Handled("dead", reason="unknown_tenant", error=_mask_text(str(err), event))
        except (ValidationError, NotifyError) as err:
            # The Notifier refused a send (a recipient, a template kind the
            # tenant lacks): sending it again would be refused again.
            return Handled(
                "dead", reason="rejected", error=_mask_text(f"{type(err).__name__}: {err}", event)
            )
        except Exception as err:
            # A bug (a resolver, a template loader): keep the event for a replay
            # rather than lose it or redeliver it for ever.
            self._log.exception("event_crashed", event_type=event.type if event else None)
            return Handled(
                "dead", reason="crashed", error=_mask_text(f"{type(err).__name__}: {err}", event)
            )
        duplicates = sum(1 for receipt in receipts if receipt.duplicate)
        self._log.info(
            "event_applied",
            event_type=event.type,
            event_id=event.id,
            tenant_id=event.tenant_id,
            notifications=len(receipts),
            duplicates=duplicates,
        )
        return Handled("ack", notifications=len(receipts), duplicates=duplicates)

    # --- the broker ------------------------------------------------------------------

    def declare(self, channel: Any) -> Any:
        """Declare the exchange, the queue with its bindings and the dead-letter
        queue on ``channel``; return the queue."""
        kombu = _kombu()
        exchange = kombu.Exchange(self.settings.exchange, type="topic", durable=True)
        queue = kombu.Queue(
            self.settings.queue,
            exchange=exchange,
            bindings=[kombu.binding(exchange, routing_key=key) for key in self.routing_keys],
            durable=True,
        )
        queue(channel).declare()
        kombu.Queue(self.settings.dead_letter_queue, durable=True)(channel).declare()
        return queue

    def stop(self) -> None:
        """Ask :meth:`run` to return after the message in hand."""
        self._stop.set()

    def run(
        self,
        *,
        max_events: int | None = None,
        idle_timeout: float | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> ConsumerStats:
        """Consume until :meth:`stop` (or SIGTERM in the CLI), ``max_events``
        events, or ``idle_timeout`` seconds without one. Reconnects, with
        backoff, when the broker goes away; unacknowledged events are then
        redelivered (and send nothing twice).

        Args:
            max_events: Return after this many events.
            idle_timeout: Return after this many seconds without an event.
            on_ready: Called once the queue is declared and consumed.
        """
        kombu = _kombu()
        broken: tuple[type[BaseException], ...] = (OSError, *_connection_errors())
        delay = 0.5
        while not self._stop.is_set():
            try:
                with kombu.Connection(
                    self.url,
                    connect_timeout=self.notifier.settings.celery.connect_timeout,
                    transport_options={"confirm_publish": True},
                ) as conn:
                    conn.ensure_connection(max_retries=1)
                    done = self._consume(conn, max_events, idle_timeout, on_ready)
                    on_ready = None
                    delay = 0.5
                    if done:
                        break
            except broken as err:
                self._log.warning(
                    "event_broker_unavailable",
                    error=f"{type(err).__name__}: {err}",
                    retry_in=delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
        return self.stats

    def _consume(
        self,
        conn: Any,
        max_events: int | None,
        idle_timeout: float | None,
        on_ready: Callable[[], None] | None,
    ) -> bool:
        kombu = _kombu()
        channel = conn.channel()
        queue = self.declare(channel)
        producer = kombu.Producer(conn.channel())
        inbox: collections.deque[Any] = collections.deque()
        # Messages are only collected in the callback: handling one publishes
        # (a dead letter, a Celery task) and waits for confirms, which reads
        # the connection and would run this callback again, nested.
        consumer = kombu.Consumer(
            channel, queues=[queue], on_message=inbox.append, prefetch_count=self.settings.prefetch
        )
        with consumer:
            if on_ready is not None:
                on_ready()
            last_event = time.monotonic()
            while not self._stop.is_set():
                if not inbox:
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        idle = time.monotonic() - last_event
                        if idle_timeout is not None and idle > idle_timeout:
                            return True
                        continue
                backoff = False
                while inbox and not self._stop.is_set():
                    message = inbox.popleft()
                    backoff |= self._settle(message, producer)
                    last_event = time.monotonic()
                    if max_events is not None and self.stats.received >= max_events:
                        return True
                if backoff:
                    self._stop.wait(1.0)
        return self._stop.is_set()

    def _settle(self, message: Any, producer: Any) -> bool:
        """Handle one message and ack, dead-letter or requeue it; True to back off."""
        self.stats.received += 1
        handled = self.handle(message.body)
        if handled.action == "ack":
            message.ack()
            self.stats.acked += 1
            self.stats.notifications += handled.notifications
            self.stats.duplicates += handled.duplicates
            return False
        if handled.action == "retry":
            self._log.warning("event_requeued", error=handled.error)
            message.requeue()
            self.stats.requeued += 1
            return True
        self._dead_letter(message, producer, handled)
        message.ack()
        self.stats.dead_lettered += 1
        return False

    def _dead_letter(self, message: Any, producer: Any, handled: Handled) -> None:
        delivery = message.delivery_info or {}
        headers = dict(message.headers or {})
        headers.update(
            {
                DEAD_REASON_HEADER: handled.reason,
                DEAD_ERROR_HEADER: (handled.error or "")[:1000],
                _DEAD_AT_HEADER: dt.datetime.now(dt.UTC).isoformat(),
                _DEAD_ROUTING_KEY_HEADER: delivery.get("routing_key", ""),
                _DEAD_EXCHANGE_HEADER: delivery.get("exchange", ""),
            }
        )
        producer.publish(
            message.body,
            exchange="",
            routing_key=self.settings.dead_letter_queue,
            headers=headers,
            content_type=message.content_type or "application/cloudevents+json",
            content_encoding=message.content_encoding or "utf-8",
            delivery_mode=2,
        )
        self._log.warning(
            "event_dead_lettered",
            reason=handled.reason,
            error=handled.error,
            queue=self.settings.dead_letter_queue,
        )

    def __repr__(self) -> str:
        return f"<EventConsumer queue={self.settings.queue!r} keys={list(self.routing_keys)!r}>"


def _connection_errors() -> tuple[type[BaseException], ...]:
    import amqp.exceptions
    import kombu.exceptions

    return (amqp.exceptions.ConnectionError, kombu.exceptions.OperationalError, ConnectionError)
