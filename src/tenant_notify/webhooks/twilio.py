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
from urllib.parse import parse_qs, parse_qsl, urlparse

from pydantic import SecretStr

from ..errors import WebhookPayloadError, WebhookVerificationError
from ..models import Channel, DeliveryState
from ..stores import StatusStore
from .base import (
    DeliveryEvent,
    Feedback,
    WebhookRequest,
    apply_event,
    find_header,
    load_json,
    reason_text,
)

if TYPE_CHECKING:
    from ..notifier import Notifier

__all__ = [
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "TWILIO_ALGORITHMS",
    "TWILIO_SIGNATURE_HEADER",
    "TWILIO_SIGNATURE_SETTINGS_HEADER",
    "Params",
    "apply_twilio_callback",
    "apply_twilio_inbound",
    "parse_twilio_callback",
    "parse_twilio_inbound",
    "receive_twilio",
    "receive_twilio_inbound",
    "signature_algorithm",
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
        # Multi-dicts: aiohttp and multidict (getall), Starlette, Werkzeug, Django (getlist).
        getlist = getattr(params, "getall", None) or getattr(params, "getlist", None)
        for key in params:
            values = getlist(key) if getlist is not None else params[key]
            if isinstance(values, str):
                pairs.append((key, values))
            else:
                pairs.extend((key, value) for value in values)
        return pairs
    return [(str(key), str(value)) for key, value in params]


#: The signature algorithms Twilio uses: HMAC-SHA1 keyed with the auth token (the
#: default), and HMAC-SHA256 for webhooks signed with a SharedKey (named in the
#: ``X-Twilio-Webhooks-Signature-Settings`` header).
TWILIO_ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
TWILIO_SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


def twilio_signature(
    url: str, params: Params, auth_token: str | SecretStr, *, algorithm: str = "HMAC_SHA1"
) -> str:
    """The ``X-Twilio-Signature`` Twilio computes for a POST to ``url`` with ``params``:
    base64 HMAC-SHA1 (or ``algorithm``), keyed with the auth token, of the URL
    followed by every parameter name and value, sorted by name (then value)."""
    token = auth_token.get_secret_value() if isinstance(auth_token, SecretStr) else auth_token
    digest_of = TWILIO_ALGORITHMS[algorithm.upper()]
    values: dict[str, set[str]] = {}
    for key, value in _pairs(params):
        values.setdefault(key, set()).add(value)
    data = url + "".join(key + value for key in sorted(values) for value in sorted(values[key]))
    digest = hmac.new(token.encode("utf-8"), data.encode("utf-8"), digest_of).digest()
    return base64.b64encode(digest).decode("ascii")


def _signed_forms(url: str) -> tuple[str, str]:
    """The two spellings of ``url`` Twilio's validator checks a signature against:
    without its port and with it (the scheme's default when it has none).

    Both are the URL as ``urllib.parse`` rebuilds it, which is how Twilio's own SDK
    compares (a lower-case scheme, no bare ``?`` or ``#``, the host as given); the
    port comes off by cutting the network location at its first colon, as there.
    """
    parts = urlparse(url)
    if parts.port:  # ValueError for a port that is not one
        return parts._replace(netloc=parts.netloc.split(":")[0]).geturl(), parts.geturl()
    default = 443 if parts.scheme == "https" else 80
    return parts.geturl(), parts._replace(netloc=f"{parts.netloc}:{default}").geturl()


def _body_hash(url: str) -> str | None:
    """The ``bodySHA256`` query parameter Twilio adds for a JSON body, if any."""
    values = parse_qs(urlparse(url).query).get("bodySHA256")
    return values[0] if values else None


def signature_algorithm(settings: str | None) -> str:
    """The algorithm an ``X-Twilio-Webhooks-Signature-Settings`` header names
    (``key=...,algorithm=HMAC_SHA256``); ``HMAC_SHA1`` without one."""
    for part in (settings or "").split(","):
        name, equals, value = part.partition("=")
        if equals and name.strip() == "algorithm" and value.strip():
            return value.strip()
    return "HMAC_SHA1"


def verify_twilio_signature(
    url: str,
    params: Params | str,
    signature: str | None,
    auth_token: str | SecretStr,
    *,
    algorithm: str = "HMAC_SHA1",
) -> None:
    """Check the ``X-Twilio-Signature`` of a Twilio webhook: accepted exactly when
    Twilio's own SDK (``twilio.request_validator.RequestValidator.validate``) accepts it.

    Args:
        url: The full URL Twilio called, as it called it: scheme, host, path and
            query (behind a proxy, the public URL, not the internal one). It may
            differ from the one Twilio signed by the explicit or implicit port, the
            scheme's case, or a bare ``?``.
        params: The POST (form) parameters; or, for a JSON webhook (its URL has a
            ``bodySHA256`` parameter), the raw body as text, checked against that hash.
        signature: The ``X-Twilio-Signature`` header.
        auth_token: The auth token of the account that sent the message (Twilio
            signs with it even when the message was sent with an API key), or the
            SharedKey secret of a webhook signed with one.
        algorithm: ``HMAC_SHA1`` (the default), or what the
            ``X-Twilio-Webhooks-Signature-Settings`` header names
            (:func:`signature_algorithm`).

    Raises:
        WebhookVerificationError: the signature is missing or does not match.
    """
    if not signature:
        raise WebhookVerificationError(
            f"the {TWILIO_SIGNATURE_HEADER} header is missing", provider="twilio"
        )
    if algorithm.upper() not in TWILIO_ALGORITHMS:
        raise WebhookVerificationError(
            "the webhook names a signature algorithm Twilio does not use", provider="twilio"
        )
    try:
        forms = _signed_forms(url)
        pairs: Params = ()
        if isinstance(params, str):
            expected_hash = _body_hash(url)
            if expected_hash is None:
                pairs = parse_qsl(params, keep_blank_values=True)
            else:
                computed_hash = hashlib.sha256(params.encode("utf-8")).hexdigest()
                if not hmac.compare_digest(computed_hash, expected_hash):
                    raise WebhookVerificationError(
                        "the body does not match its bodySHA256", provider="twilio"
                    )
        else:
            pairs = params
        computed = [twilio_signature(f, pairs, auth_token, algorithm=algorithm) for f in forms]
    except (ValueError, UnicodeError):
        # A port that is not a number, text that is not Unicode: nothing Twilio signs.
        computed = []
    if not computed:
        # Raised here, not in the except block: a UnicodeError holds the whole text.
        raise WebhookVerificationError(
            "the URL or parameters cannot have been signed by Twilio", provider="twilio"
        )
    given = signature.encode("utf-8", errors="replace")
    if any(hmac.compare_digest(c.encode("ascii"), given) for c in computed):
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
    params = _verified_params(request, secret)
    return [apply_event(notifier, parse_twilio_callback(params), tenant_id=tenant_id)]


def _verified_params(request: WebhookRequest, secret: str | SecretStr) -> Params:
    """A request's parameters once its signature holds: the form fields, or the
    fields of a JSON body (a URL with ``bodySHA256``), as Twilio's SDK checks them."""
    # A body that is not UTF-8 is not Twilio's, and fails the signature check.
    text = request.body.decode("utf-8", errors="replace")
    signature = find_header(request.headers, TWILIO_SIGNATURE_HEADER)
    settings = find_header(request.headers, TWILIO_SIGNATURE_SETTINGS_HEADER)
    algorithm = signature_algorithm(settings)
    if _body_hash(request.url) is None:
        params = parse_qsl(text, keep_blank_values=True)
        verify_twilio_signature(request.url, params, signature, secret, algorithm=algorithm)
        return params
    verify_twilio_signature(request.url, text, signature, secret, algorithm=algorithm)
    data = load_json(request.body, "twilio")
    if not isinstance(data, dict):
        raise WebhookPayloadError("a JSON webhook body is not an object", provider="twilio")
    return [(str(key), str(value)) for key, value in data.items() if value is not None]


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
    event = parse_twilio_inbound(_verified_params(request, secret))
    # Not matched to a status: an incoming message is nobody's delivery.
    return [apply_event(notifier, replace(event, provider_message_id=None), tenant_id=tenant_id)]
