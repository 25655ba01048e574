"""Send email through Postmark's Email API (``POST /email``), without the SDK.

Settings (``[email]`` or a tenant's ``[tenants.X.email]``)::

    [email]
    provider = "postmark"
    server_token = "..."                   # the server's API token; kept as a SecretStr
    # message_stream = "outbound"          # the transactional stream (the default)
    # base_url = "https://api.postmarkapp.com"   # or a test server

The JSON body carries ``From``, ``To``, ``Cc`` and ``Bcc`` (``Name <address>``,
comma-separated), ``ReplyTo``, ``Subject``, ``TextBody``, ``HtmlBody``, ``Headers``
(with ``X-Tenant-Notify-Id``), ``Tag`` (the send's one tag, else the kind),
``Metadata`` (the send's metadata, then ``tenant_id`` and ``notification_id``, which
Postmark reports back in its webhooks, see :mod:`tenant_notify.webhooks.postmark`),
``Attachments`` (base64, inline images with ``ContentID: cid:<id>``) and
``MessageStream``. The ``MessageID`` of the reply becomes the status's
``provider_message_id``.

Error mapping (every error carries ``provider="postmark"``, the ids, and Postmark's
``ErrorCode`` and ``Message`` as ``provider_response``; the token never appears):

=============================================  =========================================
Reply                                          Raised
=============================================  =========================================
200                                            accepted
429, 500, 503                                  ``TransientDeliveryError``
422 code 406 (inactive recipient: bounced,     ``PermanentDeliveryError`` with
complained or suppressed), code 300 naming     ``recipient_error``: no failover
an address
422 codes 400, 401 (sender signature), 405,    ``PermanentDeliveryError``: this
412, 413 (account)                             account's state, another provider may
                                               be tried
401 (code 10), 413, other 422                  ``PermanentDeliveryError``
connect failure, read timeout, ...             see :mod:`tenant_notify.providers.http`
=============================================  =========================================
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from .._headers import check_header_value, outgoing_headers
from .._mime import envelope_address
from ..errors import (
    DeliveryError,
    InvalidRecipientError,
    PermanentDeliveryError,
    UnsupportedFeatureError,
    ValidationError,
)
from ..models import Address, Channel, EmailMessage, EmailOptions, Feature, Message
from .base import Capabilities, ProviderConfig
from .http import (
    ErrorContext,
    ErrorDetails,
    HeaderAuth,
    HttpConfig,
    HttpProvider,
    HttpRequest,
    json_object,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["PostmarkConfig", "PostmarkProvider"]

DEFAULT_BASE_URL = "https://api.postmarkapp.com"
SEND_PATH = "/email"
#: Postmark's limits on Metadata: 10 fields (two are the library's), keys of up to
#: 20 characters, values of up to 80.
_MAX_METADATA_KEY, _MAX_METADATA_VALUE = 20, 80
_RECIPIENT_CODES = frozenset({406})
_ACCOUNT_CODES = frozenset({400, 401, 405, 412, 413})


class PostmarkConfig(HttpConfig):
    """Settings of the Postmark provider.

    Attributes:
        server_token: The Postmark server's API token.
        message_stream: The message stream to send through (``outbound``, the
            default transactional stream, or one of the server's own).
        base_url: ``https://api.postmarkapp.com``, or a test server.
        connect_timeout, read_timeout, max_connections, verify_tls: see
            :class:`~tenant_notify.providers.http.HttpConfig`.
    """

    server_token: SecretStr
    message_stream: str = Field(default="outbound", pattern=r"^[a-z0-9-]{1,30}$")
    base_url: str = DEFAULT_BASE_URL

    @field_validator("server_token")
    @classmethod
    def _check_token(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip() or any(c.isspace() for c in secret) or not secret.isascii():
            raise ValueError("must be a Postmark server token (no spaces, ASCII)")
        return value


class PostmarkProvider(HttpProvider):
    """Deliver email through Postmark.

    Keyword arguments are the fields of :class:`PostmarkConfig`::

        PostmarkProvider(server_token="...")

    Raises:
        ConfigurationError: invalid settings.
    """

    name: ClassVar[str] = "postmark"
    service: ClassVar[str] = "Postmark"
    credentials_refused: ClassVar[str] = "the server token was refused"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL})
    Config: ClassVar[type[ProviderConfig]] = PostmarkConfig
    #: One Tag per message; 10 metadata fields, two of them the library's; 10 MB a message.
    capabilities: ClassVar[Capabilities] = Capabilities(
        features=frozenset(Feature), max_message_bytes=10 * 1024 * 1024, max_tags=1, max_metadata=8
    )

    config: PostmarkConfig

    def __init__(self, *, server_token: SecretStr | str, **options: Any) -> None:
        super().__init__(server_token=server_token, **options)

    @classmethod
    def check_options(cls, options: EmailOptions) -> None:
        super().check_options(options)
        for key, value in options.metadata.items():
            if len(key) > _MAX_METADATA_KEY or len(value) > _MAX_METADATA_VALUE:
                raise UnsupportedFeatureError(
                    f"provider 'postmark' takes metadata keys of at most {_MAX_METADATA_KEY} "
                    f"characters and values of at most {_MAX_METADATA_VALUE}; {key!r} is longer",
                    feature="metadata",
                    provider=cls.name,
                )

    # --- hooks -------------------------------------------------------------------------

    def auth(self) -> httpx.Auth:
        return HeaderAuth("X-Postmark-Server-Token", self.config.server_token.get_secret_value())

    def secrets(self) -> Iterable[str]:
        return (self.config.server_token.get_secret_value(),)

    def build_payload(self, message: EmailMessage) -> dict[str, Any]:
        """The ``/email`` request body for ``message``.

        Raises:
            HeaderInjectionError: a subject, display name or header holds a line break.
            InvalidRecipientError: no recipient, or an address that cannot be sent.
            ValidationError: a reserved header, or an email without any body.
        """
        if not message.to:
            raise InvalidRecipientError("an email needs at least one recipient", field="to")
        if not message.text and not message.html:
            raise ValidationError("the email has neither text nor HTML", field="text")
        payload: dict[str, Any] = {
            "From": _address(message.from_addr, "from_addr"),
            "To": _addresses(message.to, "to"),
            "Subject": check_header_value(message.subject, "subject"),
        }
        if message.cc:
            payload["Cc"] = _addresses(message.cc, "cc")
        if message.bcc:
            payload["Bcc"] = _addresses(message.bcc, "bcc")
        if message.reply_to is not None:
            payload["ReplyTo"] = _address(message.reply_to, "reply_to")
        if message.text:
            payload["TextBody"] = message.text
        if message.html:
            payload["HtmlBody"] = message.html
        tag = message.tags[0] if message.tags else message.kind
        if tag:
            payload["Tag"] = tag[:1000]
        headers = [
            {"Name": name, "Value": value}
            for name, value in outgoing_headers(message.headers, message.notification_id)
        ]
        if headers:
            payload["Headers"] = headers
        metadata = dict(message.metadata)
        for key, value in (
            ("tenant_id", message.tenant_id),
            ("notification_id", message.notification_id),
        ):
            if value:
                metadata[key] = value[:_MAX_METADATA_VALUE]
        if metadata:
            payload["Metadata"] = metadata
        if message.attachments:
            payload["Attachments"] = [
                {
                    "Name": a.filename,
                    "Content": base64.b64encode(a.content).decode("ascii"),
                    "ContentType": a.content_type or "application/octet-stream",
                    **({"ContentID": f"cid:{a.content_id}"} if a.content_id else {}),
                }
                for a in message.attachments
            ]
        payload["MessageStream"] = self.config.message_stream
        # Always said, on or off: a server's own defaults may track, and tracking is
        # the tenant's choice. Links are rewritten in the HTML part only.
        payload["TrackOpens"] = message.track_opens
        payload["TrackLinks"] = "HtmlOnly" if message.track_clicks else "None"
        return payload

    def build_request(self, message: Message) -> HttpRequest:
        assert isinstance(message, EmailMessage)  # the base checked the channel
        body = json.dumps(self.build_payload(message), ensure_ascii=False, separators=(",", ":"))
        return HttpRequest(SEND_PATH, body.encode("utf-8"))

    def message_id(self, response: httpx.Response) -> str | None:
        value = json_object(response).get("MessageID")
        return value if isinstance(value, str) and value else None

    # --- errors ------------------------------------------------------------------------

    def error_details(self, response: httpx.Response) -> ErrorDetails:
        data = json_object(response)
        code = data.get("ErrorCode")
        message = data.get("Message")
        if not isinstance(code, int) or isinstance(code, bool):
            return super().error_details(response)
        text = " ".join(str(message or "").split())
        return ErrorDetails(f"ErrorCode {code}: {text}" if text else f"ErrorCode {code}", code=code)

    def classify_error(
        self, response: httpx.Response, details: ErrorDetails, reply: str, context: ErrorContext
    ) -> DeliveryError | None:
        code = details.code if isinstance(details.code, int) else None
        if response.status_code != 422 or code is None:
            return None
        if code in _RECIPIENT_CODES or (code == 300 and "address" in reply.lower()):
            return PermanentDeliveryError(
                "Postmark refused the recipient",
                provider_response=reply,
                recipient_error=True,
                **context,
            )
        if code in _ACCOUNT_CODES:
            return PermanentDeliveryError(
                "Postmark refused to send for this sender or account",
                provider_response=reply,
                **context,
            )
        return PermanentDeliveryError(
            "Postmark refused the message", provider_response=reply, **context
        )


def _address(address: Address, field: str) -> str:
    addr_spec = envelope_address(address.email, f"{field}.email")
    if not address.name:
        return addr_spec
    name = check_header_value(address.name, f"{field}.name")
    # A quoted name, so commas and other punctuation in it stay part of it.
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{addr_spec}>'


def _addresses(addresses: tuple[Address, ...], field: str) -> str:
    return ", ".join(_address(a, f"{field}[{i}]") for i, a in enumerate(addresses))
