"""Send email through SendGrid's v3 Web API (``POST /v3/mail/send``), without the SDK.

Settings (``[email]`` or a tenant's ``[tenants.X.email]``)::

    [email]
    provider = "sendgrid"
    api_key = "SG.xxxxx"                  # kept as a SecretStr
    # base_url = "https://api.eu.sendgrid.com"   # EU data residency, or a test server

The request body is the one the public API defines: ``from`` (with the tenant's
display name), ``reply_to``, one ``personalizations`` entry with the recipients,
``subject``, ``content`` (``text/plain`` before ``text/html``), ``categories``
(the notification kind), ``custom_args`` (``tenant_id`` and ``notification_id``,
which SendGrid copies into every delivery event, see :mod:`tenant_notify.webhooks`),
``headers`` and ``tracking_settings`` (open and click tracking as the tenant asks,
off by default and said so on every request: accounts track clicks unless told;
links in the text part are never rewritten). The ``X-Message-Id`` of the 202 reply
becomes the status's ``provider_message_id``.

Error mapping (every error carries ``provider="sendgrid"``, the ids, and
SendGrid's own messages as ``provider_response``; the API key never appears):

=============================================  =========================================
Reply                                          Raised
=============================================  =========================================
202 (200 in sandbox mode)                      accepted
429                                            ``TransientDeliveryError`` with
                                               ``retry_after`` from ``X-RateLimit-Reset``
                                               (epoch seconds) or ``Retry-After``
408, 5xx                                       ``TransientDeliveryError``
400 naming only recipient fields               ``PermanentDeliveryError``,
(``personalizations.0.to.0.email``)            ``recipient_error`` (no failover)
401, 403 (bad key, unverified sender          ``PermanentDeliveryError`` with
identity)                                      ``sender_fault`` (the breaker counts it)
400, 404, 413, other 4xx                       ``PermanentDeliveryError``
connect failure, read timeout, ...             see :mod:`tenant_notify.providers.http`
=============================================  =========================================
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from .._headers import check_header_value, outgoing_headers
from .._mime import envelope_address
from ..errors import (
    DeliveryError,
    InvalidRecipientError,
    PermanentDeliveryError,
    ValidationError,
)
from ..models import Address, Attachment, Channel, EmailMessage, Feature, Message
from .base import Capabilities, ProviderConfig
from .http import (
    ErrorContext,
    ErrorDetails,
    HeaderAuth,
    HttpConfig,
    HttpProvider,
    HttpRequest,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["SendGridConfig", "SendGridProvider"]

DEFAULT_BASE_URL = "https://api.sendgrid.com"
SEND_PATH = "/v3/mail/send"
#: Headers SendGrid refuses in ``headers`` (besides those the library sets itself).
_SENDGRID_RESERVED = frozenset(
    {"x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-transfer-encoding"}
)
#: Error fields that point at a recipient address rather than at the request.
_RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.(?:to|cc|bcc)(?:\.|$|\[)")
_MAX_CATEGORY_CHARS = 255


class SendGridConfig(HttpConfig):
    """Settings of the SendGrid provider.

    Attributes:
        api_key: The API key (needs the "Mail Send" permission).
        base_url: ``https://api.sendgrid.com``; ``https://api.eu.sendgrid.com`` for
            EU data residency; a loopback server in tests.
        ip_pool: Name of the IP pool to send from, if any.
        sandbox_mode: Ask SendGrid to validate the request without sending.
        connect_timeout, read_timeout, max_connections, verify_tls: see
            :class:`~tenant_notify.providers.http.HttpConfig`.
    """

    api_key: SecretStr
    base_url: str = DEFAULT_BASE_URL
    ip_pool: str | None = Field(default=None, min_length=2, max_length=64)
    sandbox_mode: bool = False

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip() or any(c.isspace() for c in secret) or not secret.isascii():
            raise ValueError("must be a SendGrid API key (no spaces, ASCII)")
        return value


class SendGridProvider(HttpProvider):
    """Deliver email through SendGrid's v3 Web API.

    Keyword arguments are the fields of :class:`SendGridConfig`::

        SendGridProvider(api_key="SG.xxxxx")

    Raises:
        ConfigurationError: invalid settings.
    """

    name: ClassVar[str] = "sendgrid"
    service: ClassVar[str] = "SendGrid"
    credentials_refused: ClassVar[str] = (
        "the API key or the sender was refused (check the key's Mail Send permission and "
        "the verified sender identity)"
    )
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL})
    Config: ClassVar[type[ProviderConfig]] = SendGridConfig
    #: SendGrid takes 10 categories (one is the kind) and 30 MB per message.
    capabilities: ClassVar[Capabilities] = Capabilities(
        features=frozenset(Feature),
        max_message_bytes=30 * 1000 * 1000,
        max_tags=9,
    )

    config: SendGridConfig

    def __init__(self, *, api_key: SecretStr | str, **options: Any) -> None:
        super().__init__(api_key=api_key, **options)
        config = self.config
        self._settings_extra: dict[str, Any] = {}
        if config.ip_pool is not None:
            self._settings_extra["ip_pool_name"] = config.ip_pool
        if config.sandbox_mode:
            self._settings_extra["mail_settings"] = {"sandbox_mode": {"enable": True}}

    # --- hooks -------------------------------------------------------------------------

    def auth(self) -> httpx.Auth:
        return HeaderAuth("Authorization", f"Bearer {self.config.api_key.get_secret_value()}")

    def secrets(self) -> Iterable[str]:
        return (self.config.api_key.get_secret_value(),)

    # --- sending -----------------------------------------------------------------------

    def build_payload(self, message: EmailMessage) -> dict[str, Any]:
        """The ``/v3/mail/send`` request body for ``message``.

        Raises:
            HeaderInjectionError: a subject, display name or header holds a line break.
            InvalidRecipientError: no recipient, or an address that cannot be sent.
            ValidationError: an extra header the library or SendGrid reserves, or
                an email without any body.
        """
        if not message.to:
            raise InvalidRecipientError("an email needs at least one recipient", field="to")
        content = []
        if message.text:
            content.append({"type": "text/plain", "value": message.text})
        if message.html:
            content.append({"type": "text/html", "value": message.html})
        if not content:
            raise ValidationError("the email has neither text nor HTML", field="text")
        personalization: dict[str, Any] = {
            "to": [_address(a, f"to[{i}]") for i, a in enumerate(message.to)]
        }
        if message.cc:
            personalization["cc"] = [_address(a, f"cc[{i}]") for i, a in enumerate(message.cc)]
        if message.bcc:
            personalization["bcc"] = [_address(a, f"bcc[{i}]") for i, a in enumerate(message.bcc)]
        payload: dict[str, Any] = {
            "personalizations": [personalization],
            "from": _address(message.from_addr, "from_addr"),
            "subject": check_header_value(message.subject, "subject"),
            "content": content,
        }
        if message.reply_to is not None:
            payload["reply_to"] = _address(message.reply_to, "reply_to")
        categories = [message.kind[:_MAX_CATEGORY_CHARS]] if message.kind else []
        categories += [tag for tag in message.tags if tag not in categories]
        if categories:
            payload["categories"] = categories
        custom_args = dict(message.metadata)
        if message.tenant_id:
            custom_args["tenant_id"] = message.tenant_id
        if message.notification_id:
            custom_args["notification_id"] = message.notification_id
        if custom_args:
            payload["custom_args"] = custom_args
        headers = dict(
            outgoing_headers(message.headers, message.notification_id, reserved=_SENDGRID_RESERVED)
        )
        if headers:
            payload["headers"] = headers
        if message.attachments:
            payload["attachments"] = [_attachment(a) for a in message.attachments]
        # Always said, on or off: SendGrid accounts track clicks unless told otherwise,
        # and tracking is the tenant's choice (off by default). Never in the text part.
        payload["tracking_settings"] = {
            "click_tracking": {"enable": message.track_clicks, "enable_text": False},
            "open_tracking": {"enable": message.track_opens},
        }
        payload.update(self._settings_extra)
        return payload

    def build_body(self, message: EmailMessage) -> bytes:
        """:meth:`build_payload` as the bytes that go out: compact UTF-8 JSON."""
        payload = self.build_payload(message)
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def build_request(self, message: Message) -> HttpRequest:
        assert isinstance(message, EmailMessage)  # the base checked the channel
        return HttpRequest(SEND_PATH, self.build_body(message))

    def message_id(self, response: httpx.Response) -> str | None:
        return response.headers.get("x-message-id") or None

    # --- errors ------------------------------------------------------------------------

    def error_details(self, response: httpx.Response) -> ErrorDetails:
        errors = _error_entries(response)
        if not errors:
            return super().error_details(response)
        text = "; ".join(
            f"{e['field']}: {e['message']}" if e.get("field") else str(e["message"]) for e in errors
        )
        fields = [str(e.get("field") or "") for e in errors]
        recipient = all(_RECIPIENT_FIELD.match(f) for f in fields)
        return ErrorDetails(text, code="recipient" if recipient else None)

    def classify_error(
        self, response: httpx.Response, details: ErrorDetails, reply: str, context: ErrorContext
    ) -> DeliveryError | None:
        if 400 <= response.status_code < 500 and details.code == "recipient":
            return PermanentDeliveryError(
                "SendGrid refused the recipient",
                provider_response=reply,
                recipient_error=True,
                **context,
            )
        return None


def _address(address: Address, field: str) -> dict[str, str]:
    email = envelope_address(address.email, f"{field}.email")
    if address.name:
        return {"email": email, "name": check_header_value(address.name, f"{field}.name")}
    return {"email": email}


def _attachment(attachment: Attachment) -> dict[str, str]:
    entry = {
        "content": base64.b64encode(attachment.content).decode("ascii"),
        "type": attachment.content_type or "application/octet-stream",
        "filename": attachment.filename,
        "disposition": "inline" if attachment.inline else "attachment",
    }
    if attachment.content_id:
        entry["content_id"] = attachment.content_id
    return entry


def _error_entries(response: httpx.Response) -> list[dict[str, Any]]:
    """The ``errors`` list of a SendGrid error reply, or [] when it has none."""
    if "json" not in response.headers.get("content-type", ""):
        return []
    try:
        data = response.json()
    except (ValueError, UnicodeDecodeError):
        return []
    entries = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("message"), str)]
