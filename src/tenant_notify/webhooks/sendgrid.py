"""SendGrid's signed Event Webhook: ECDSA P-256 over timestamp + body.

Events are matched by the ``notification_id`` the SendGrid provider puts in
``custom_args``. Needs ``pip install 'tenant-notify[webhooks]'`` (cryptography).

Besides the status (``delivered``, ``bounce``, ``dropped``), events carry
:class:`~tenant_notify.webhooks.base.Feedback`: a ``bounce`` is a hard bounce
(``type: blocked`` a soft one), ``spamreport`` a complaint, ``unsubscribe`` and
``group_unsubscribe`` unsubscribes, ``group_resubscribe`` lifts one, a ``dropped``
for a "Bounced/Spam Reporting/Unsubscribed Address" repeats SendGrid's own
verdict, ``open`` and ``click`` (with its ``url``) are engagement.
"""

from __future__ import annotations

import base64
import binascii
import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ..errors import WebhookPayloadError, WebhookVerificationError
from ..models import Channel, DeliveryState
from ..stores import StatusStore
from .base import (
    DEFAULT_TOLERANCE,
    DeliveryEvent,
    Feedback,
    WebhookRequest,
    apply_event,
    check_body,
    crypto,
    epoch,
    find_header,
    load_json,
    payload,
    reason_text,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

    from ..notifier import Notifier

__all__ = [
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "apply_sendgrid_events",
    "parse_sendgrid_events",
    "receive_sendgrid",
    "verify_sendgrid_signature",
]

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

_SENDGRID_STATES = {
    "delivered": DeliveryState.DELIVERED,
    "bounce": DeliveryState.BOUNCED,
    "dropped": DeliveryState.FAILED,
}
_SENDGRID_FEEDBACK = {
    "spamreport": Feedback.COMPLAINT,
    "unsubscribe": Feedback.UNSUBSCRIBE,
    "group_unsubscribe": Feedback.UNSUBSCRIBE,
    "group_resubscribe": Feedback.RESUBSCRIBE,
    "open": Feedback.OPEN,
    "click": Feedback.CLICK,
}
#: A drop because SendGrid's own list has the address: the same verdict, ours too.
_DROPPED_FEEDBACK = {
    "bounced address": Feedback.HARD_BOUNCE,
    "spam reporting address": Feedback.COMPLAINT,
    "unsubscribed address": Feedback.UNSUBSCRIBE,
}


def _feedback(name: str, item: dict[str, object]) -> Feedback | None:
    if name == "bounce":
        # "blocked" is the receiving side refusing us for now (reputation, content),
        # not a mailbox that does not exist.
        return Feedback.SOFT_BOUNCE if item.get("type") == "blocked" else Feedback.HARD_BOUNCE
    if name == "dropped":
        return _DROPPED_FEEDBACK.get(str(item.get("reason") or "").strip().lower())
    return _SENDGRID_FEEDBACK.get(name)


@functools.lru_cache(maxsize=64)
def _load_public_key(text: str) -> EllipticCurvePublicKey:
    _, _, serialization, ec = crypto()
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, binascii.Error, UnicodeEncodeError) as err:
        raise WebhookVerificationError(
            "the SendGrid verification key is not a base64 DER or PEM public key",
            provider="sendgrid",
        ) from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise WebhookVerificationError(
            "the SendGrid verification key is not an elliptic-curve key", provider="sendgrid"
        )
    return key  # type: ignore[no-any-return]


def verify_sendgrid_signature(
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    public_key: str | bytes | SecretStr | EllipticCurvePublicKey,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check a request of SendGrid's signed Event Webhook.

    Args:
        body: The raw request body, byte for byte as received (not re-serialised).
        signature: The ``X-Twilio-Email-Event-Webhook-Signature`` header (base64
            of an ECDSA signature).
        timestamp: The ``X-Twilio-Email-Event-Webhook-Timestamp`` header (epoch seconds).
        public_key: The verification key SendGrid shows for the webhook: base64
            DER (as shown), PEM, or a loaded key.
        tolerance: Seconds the timestamp may be off from now, either way.
        now: The current time (epoch seconds), for tests.

    Raises:
        WebhookVerificationError: missing headers, a stale timestamp, or a
            signature that does not verify.
        MissingDependencyError: ``cryptography`` is not installed (extra ``webhooks``).
    """
    exceptions, hashes, _, ec = crypto()
    if not signature or not timestamp:
        raise WebhookVerificationError(
            f"the {SENDGRID_SIGNATURE_HEADER} and {SENDGRID_TIMESTAMP_HEADER} headers are "
            "required (is the Signed Event Webhook turned on?)",
            provider="sendgrid",
        )
    try:
        sent_at = int(timestamp.strip())
    except ValueError:
        raise WebhookVerificationError(
            "the webhook timestamp is not a number", provider="sendgrid"
        ) from None
    now = time.time() if now is None else now
    if abs(now - sent_at) > tolerance:
        raise WebhookVerificationError(
            f"the webhook timestamp is {round(now - sent_at)}s off (tolerance {tolerance}s): "
            "a replay, or a clock that is wrong",
            provider="sendgrid",
        )
    if isinstance(public_key, SecretStr):
        public_key = public_key.get_secret_value()
    if isinstance(public_key, bytes):
        public_key = public_key.decode("ascii", errors="replace")
    key = _load_public_key(public_key) if isinstance(public_key, str) else public_key
    try:
        raw_signature = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError(
            "the webhook signature is not base64", provider="sendgrid"
        ) from None
    try:
        key.verify(raw_signature, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (exceptions.InvalidSignature, ValueError):
        raise WebhookVerificationError(
            "the webhook signature does not match the body", provider="sendgrid"
        ) from None


@payload("sendgrid")
def parse_sendgrid_events(body: bytes | str) -> list[DeliveryEvent]:
    """Parse the JSON array a SendGrid Event Webhook request carries.

    Raises:
        WebhookPayloadError: the body is not a JSON array of event objects.
    """
    data = load_json(body, "sendgrid")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise WebhookPayloadError("the body is not a list of event objects", provider="sendgrid")
    events = []
    for item in data:
        name = item.get("event")
        if not isinstance(name, str):
            raise WebhookPayloadError("an event has no 'event' name", provider="sendgrid")
        reason = reason_text(item.get("reason") or item.get("response"))
        if name == "bounce" and item.get("type") == "blocked":
            reason = f"blocked: {reason}" if reason else "blocked"
        notification_id = item.get("notification_id")
        tenant_id = item.get("tenant_id")
        # sg_message_id is the X-Message-Id of the send, then ".filter..." per recipient.
        message_id = item.get("sg_message_id")
        if isinstance(message_id, str):
            message_id = message_id.partition(".")[0] or None
        feedback = _feedback(name, item)
        recipient, url = item.get("email"), item.get("url")
        events.append(
            DeliveryEvent(
                provider="sendgrid",
                event=name,
                state=_SENDGRID_STATES.get(name),
                notification_id=notification_id if isinstance(notification_id, str) else None,
                provider_message_id=message_id if isinstance(message_id, str) else None,
                tenant_id=tenant_id if isinstance(tenant_id, str) else None,
                reason=reason if name in _SENDGRID_STATES and name != "delivered" else None,
                occurred_at=epoch(item.get("timestamp")),
                recipients=(recipient,) if isinstance(recipient, str) else (),
                feedback=feedback,
                url=url if feedback is Feedback.CLICK and isinstance(url, str) else None,
                channel=Channel.EMAIL,
            )
        )
    return events


def apply_sendgrid_events(
    notifier: Notifier | StatusStore,
    body: bytes,
    headers: Mapping[str, str],
    public_key: str | bytes | SecretStr | EllipticCurvePublicKey,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    tenant_id: str | None = None,
    now: float | None = None,
) -> list[DeliveryEvent]:
    """Verify a SendGrid Event Webhook request and apply its events.

    Args:
        notifier: The Notifier (or its status store).
        body: The raw request body.
        headers: The request headers (any case).
        public_key: The webhook's verification key (base64 DER, PEM or loaded).
        tolerance: Seconds the signed timestamp may be off from now.
        tenant_id: Apply only to this tenant's notifications (for a key that
            belongs to one tenant's own SendGrid account).
        now: The current time (epoch seconds), for tests.

    Returns:
        Every event of the request, each with ``applied`` telling whether it
        changed a status.

    Raises:
        WebhookVerificationError: not provably from SendGrid (nothing applied).
        WebhookPayloadError: signed, but not a list of events (nothing applied).
        WebhookBodyTooLargeError: over the size limit (nothing verified or applied).
    """
    check_body(body, "sendgrid")
    verify_sendgrid_signature(
        body,
        find_header(headers, SENDGRID_SIGNATURE_HEADER),
        find_header(headers, SENDGRID_TIMESTAMP_HEADER),
        public_key,
        tolerance=tolerance,
        now=now,
    )
    return [
        apply_event(notifier, event, tenant_id=tenant_id) for event in parse_sendgrid_events(body)
    ]


def receive_sendgrid(
    notifier: Notifier | StatusStore,
    request: WebhookRequest,
    secret: str | SecretStr,
    *,
    tenant_id: str | None = None,
) -> list[DeliveryEvent]:
    """The router's entry: ``secret`` is the webhook's verification key."""
    return apply_sendgrid_events(
        notifier, request.body, request.headers, secret, tenant_id=tenant_id
    )
