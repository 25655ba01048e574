"""CloudEvents 1.0 in structured JSON mode: reading what host services publish, writing our own.

The attributes are checked by the ``cloudevents`` package's own v1.0 event class
(extra ``tenant-notify[events]``). The JSON is read here, not by the package's
reader, for two reasons: numbers with a fraction become :class:`~decimal.Decimal`
(an order total must not pass through a binary float), and a missing ``id`` is
an error (the package's constructor would make one up, and the id is what makes
a redelivered event send nothing).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import InvalidEventError, MissingDependencyError, ValidationError

__all__ = ["TENANT_ATTRIBUTE", "Event", "dump_event", "new_event", "parse_event"]

#: The CloudEvents extension attribute that names the tenant.
TENANT_ATTRIBUTE = "tenantid"
CONTENT_TYPE = "application/cloudevents+json"
_REQUIRED = ("specversion", "id", "source", "type")
#: Events larger than this are refused unread.
MAX_EVENT_BYTES = 1024 * 1024


def _cloudevent_class() -> Any:
    try:
        from cloudevents.core.v1.event import CloudEvent
    except ModuleNotFoundError as err:
        raise MissingDependencyError("cloudevents", "events", key="events") from err
    return CloudEvent


@dataclass(frozen=True, slots=True)
class Event:
    """One CloudEvent, checked against the v1.0 attribute rules.

    Attributes:
        id: The producer's id; with ``source`` it identifies the event.
        source: Who produced it (a URI reference).
        type: What happened (``com.example.order.created``).
        tenant_id: The ``tenantid`` extension attribute, or None.
        data: The payload (JSON; fractions as Decimal).
        attributes: Every attribute, ``time`` as an aware datetime.
    """

    id: str
    source: str
    type: str
    tenant_id: str | None
    data: Any
    attributes: Mapping[str, Any] = field(repr=False)

    @property
    def dataschema(self) -> str | None:
        value = self.attributes.get("dataschema")
        return value if isinstance(value, str) else None

    def as_tree(self) -> dict[str, Any]:
        """The event as rules' paths see it: the attributes and ``data``."""
        tree = dict(self.attributes)
        tree["data"] = self.data
        return tree


def _check_attributes(attributes: dict[str, Any], data: Any) -> None:
    from cloudevents.core.exceptions import CloudEventValidationError

    try:
        _cloudevent_class()(attributes, data)
    except CloudEventValidationError as err:
        problems = "; ".join(
            f"{name}: {problem}" for name, found in err.errors.items() for problem in found
        )
        raise InvalidEventError(
            f"not a CloudEvent 1.0: {problems}",
            reason="invalid",
            event_type=_text(attributes.get("type")),
            event_id=_text(attributes.get("id")),
        ) from None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_event(body: bytes | str) -> Event:
    """Read a structured-mode CloudEvents JSON message.

    Raises:
        InvalidEventError: not JSON, not an object, a required attribute
            missing, an attribute the v1.0 spec refuses, or binary data
            (``data_base64``: rules need JSON to point into).
    """
    if len(body) > MAX_EVENT_BYTES:
        raise InvalidEventError(f"larger than {MAX_EVENT_BYTES} bytes", reason="invalid")
    try:
        raw = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidEventError(f"not JSON: {err}", reason="invalid") from None
    if not isinstance(raw, dict):
        raise InvalidEventError("not a JSON object", reason="invalid")
    event_type, event_id = _text(raw.get("type")), _text(raw.get("id"))
    missing = [name for name in _REQUIRED if name not in raw]
    if missing:
        raise InvalidEventError(
            f"not a CloudEvent: {', '.join(missing)} missing",
            reason="invalid",
            event_type=event_type,
            event_id=event_id,
        )
    if "data_base64" in raw:
        raise InvalidEventError(
            "binary data (data_base64): rules need JSON data",
            reason="invalid",
            event_type=event_type,
            event_id=event_id,
        )
    data = raw.pop("data", None)
    if isinstance(raw.get("time"), str):
        try:
            raw["time"] = dt.datetime.fromisoformat(raw["time"])
        except ValueError:
            raise InvalidEventError(
                "time: not an RFC 3339 timestamp",
                reason="invalid",
                event_type=event_type,
                event_id=event_id,
            ) from None
    _check_attributes(raw, data)
    tenant = raw.get(TENANT_ATTRIBUTE)
    return Event(
        id=raw["id"],
        source=raw["source"],
        type=raw["type"],
        tenant_id=str(tenant) if tenant is not None else None,
        data=data,
        attributes=raw,
    )


def new_event(
    type: str,
    data: Any,
    *,
    source: str,
    tenant_id: str,
    id: str | None = None,
    subject: str | None = None,
    time: dt.datetime | None = None,
    dataschema: str | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Event:
    """Build a CloudEvent to publish (``id`` defaults to a random UUID).

    Raises:
        InvalidEventError: an attribute the v1.0 spec refuses.
    """
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": id or str(uuid.uuid4()),
        "source": source,
        "type": type,
        "time": time or dt.datetime.now(dt.UTC),
        "datacontenttype": "application/json",
        TENANT_ATTRIBUTE: tenant_id,
    }
    if subject is not None:
        attributes["subject"] = subject
    if dataschema is not None:
        attributes["dataschema"] = dataschema
    for name, value in (extensions or {}).items():
        if name in attributes:
            raise InvalidEventError(f"{name!r} is not an extension attribute", reason="invalid")
        attributes[name] = value
    _check_attributes(attributes, data)
    return Event(
        id=attributes["id"],
        source=source,
        type=type,
        tenant_id=tenant_id,
        data=data,
        attributes=attributes,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        text = value.isoformat()
        return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        # JSON has one number type; a Decimal goes out as the shortest float text
        # that reads back as the same value, and one that has none is refused.
        number = float(value)
        if not value.is_finite() or Decimal(repr(number)) != value:
            raise ValidationError(f"{value} cannot be written as a JSON number exactly")
        return number
    if isinstance(value, uuid.UUID):
        return str(value)
    raise ValidationError(f"{type(value).__name__} is not JSON data")


def dump_event(event: Event) -> bytes:
    """The event as structured-mode JSON (``application/cloudevents+json``)."""
    tree = dict(event.attributes)
    if event.data is not None:
        tree["data"] = event.data
    return json.dumps(tree, default=_json_default, separators=(",", ":")).encode("utf-8")
