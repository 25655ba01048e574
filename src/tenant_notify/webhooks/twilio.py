"""Twilio's status callbacks: HMAC-SHA1 of the URL and parameters, keyed with the auth token.

Callbacks are matched by ``MessageSid``, the status's ``provider_message_id``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import SecretStr

from ..errors import WebhookPayloadError, WebhookVerificationError
from ..models import DeliveryState
from ..stores import StatusStore
from .base import DeliveryEvent, WebhookRequest, apply_event, find_header, reason_text

if TYPE_CHECKING:
    from ..notifier import Notifier

__all__ = [
    "TWILIO_SIGNATURE_HEADER",
    "Params",
    "apply_twilio_callback",
    "parse_twilio_callback",
    "receive_twilio",
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
        parts = (f"error {code}" if code else "", message or "")
        reason = reason_text(" ".join(p for p in parts if p))
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
