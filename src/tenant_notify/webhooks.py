"""Delivery events from the providers: verify, parse, and apply them to statuses.

A provider that has accepted a message tells later what became of it, by calling
a URL of the host application. This module checks that such a request really
comes from the provider and turns it into status changes: ``sent`` becomes
``delivered``, ``bounced`` or ``failed``. The host mounts the endpoints (a later
``contrib`` module does it for FastAPI) and calls:

* :func:`apply_sendgrid_events` with the raw body and headers of a request from
  SendGrid's *signed* Event Webhook (ECDSA P-256 over timestamp + body). Events
  are matched by the ``notification_id`` the SendGrid provider puts in
  ``custom_args``. Needs ``pip install 'tenant-notify[webhooks]'`` (cryptography).
* :func:`apply_twilio_callback` with the full URL, the POST parameters and the
  ``X-Twilio-Signature`` of a Twilio status callback (HMAC-SHA1 keyed with the
  account's auth token). Matched by ``MessageSid``, the status's
  ``provider_message_id``.

Both raise :class:`~tenant_notify.errors.WebhookVerificationError` (answer 403)
for a missing or wrong signature, or a SendGrid timestamp outside the tolerance,
and :class:`~tenant_notify.errors.WebhookPayloadError` (answer 400) for a signed
body that cannot be read; nothing is changed then. Events that are not about a
delivery outcome (``processed``, ``open``, Twilio's ``queued``, ...), or that name
an unknown notification, are returned with ``applied=False``.

Which events move a status, and where (the status's current state on the left):

==========================  ===============================  ====================
Current state               ``delivered`` event              ``bounced`` /
                                                             ``failed`` event
==========================  ===============================  ====================
sending, retrying, sent     -> delivered                     -> bounced / failed
delivered                   (nothing)                        -> bounced / failed
failed after an ambiguous   -> delivered (it did go out)     -> bounced / failed
timeout
bounced, other failed       (nothing: stays)                 (nothing: stays)
==========================  ===============================  ====================

A bounce can follow a delivery (the receiving server accepted, then bounced), so
it wins; a late or repeated ``delivered`` never undoes a bounce. Applying the
same event twice changes nothing the second time, which is what makes replayed
Twilio callbacks (they carry no timestamp) harmless.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from .errors import MissingDependencyError, WebhookPayloadError, WebhookVerificationError
from .models import DeliveryState, DeliveryStatus
from .stores import StatusStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

    from .notifier import Notifier

__all__ = [
    "DEFAULT_TOLERANCE",
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "TWILIO_SIGNATURE_HEADER",
    "DeliveryEvent",
    "apply_event",
    "apply_sendgrid_events",
    "apply_twilio_callback",
    "parse_sendgrid_events",
    "parse_twilio_callback",
    "twilio_signature",
    "verify_sendgrid_signature",
    "verify_twilio_signature",
]

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
#: Seconds a SendGrid webhook timestamp may differ from now.
DEFAULT_TOLERANCE = 300.0
#: error_type of a status that a delivery event ended.
EVENT_ERROR_TYPE = "DeliveryEvent"

_SENDGRID_STATES = {
    "delivered": DeliveryState.DELIVERED,
    "bounce": DeliveryState.BOUNCED,
    "dropped": DeliveryState.FAILED,
}
_TWILIO_STATES = {
    "delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.DELIVERED,
    "undelivered": DeliveryState.BOUNCED,
    "failed": DeliveryState.FAILED,
    "canceled": DeliveryState.FAILED,
}
_OUTCOMES = frozenset({DeliveryState.DELIVERED, DeliveryState.BOUNCED, DeliveryState.FAILED})
_MAX_BODY = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One event a provider reported about one message.

    Attributes:
        provider: ``"sendgrid"`` or ``"twilio"``.
        event: The provider's own name for it (``"delivered"``, ``"bounce"``,
            ``"undelivered"``, ``"open"``, ...).
        state: The status it leads to (delivered, bounced, failed), or None for an
            event that says nothing about the outcome.
        notification_id: The notification it names (SendGrid ``custom_args``), if any.
        provider_message_id: The provider's message id (Twilio ``MessageSid``;
            SendGrid: the ``X-Message-Id`` part of ``sg_message_id``), if any.
        tenant_id: The tenant it names (SendGrid ``custom_args``), if any.
        reason: Why it bounced or failed, in the provider's words.
        occurred_at: When it happened, per the provider, if it said.
        applied: Whether it changed a status (set by the ``apply_*`` functions).
    """

    provider: str
    event: str
    state: DeliveryState | None
    notification_id: str | None = None
    provider_message_id: str | None = None
    tenant_id: str | None = None
    reason: str | None = None
    occurred_at: dt.datetime | None = None
    applied: bool = False


# --- applying events -----------------------------------------------------------------


def _store(target: Notifier | StatusStore) -> StatusStore:
    # A Notifier has a status_store; anything else is taken to be a store.
    store = getattr(target, "status_store", None)
    return cast(StatusStore, target if store is None else store)


def _may_move(current: DeliveryStatus, new: DeliveryState) -> bool:
    state = current.state
    if state is DeliveryState.FAILED:
        # A failure the provider may have accepted after all is what events settle.
        return current.error_type == "AmbiguousDeliveryError"
    if state is DeliveryState.BOUNCED or state is DeliveryState.QUEUED:
        return False
    if state is DeliveryState.DELIVERED:
        return new is not DeliveryState.DELIVERED
    return True  # sending, retrying, sent


def apply_event(
    target: Notifier | StatusStore, event: DeliveryEvent, *, tenant_id: str | None = None
) -> DeliveryEvent:
    """Apply one parsed event to the status it belongs to.

    Args:
        target: A Notifier (its status store is used) or a status store.
        event: From :func:`parse_sendgrid_events` or :func:`parse_twilio_callback`.
        tenant_id: Apply only to this tenant's notifications (pass it when the
            signing key or token belongs to one tenant's own account, so that
            account cannot speak about another tenant's notifications).

    Returns:
        ``event`` with ``applied`` set.
    """
    if event.state not in _OUTCOMES:
        return event
    store = _store(target)
    status: DeliveryStatus | None = None
    if event.notification_id:
        status = store.get(event.notification_id)
        if status is not None and status.provider != event.provider:
            status = None
    elif event.provider_message_id:
        status = store.find_by_provider_message_id(event.provider, event.provider_message_id)
    if status is None:
        return event
    if tenant_id is not None and status.tenant_id != tenant_id:
        return event
    if event.tenant_id is not None and status.tenant_id != event.tenant_id:
        return event
    assert event.state is not None
    if not _may_move(status, event.state):
        return event
    if event.state is DeliveryState.DELIVERED:
        changes: dict[str, Any] = {"error": None, "error_type": None}
    else:
        reason = event.reason or event.event
        changes = {"error": f"{event.provider} {event.event}: {reason}"}
        changes["error_type"] = EVENT_ERROR_TYPE
    if status.provider_message_id is None and event.provider_message_id:
        changes["provider_message_id"] = event.provider_message_id
    store.save(status.evolve(state=event.state, next_attempt_at=None, **changes))
    return replace(event, applied=True)


# --- SendGrid ------------------------------------------------------------------------


def _crypto() -> Any:
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ModuleNotFoundError as err:
        raise MissingDependencyError("cryptography", "webhooks") from err
    return exceptions, hashes, serialization, ec


@functools.lru_cache(maxsize=64)
def _load_public_key(text: str) -> EllipticCurvePublicKey:
    _, _, serialization, ec = _crypto()
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


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value


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
    exceptions, hashes, _, ec = _crypto()
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


def _epoch(value: Any) -> dt.datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:1000] or None


def parse_sendgrid_events(body: bytes | str) -> list[DeliveryEvent]:
    """Parse the JSON array a SendGrid Event Webhook request carries.

    Raises:
        WebhookPayloadError: the body is not a JSON array of event objects.
    """
    if len(body) > _MAX_BODY:
        raise WebhookPayloadError("the webhook body is too large", provider="sendgrid")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise WebhookPayloadError(f"the body is not JSON: {err}", provider="sendgrid") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise WebhookPayloadError("the body is not a list of event objects", provider="sendgrid")
    events = []
    for item in data:
        name = item.get("event")
        if not isinstance(name, str):
            raise WebhookPayloadError("an event has no 'event' name", provider="sendgrid")
        reason = _text(item.get("reason") or item.get("response"))
        if name == "bounce" and item.get("type") == "blocked":
            reason = f"blocked: {reason}" if reason else "blocked"
        notification_id = item.get("notification_id")
        tenant_id = item.get("tenant_id")
        # sg_message_id is the X-Message-Id of the send, then ".filter..." per recipient.
        message_id = item.get("sg_message_id")
        if isinstance(message_id, str):
            message_id = message_id.partition(".")[0] or None
        events.append(
            DeliveryEvent(
                provider="sendgrid",
                event=name,
                state=_SENDGRID_STATES.get(name),
                notification_id=notification_id if isinstance(notification_id, str) else None,
                provider_message_id=message_id if isinstance(message_id, str) else None,
                tenant_id=tenant_id if isinstance(tenant_id, str) else None,
                reason=reason if name in _SENDGRID_STATES and name != "delivered" else None,
                occurred_at=_epoch(item.get("timestamp")),
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
    """
    verify_sendgrid_signature(
        body,
        _header(headers, SENDGRID_SIGNATURE_HEADER),
        _header(headers, SENDGRID_TIMESTAMP_HEADER),
        public_key,
        tolerance=tolerance,
        now=now,
    )
    return [
        apply_event(notifier, event, tenant_id=tenant_id) for event in parse_sendgrid_events(body)
    ]


# --- Twilio --------------------------------------------------------------------------

Params = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


def _pairs(params: Params) -> list[tuple[str, str]]:
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        getlist = getattr(params, "getlist", None)  # multi-dicts (Starlette, Werkzeug)
        for key in params:
            values = getlist(key) if getlist is not None else params[key]
            if isinstance(values, str):
                pairs.append((key, values))
            else:
                pairs.extend((key, value) for value in values)
        return pairs
    return [(str(key), str(value)) for key, value in params]


def twilio_signature(url: str, params: Params, auth_token: str | SecretStr) -> str:
    """The ``X-Twilio-Signature`` Twilio computes for a POST to ``url`` with ``params``:
    base64 HMAC-SHA1, keyed with the auth token, of the URL followed by every
    parameter name and value, sorted by name (then value)."""
    token = auth_token.get_secret_value() if isinstance(auth_token, SecretStr) else auth_token
    values: dict[str, set[str]] = {}
    for key, value in _pairs(params):
        values.setdefault(key, set()).add(value)
    data = url + "".join(key + value for key in sorted(values) for value in sorted(values[key]))
    digest = hmac.new(token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _url_variants(url: str) -> list[str]:
    # Twilio signs the URL as it called it, which may or may not spell out the
    # port (and a proxy in front may add one); accept the URL as given, without
    # its port, and with the scheme's default port, as Twilio's own helpers do.
    parts = urlsplit(url)
    if parts.hostname is None:
        return [url]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    variants = [url]
    if parts.port is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    else:
        default = {"https": 443, "http": 80}.get(parts.scheme)
        if default is not None:
            variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    return variants


def verify_twilio_signature(
    url: str, params: Params, signature: str | None, auth_token: str | SecretStr
) -> None:
    """Check the ``X-Twilio-Signature`` of a Twilio status callback.

    Args:
        url: The full URL Twilio called, as it called it: scheme, host, path and
            query (behind a proxy, the public URL, not the internal one).
        params: The POST (form) parameters.
        signature: The ``X-Twilio-Signature`` header.
        auth_token: The auth token of the account that sent the message (Twilio
            signs with it even when the message was sent with an API key).

    Raises:
        WebhookVerificationError: the signature is missing or does not match.
    """
    if not signature:
        raise WebhookVerificationError(
            f"the {TWILIO_SIGNATURE_HEADER} header is missing", provider="twilio"
        )
    expected = signature.strip().encode("ascii", errors="replace")
    for candidate in _url_variants(url):
        computed = twilio_signature(candidate, params, auth_token).encode("ascii")
        if hmac.compare_digest(computed, expected):
            return
    raise WebhookVerificationError(
        "the Twilio signature does not match (check the auth token, and that the URL is "
        "exactly the one Twilio called)",
        provider="twilio",
    )


def parse_twilio_callback(params: Params) -> DeliveryEvent:
    """Turn the parameters of a Twilio status callback into an event.

    Raises:
        WebhookPayloadError: ``MessageSid`` or ``MessageStatus`` is missing.
    """
    fields: dict[str, str] = {}
    for key, value in _pairs(params):
        fields.setdefault(key, value)
    sid = fields.get("MessageSid") or fields.get("SmsSid")
    status = fields.get("MessageStatus") or fields.get("SmsStatus")
    if not sid or not status:
        raise WebhookPayloadError(
            "a status callback needs MessageSid and MessageStatus", provider="twilio"
        )
    state = _TWILIO_STATES.get(status)
    reason = None
    if state is not None and state is not DeliveryState.DELIVERED:
        code = fields.get("ErrorCode")
        message = fields.get("ErrorMessage")
        reason = _text(" ".join(p for p in (f"error {code}" if code else "", message or "") if p))
    return DeliveryEvent(
        provider="twilio",
        event=status,
        state=state,
        provider_message_id=sid,
        reason=reason,
    )


def apply_twilio_callback(
    notifier: Notifier | StatusStore,
    url: str,
    params: Params,
    signature: str | None,
    auth_token: str | SecretStr,
    *,
    tenant_id: str | None = None,
) -> DeliveryEvent:
    """Verify a Twilio status callback and apply it to the SMS it is about.

    Args:
        notifier: The Notifier (or its status store).
        url: The full URL Twilio called (see :func:`verify_twilio_signature`).
        params: The POST parameters.
        signature: The ``X-Twilio-Signature`` header.
        auth_token: The auth token of the sending account.
        tenant_id: Apply only to this tenant's notifications.

    Returns:
        The event, with ``applied`` telling whether it changed a status.

    Raises:
        WebhookVerificationError: not provably from Twilio (nothing applied).
        WebhookPayloadError: signed, but without MessageSid or MessageStatus.
    """
    verify_twilio_signature(url, params, signature, auth_token)
    return apply_event(notifier, parse_twilio_callback(params), tenant_id=tenant_id)
