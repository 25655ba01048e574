"""``Notifier.publish_event``: a confirmed publish, or the rules applied in process.

On the ``celery`` transport (or with ``[events] local = false``) an event is
published to ``[events] exchange`` with its type as routing key, and
``publish_event`` returns once the broker has confirmed it; a consumer
(``tenant-notify events consume``) applies the rules. On the embedded default
(``inprocess`` or ``eager``, or ``local = true``) there is no broker: the same
rules are applied at once, in this process, to the same JSON a consumer would
read, and the notifications' receipts are returned.

Either way the event is checked first, in the caller: its attributes against
CloudEvents 1.0, its data against its schema (when ``schemas_dir`` is set), its
tenant against the tenant resolver. A bad event raises before anything is
published or queued.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..models import Receipt
from .envelope import Event, dump_event, new_event, parse_event
from .rules import EventRules

if TYPE_CHECKING:
    from ..notifier import Notifier
    from .publisher import EventPublisher

__all__ = ["EventHub", "PublishedEvent"]


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """What ``publish_event`` returns.

    Attributes:
        id: The event id (give it yourself to publish the same event again
            safely: it sends once).
        source: The event source.
        type: The event type.
        tenant_id: Its tenant.
        published: True when it went to the broker, False when applied in process.
        receipts: In process: one receipt per rule that matched (empty when no
            rule maps the type). Published: empty (a consumer sends them).
    """

    id: str
    source: str
    type: str
    tenant_id: str
    published: bool
    receipts: tuple[Receipt, ...] = ()


class EventHub:
    """A Notifier's domain-event side: its compiled rules and (lazily) a publisher.

    Args:
        settings: The Notifier's settings.

    Raises:
        ConfigurationError: bad rules or schemas, when the Notifier is built.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.events
        self.rules = EventRules.from_settings(settings.events)
        local = settings.events.local
        self.local = local if local is not None else settings.transport.backend != "celery"
        self._url = settings.events.broker_url or settings.celery.broker_url
        self._publisher: EventPublisher | None = None

    def publish(
        self,
        notifier: Notifier,
        type: str,
        data: Any,
        *,
        tenant_id: str,
        source: str | None = None,
        id: str | None = None,
        subject: str | None = None,
        time: dt.datetime | None = None,
        dataschema: str | None = None,
    ) -> PublishedEvent:
        """See :meth:`Notifier.publish_event <tenant_notify.notifier.Notifier.publish_event>`."""
        built = new_event(
            type,
            data,
            source=source or self.settings.source,
            tenant_id=tenant_id,
            id=id,
            subject=subject,
            time=time,
            dataschema=dataschema,
        )
        body = dump_event(built)
        # What a consumer would read, so both ways see the same values.
        event = parse_event(body)
        if self.local and self.rules.rules_for(type):
            receipts = self.rules.apply(notifier, event)  # validates, checks the tenant
            return self._result(event, published=False, receipts=tuple(receipts))
        registry = self.rules.registry
        if registry is not None and type in registry:
            registry.validate(event)
        notifier.tenants.get(tenant_id)
        if self.local:
            return self._result(event, published=False)
        self.publisher().publish(body, routing_key=type, message_id=event.id)
        return self._result(event, published=True)

    @staticmethod
    def _result(
        event: Event, *, published: bool, receipts: tuple[Receipt, ...] = ()
    ) -> PublishedEvent:
        assert event.tenant_id is not None
        return PublishedEvent(
            id=event.id,
            source=event.source,
            type=event.type,
            tenant_id=event.tenant_id,
            published=published,
            receipts=receipts,
        )

    def publisher(self) -> EventPublisher:
        """The confirmed publisher to ``[events] exchange`` (connected on first use)."""
        if self._publisher is None:
            from .publisher import EventPublisher

            self._publisher = EventPublisher(
                self._url, self.settings.exchange, timeout=self.settings.publish_timeout
            )
        return self._publisher

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()

    def __repr__(self) -> str:
        return f"<EventHub local={self.local} types={self.rules.types!r}>"
