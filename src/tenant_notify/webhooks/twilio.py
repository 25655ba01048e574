"""Twilio's webhooks: HMAC-SHA1 of the URL and parameters, keyed with the auth token.

Status callbacks are matched by ``MessageSid``, the status's ``provider_message_id``;
one with error 21610 (the recipient had replied STOP) also suppresses the number.
Incoming messages (the number's "A message comes in" webhook) carry the
recipients' own STOP and START: :func:`apply_twilio_inbound` suppresses the
sender of a STOP for the tenant and lifts that with a START.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import SecretStr

from ..errors import WebhookPayloadError, WebhookVerificationError
from ..models import Channel, DeliveryState
from ..stores import StatusStore
from .base import DeliveryEvent, Feedback, WebhookRequest, apply_event, find_header, reason_text

if TYPE_CHECKING:
    from ..notifier import Notifier

__all__ = [
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "TWILIO_SIGNATURE_HEADER",
    "Params",
    "apply_twilio_callback",
    "apply_twilio_inbound",
    "parse_twilio_callback",
    "parse_twilio_inbound",
    "receive_twilio",
    "receive_twilio_inbound",
    "twilio_signature",
    "verify_twilio_signature",
]

TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"

_TWILIO_STATES = {
    "delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.DELIVERED,
    "undelivered": DeliveryState.BOUNCED,
    "failed": DeliveryState.FAILED,
    "canceled": DeliveryState.FAILED,
}

Params = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]

#: The error code of a message to a number that replied STOP.
OPTED_OUT_CODE = "21610"
#: Twilio's default opt-out and opt-in keywords (a message of just one of them,
#: any case); with Advanced Opt-Out Twilio says which it was in ``OptOutType``.
OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})


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
    code = fields.get("ErrorCode")
    if state is not None and state is not DeliveryState.DELIVERED:
        message = fields.get("ErrorMessage")
        parts = (f"error {code}" if code else "", message or "")
        reason = reason_text(" ".join(p for p in parts if p))
    opted_out = state is not None and code == OPTED_OUT_CODE
    return DeliveryEvent(
        provider="twilio",
        event=status,
        state=state,
        provider_message_id=sid,
        reason=reason,
        recipients=(fields["To"],) if fields.get("To") else (),
        feedback=Feedback.UNSUBSCRIBE if opted_out else None,
        channel=Channel.SMS,
    )


def parse_twilio_inbound(params: Params) -> DeliveryEvent:
    """Turn an incoming message into an event: an unsubscribe for a STOP, a
    resubscribe for a START, no feedback for anything else.

    Raises:
        WebhookPayloadError: ``From`` or ``MessageSid`` is missing.
    """
    fields: dict[str, str] = {}
    for key, value in _pairs(params):
        fields.setdefault(key, value)
    sender = fields.get("From")
    sid = fields.get("MessageSid") or fields.get("SmsSid")
    if not sender or not sid:
        raise WebhookPayloadError(
            "an incoming message needs From and MessageSid", provider="twilio"
        )
    kind = (fields.get("OptOutType") or "").strip().upper()
    word = " ".join(fields.get("Body", "").split()).upper()
    feedback = None
    if kind == "STOP" or (not kind and word in OPT_OUT_KEYWORDS):
        feedback = Feedback.UNSUBSCRIBE
    elif kind == "START" or (not kind and word in OPT_IN_KEYWORDS):
        feedback = Feedback.RESUBSCRIBE
    return DeliveryEvent(
        provider="twilio",
        event="inbound",
        state=None,
        provider_message_id=sid,
        reason="replied STOP" if feedback is Feedback.UNSUBSCRIBE else None,
        recipients=(sender,),
        feedback=feedback,
        channel=Channel.SMS,
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


def receive_twilio(
    notifier: Notifier | StatusStore,
    request: WebhookRequest,
    secret: str | SecretStr,
    *,
    tenant_id: str | None = None,
) -> list[DeliveryEvent]:
    """The router's entry: ``secret`` is the sending account's auth token."""
    # A body that is not UTF-8 is not Twilio's, and fails the signature check.
    params = parse_qsl(request.body.decode("utf-8", errors="replace"), keep_blank_values=True)
    signature = find_header(request.headers, TWILIO_SIGNATURE_HEADER)
    return [
        apply_twilio_callback(notifier, request.url, params, signature, secret, tenant_id=tenant_id)
    ]


def apply_twilio_inbound(
    notifier: Notifier,
    url: str,
    params: Params,
    signature: str | None,
    auth_token: str | SecretStr,
    *,
    tenant_id: str,
) -> DeliveryEvent:
    """Verify an incoming-message webhook and apply a STOP or START to ``tenant_id``'s
    SMS suppression list (the number that texted is the one suppressed or lifted).

    Returns:
        The event, with ``applied`` telling whether the list changed.

    Raises:
        WebhookVerificationError: not provably from Twilio (nothing applied).
        WebhookPayloadError: signed, but without From or MessageSid.
    """
    verify_twilio_signature(url, params, signature, auth_token)
    # Not matched to a status: an incoming message is nobody's delivery.
    event = parse_twilio_inbound(params)
    return apply_event(notifier, replace(event, provider_message_id=None), tenant_id=tenant_id)


def receive_twilio_inbound(
    notifier: Notifier,
    request: WebhookRequest,
    secret: str | SecretStr,
    *,
    tenant_id: str,
) -> list[DeliveryEvent]:
    """The router's entry for incoming messages: ``secret`` is the number's account's
    auth token."""
    params = parse_qsl(request.body.decode("utf-8", errors="replace"), keep_blank_values=True)
    signature = find_header(request.headers, TWILIO_SIGNATURE_HEADER)
    return [
        apply_twilio_inbound(notifier, request.url, params, signature, secret, tenant_id=tenant_id)
    ]
