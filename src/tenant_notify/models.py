"""The values that travel through the pipeline.

A :class:`Notification` is what the caller's side builds and a transport carries
(it holds ids, kind, recipient and context, never credentials or rendered text).
The delivery side renders it into a provider-neutral :class:`EmailMessage` or
:class:`SmsMessage`, a provider turns that into a :class:`DeliveryResult`, and the
status store keeps a :class:`DeliveryStatus` per notification id.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from .errors import InvalidContextError

__all__ = [
    "Address",
    "Channel",
    "DeliveryResult",
    "DeliveryState",
    "DeliveryStatus",
    "EmailMessage",
    "Notification",
    "Receipt",
    "SmsMessage",
]


class Channel(enum.StrEnum):
    """How a notification reaches its recipient."""

    EMAIL = "email"
    SMS = "sms"


class DeliveryState(enum.StrEnum):
    """Where a notification is in its life.

    ``queued -> sending -> sent``, with ``retrying`` between attempts and ``failed``
    when the last attempt (or a permanent error) ends it. A provider's delivery
    events (:mod:`tenant_notify.webhooks`) can move a notification on from
    ``sent`` to ``delivered`` (it reached the recipient), ``bounced`` (the
    recipient's side refused it) or ``failed`` (the provider gave up on it).
    """

    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """True for states a notification does not leave by itself."""
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    {DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.BOUNCED, DeliveryState.FAILED}
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_notification_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Address:
    """An email address with an optional display name."""

    email: str
    name: str = ""

    def __str__(self) -> str:
        from email.headerregistry import Address as _HeaderAddress

        if not self.name:
            return self.email
        return str(_HeaderAddress(display_name=self.name, addr_spec=self.email))


# --- the notification --------------------------------------------------------------

# Context values travel to workers as JSON; these tags carry the types JSON lacks.
_TAG = "__tn__"


def _encode_value(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidContextError("is not a finite number", field=path)
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidContextError("is not a finite number", field=path)
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidContextError("mapping keys must be strings", field=path)
            if key == _TAG:
                raise InvalidContextError(f"the key {_TAG!r} is reserved", field=path)
            encoded[key] = _encode_value(item, f"{path}.{key}")
        return encoded
    if isinstance(value, list | tuple):
        return [_encode_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise InvalidContextError(
        f"{type(value).__name__} cannot travel to a worker; use str, int, float, bool, "
        "Decimal, date, datetime, None, or lists and dicts of these",
        field=path,
    )


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        tag = value.get(_TAG)
        if tag == "decimal":
            return Decimal(value["v"])
        if tag == "datetime":
            return dt.datetime.fromisoformat(value["v"])
        if tag == "date":
            return dt.date.fromisoformat(value["v"])
        return {key: _decode_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_value(item) for item in value]
    return value


def encode_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``context`` as JSON-ready data, or raise :class:`InvalidContextError`."""
    return {key: _encode_value(value, key) for key, value in context.items()}


def decode_context(data: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_context`."""
    return {key: _decode_value(value) for key, value in data.items()}


@dataclass(frozen=True, slots=True)
class Notification:
    """One request to notify one recipient, as built on the caller's side.

    It holds what a worker needs to render and deliver (ids, kind, channel,
    recipient, context) and nothing secret. ``context`` keeps its JSON-ready
    encoding (see :meth:`to_dict`), so it is the same on every transport.

    Attributes:
        id: Unique id; also the status key (and, on Celery, the task id).
        tenant_id: Whose identity, provider and templates to use.
        kind: Template kind (``"order_confirmation"``, or a host-defined one).
        channel: ``email`` or ``sms``.
        to: Normalised recipient: an email address or an E.164 number.
        context: Template fields, JSON-ready (see :func:`encode_context`).
        idempotency_key: The caller's key, scoped to the tenant, if any.
        locale: Overrides the tenant's locale for this send, if set.
        created_at: When the caller sent it (UTC).
    """

    id: str
    tenant_id: str
    kind: str
    channel: Channel
    to: str
    context: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    locale: str | None = None
    created_at: dt.datetime = field(default_factory=utcnow)

    def template_context(self) -> dict[str, Any]:
        """The context as templates see it (Decimals and dates restored)."""
        return decode_context(self.context)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, for brokers and stores."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "channel": self.channel.value,
            "to": self.to,
            "context": dict(self.context),
            "idempotency_key": self.idempotency_key,
            "locale": self.locale,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=data["id"],
            tenant_id=data["tenant_id"],
            kind=data["kind"],
            channel=Channel(data["channel"]),
            to=data["to"],
            context=dict(data.get("context") or {}),
            idempotency_key=data.get("idempotency_key"),
            locale=data.get("locale"),
            created_at=dt.datetime.fromisoformat(data["created_at"]),
        )


# --- provider-neutral messages -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailMessage:
    """A rendered email, ready for any email provider.

    Attributes:
        from_addr: Sender, with the tenant's display name.
        to: Recipients.
        subject: One line, already checked for header injection.
        text: The text/plain part.
        html: The text/html part, or None for a text-only email.
        reply_to: Reply-To address, if the tenant has one.
        headers: Extra headers (already checked).
        notification_id, tenant_id, kind: Where the message came from.
    """

    from_addr: Address
    to: tuple[Address, ...]
    subject: str
    text: str
    html: str | None = None
    reply_to: Address | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    notification_id: str = ""
    tenant_id: str = ""
    kind: str = ""

    channel = Channel.EMAIL


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """A rendered SMS, ready for any SMS provider."""

    from_number: str
    to: str
    body: str
    notification_id: str = ""
    tenant_id: str = ""
    kind: str = ""

    channel = Channel.SMS


Message = EmailMessage | SmsMessage


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a provider reports for a message it accepted.

    Attributes:
        provider: Provider name (``"smtp"``).
        provider_message_id: The provider's id for the message (Message-ID, sid, ...).
        accepted_at: When the provider accepted it (UTC).
        detail: Free-form extra facts (file path, SMTP reply), never secrets.
    """

    provider: str
    provider_message_id: str | None = None
    accepted_at: dt.datetime = field(default_factory=utcnow)
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """The status of one notification, as the status store records it.

    Attributes:
        id: The notification id.
        tenant_id, kind, channel: What it was.
        state: queued | sending | retrying | sent | failed, then (from the
            provider's delivery events) delivered | bounced | failed.
        attempts: How many delivery attempts have started.
        provider: The provider that handled the last attempt (after a failover, the
            fallback that took the message; after a failure, the one whose error is shown).
        provider_message_id: The provider's id once sent.
        error: Why the last attempt failed (never secrets), or None.
        error_type: The library error class name of ``error``, or None.
        created_at, updated_at: Timestamps (UTC).
        next_attempt_at: When a retry is due, while ``retrying``.
    """

    id: str
    tenant_id: str
    kind: str
    channel: Channel
    state: DeliveryState = DeliveryState.QUEUED
    attempts: int = 0
    provider: str | None = None
    provider_message_id: str | None = None
    error: str | None = None
    error_type: str | None = None
    created_at: dt.datetime = field(default_factory=utcnow)
    updated_at: dt.datetime = field(default_factory=utcnow)
    next_attempt_at: dt.datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def evolve(self, **changes: Any) -> DeliveryStatus:
        """A copy with ``changes`` applied and ``updated_at`` set to now."""
        changes.setdefault("updated_at", utcnow())
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "channel": self.channel.value,
            "state": self.state.value,
            "attempts": self.attempts,
            "provider": self.provider,
            "provider_message_id": self.provider_message_id,
            "error": self.error,
            "error_type": self.error_type,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeliveryStatus:
        next_at = data.get("next_attempt_at")
        return cls(
            id=data["id"],
            tenant_id=data["tenant_id"],
            kind=data["kind"],
            channel=Channel(data["channel"]),
            state=DeliveryState(data["state"]),
            attempts=int(data["attempts"]),
            provider=data.get("provider"),
            provider_message_id=data.get("provider_message_id"),
            error=data.get("error"),
            error_type=data.get("error_type"),
            created_at=dt.datetime.fromisoformat(data["created_at"]),
            updated_at=dt.datetime.fromisoformat(data["updated_at"]),
            next_attempt_at=dt.datetime.fromisoformat(next_at) if next_at else None,
        )

    @classmethod
    def queued(cls, notification: Notification) -> DeliveryStatus:
        """The first status of a freshly submitted notification."""
        return cls(
            id=notification.id,
            tenant_id=notification.tenant_id,
            kind=notification.kind,
            channel=notification.channel,
            created_at=notification.created_at,
            updated_at=utcnow(),
        )


class Receipt:
    """What every send returns: the notification id, and a way to follow it.

    Attributes:
        id: The notification id (pass it to ``Notifier.status``).
        tenant_id: The tenant it was sent for.
        kind: Its kind.
        duplicate: True when the idempotency key had been used before and this
            receipt points at the earlier notification instead of a new one.
    """

    __slots__ = ("_get_status", "_wait", "duplicate", "id", "kind", "tenant_id")

    def __init__(
        self,
        id: str,
        *,
        tenant_id: str,
        kind: str,
        duplicate: bool = False,
        get_status: Callable[[str], DeliveryStatus],
        wait: Callable[[str, float | None], DeliveryStatus],
    ) -> None:
        self.id = id
        self.tenant_id = tenant_id
        self.kind = kind
        self.duplicate = duplicate
        self._get_status = get_status
        self._wait = wait

    def status(self) -> DeliveryStatus:
        """The current status of the notification."""
        return self._get_status(self.id)

    def wait(self, timeout: float | None = 30.0) -> DeliveryStatus:
        """Block until the notification is sent or failed and return its status.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
        """
        return self._wait(self.id, timeout)

    def __repr__(self) -> str:
        dup = ", duplicate=True" if self.duplicate else ""
        return f"Receipt(id={self.id!r}, tenant_id={self.tenant_id!r}, kind={self.kind!r}{dup})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Receipt) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)
