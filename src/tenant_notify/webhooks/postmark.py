"""Postmark's webhooks: delivery, bounce and spam complaint events.

Postmark signs nothing; it authenticates its webhooks with HTTP basic auth
credentials written into the webhook URL (``https://user:password@shop.example/...``).
:func:`verify_postmark_auth` compares them, in constant time, with the ones the
host configured. Events are matched by the ``notification_id`` the Postmark
provider puts in ``Metadata`` (else by ``MessageID``).

======================================================  ============================
``RecordType`` (and bounce ``Type``)                    Status
======================================================  ============================
``Delivery``                                            delivered
``Bounce``: HardBounce, BadEmailAddress, Blocked,       bounced
ManuallyDeactivated, SpamNotification, DMARCPolicy,
Unconfirmed
``Bounce``: SoftBounce, Transient, DnsError, Unknown,   failed
SMTPApiError, TemplateRenderingFailed
``Bounce``: AutoResponder, AddressChange, ...;          (reported, ``state`` None)
``SpamComplaint``, ``Open``, ``Click``,
``SubscriptionChange``
======================================================  ============================

Given a Notifier, a ``HardBounce`` or ``BadEmailAddress`` suppresses the address (a
hard bounce), a ``SpamComplaint`` (or a ``SpamNotification`` bounce) too (a
complaint), a ``SubscriptionChange`` with ``SuppressSending`` unsubscribes (and
without, lifts the unsubscribe), and ``Open`` and ``Click`` (with
``OriginalLink``) are recorded as the notification's engagement
(:class:`~tenant_notify.webhooks.base.Feedback`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ..errors import WebhookPayloadError, WebhookVerificationError
from ..models import Channel, DeliveryState
from ..stores import StatusStore
from .base import (
    DeliveryEvent,
    Feedback,
    WebhookRequest,
    apply_event,
    check_body,
    find_header,
    iso_time,
    load_json,
    payload,
    reason_text,
)

if TYPE_CHECKING:
    from ..notifier import Notifier

__all__ = [
    "apply_postmark_event",
    "parse_postmark_event",
    "receive_postmark",
    "verify_postmark_auth",
]

_BOUNCED = frozenset(
    {"HardBounce", "BadEmailAddress", "Blocked", "ManuallyDeactivated", "SpamNotification",
     "DMARCPolicy", "Unconfirmed"}
)  # fmt: skip
_FAILED = frozenset(
    {"SoftBounce", "Transient", "DnsError", "Unknown", "SMTPApiError", "TemplateRenderingFailed"}
)
#: Bounce types that say the address is gone for good, or that its owner complained.
_HARD = frozenset({"HardBounce", "BadEmailAddress"})
_COMPLAINT = frozenset({"SpamNotification", "SpamComplaint"})


def _feedback(record: str, data: dict[str, Any]) -> Feedback | None:
    if record == "Bounce":
        kind = data.get("Type")
        if kind in _HARD:
            return Feedback.HARD_BOUNCE
        if kind in _COMPLAINT:
            return Feedback.COMPLAINT
        return Feedback.SOFT_BOUNCE if kind in _FAILED else None
    if record == "SpamComplaint":
        return Feedback.COMPLAINT
    if record == "SubscriptionChange":
        return Feedback.UNSUBSCRIBE if data.get("SuppressSending") else Feedback.RESUBSCRIBE
    return {"Open": Feedback.OPEN, "Click": Feedback.CLICK}.get(record)


def verify_postmark_auth(headers: Mapping[str, str], credentials: str | SecretStr) -> None:
    """Check the basic-auth credentials (``"user:password"``) of a Postmark webhook.

    Raises:
        WebhookVerificationError: missing or different credentials.
    """
    expected = credentials.get_secret_value() if isinstance(credentials, SecretStr) else credentials
    header = find_header(headers, "Authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise WebhookVerificationError(
            "the webhook has no basic-auth credentials (put them in the webhook URL)",
            provider="postmark",
        )
    try:
        given = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError(
            "the credentials are not base64", provider="postmark"
        ) from None
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        raise WebhookVerificationError("the credentials do not match", provider="postmark")


@payload("postmark")
def parse_postmark_event(body: bytes | str) -> DeliveryEvent:
    """The event of a Postmark webhook request.

    Raises:
        WebhookPayloadError: not a Postmark event.
    """
    data = load_json(body, "postmark")
    if not isinstance(data, dict) or not isinstance(data.get("RecordType"), str):
        raise WebhookPayloadError("the body is not a Postmark event", provider="postmark")
    record = data["RecordType"]
    state: DeliveryState | None = None
    reason = None
    event = record
    if record == "Delivery":
        state = DeliveryState.DELIVERED
    elif record == "Bounce":
        kind = data.get("Type")
        event = f"Bounce/{kind}"
        state = (
            DeliveryState.BOUNCED
            if kind in _BOUNCED
            else DeliveryState.FAILED
            if kind in _FAILED
            else None
        )
        reason = reason_text(data.get("Description") or data.get("Details") or kind)
    metadata: dict[str, Any] = data["Metadata"] if isinstance(data.get("Metadata"), dict) else {}
    notification_id = metadata.get("notification_id")
    tenant_id = metadata.get("tenant_id")
    message_id = data.get("MessageID")
    feedback = _feedback(record, data)
    address = data.get("Email") or data.get("Recipient")
    link = data.get("OriginalLink")
    return DeliveryEvent(
        provider="postmark",
        event=event,
        state=state,
        notification_id=notification_id if isinstance(notification_id, str) else None,
        provider_message_id=message_id if isinstance(message_id, str) and message_id else None,
        tenant_id=tenant_id if isinstance(tenant_id, str) else None,
        reason=reason if state is not DeliveryState.DELIVERED else None,
        occurred_at=iso_time(
            data.get("DeliveredAt")
            or data.get("BouncedAt")
            or data.get("ReceivedAt")
            or data.get("ChangedAt")
        ),
        recipients=(address,) if isinstance(address, str) and address else (),
        feedback=feedback,
        url=link if feedback is Feedback.CLICK and isinstance(link, str) else None,
        channel=Channel.EMAIL,
    )


def apply_postmark_event(
    notifier: Notifier | StatusStore,
    body: bytes,
    headers: Mapping[str, str],
    credentials: str | SecretStr,
    *,
    tenant_id: str | None = None,
) -> DeliveryEvent:
    """Verify a Postmark webhook request and apply its event.

    Args:
        notifier: The Notifier (or its status store).
        body: The raw request body.
        headers: The request headers (any case).
        credentials: ``"user:password"`` of the webhook URL.
        tenant_id: Apply only to this tenant's notifications.

    Raises:
        WebhookVerificationError: not provably from Postmark (nothing applied).
        WebhookPayloadError: authenticated, but not a Postmark event.
        WebhookBodyTooLargeError: over the size limit (nothing verified or applied).
    """
    check_body(body, "postmark")
    verify_postmark_auth(headers, credentials)
    return apply_event(notifier, parse_postmark_event(body), tenant_id=tenant_id)


def receive_postmark(
    notifier: Notifier | StatusStore,
    request: WebhookRequest,
    secret: str,
    *,
    tenant_id: str | None = None,
) -> list[DeliveryEvent]:
    """The router's entry: ``secret`` is the webhook's ``"user:password"``."""
    return [
        apply_postmark_event(notifier, request.body, request.headers, secret, tenant_id=tenant_id)
    ]
