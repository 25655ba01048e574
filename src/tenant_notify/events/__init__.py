"""Domain events in, notification lifecycle events out.

* :mod:`~tenant_notify.events.envelope`: CloudEvents 1.0 (structured JSON) read and written.
* :mod:`~tenant_notify.events.schemas`: the registry of versioned JSON Schemas.
* :mod:`~tenant_notify.events.rules`: ``[[events.rules]]``, event types to notifications.
* :mod:`~tenant_notify.events.consumer`: ``tenant-notify events consume``.
* :mod:`~tenant_notify.events.hub`: ``Notifier.publish_event``.
* :mod:`~tenant_notify.events.publisher`: confirmed publishing to a topic exchange.

Optional dependencies (``pip install 'tenant-notify[events]'``) are imported
only when used. See ``docs/events.md``.
"""

from __future__ import annotations

from .consumer import DEAD_ERROR_HEADER, DEAD_REASON_HEADER, EventConsumer, Handled
from .envelope import TENANT_ATTRIBUTE, Event, dump_event, new_event, parse_event
from .hub import EventHub, PublishedEvent
from .rules import EventRules, PlannedSend, idempotency_key
from .schemas import EventSchema, SchemaRegistry, schema_from_model, write_schema

__all__ = [
    "DEAD_ERROR_HEADER",
    "DEAD_REASON_HEADER",
    "TENANT_ATTRIBUTE",
    "Event",
    "EventConsumer",
    "EventHub",
    "EventRules",
    "EventSchema",
    "Handled",
    "PlannedSend",
    "PublishedEvent",
    "SchemaRegistry",
    "dump_event",
    "idempotency_key",
    "new_event",
    "parse_event",
    "schema_from_model",
    "write_schema",
]
