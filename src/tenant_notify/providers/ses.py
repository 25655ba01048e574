"""Send email through Amazon SES v2 (``POST /v2/email/outbound-emails``), without boto3.

Settings (``[email]`` or a tenant's ``[tenants.X.email]``)::

    [email]
    provider = "ses"
    region = "eu-west-1"
    access_key_id = "AKIA..."
    secret_access_key = "..."              # kept as a SecretStr
    # session_token = "..."                # temporary (STS) credentials
    # configuration_set = "transactional"  # event publishing (delivery events)
    # tracking_configuration_set = "tracked"  # for tenants that track opens and clicks
    # endpoint_url = "http://127.0.0.1:5000"   # a test server or a VPC endpoint

A message without attachments goes as SES's ``Simple`` content (subject, text and
HTML bodies, headers); one with attachments or inline images goes as ``Raw``: the
same MIME the SMTP provider writes, base64-encoded. ``Destination`` names every
recipient (bcc included, which never appears in a header). Metadata becomes
``EmailTags`` (SES reports them in its events), so its keys and values must use
the characters SES allows. SES has no tags list: a send with ``tags`` is refused
at the call. The ``MessageId`` of the reply becomes the status's
``provider_message_id``, which SES's delivery events (through SNS, see
:mod:`tenant_notify.webhooks.ses`) name.

Error mapping (every error carries ``provider="ses"``, the ids, and SES's error code
and message as ``provider_response``; the keys never appear):

=============================================  ========================================
Reply                                          Raised
=============================================  ========================================
200                                            accepted
429 ``TooManyRequestsException``, any          ``TransientDeliveryError``
throttling code, 5xx
``MessageRejected``, ``BadRequestException``,  ``PermanentDeliveryError``; for an
``NotFoundException`` (configuration set)      unverified identity with ``sender_fault``
``AccountSuspendedException``,                 ``PermanentDeliveryError``: this
``SendingPausedException``,                    account's state, so another provider
``MailFromDomainNotVerifiedException``         may be tried; ``sender_fault``
403 (signature, credentials)                   ``PermanentDeliveryError``
connect failure, read timeout, ...             see :mod:`tenant_notify.providers.http`
=============================================  ========================================
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
from collections.abc import Iterable
from typing import Any, ClassVar

import httpx
from pydantic import Field

from .._headers import check_header_value, outgoing_headers
from .._mime import envelope_address, wire_bytes
from ..errors import (
    DeliveryError,
    InvalidRecipientError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnsupportedFeatureError,
    ValidationError,
)
from ..models import Address, Channel, EmailMessage, EmailOptions, Feature, Message
from ._aws import THROTTLING_CODES, AwsConfig, SigV4Auth
from .base import Capabilities, ProviderConfig
from .http import (
    ErrorContext,
    ErrorDetails,
    HttpProvider,
    HttpRequest,
    json_object,
    retry_after,
)

__all__ = ["SesConfig", "SesProvider", "rest_json_error"]

SEND_PATH = "/v2/email/outbound-emails"
#: What SES allows in an email tag's name and value.
_TAG_TEXT = re.compile(r"[A-Za-z0-9_-]{1,256}")
_ACCOUNT_CODES = frozenset(
    {"AccountSuspendedException", "SendingPausedException", "MailFromDomainNotVerifiedException"}
)


class SesConfig(AwsConfig):
    """Settings of the SES provider (see :class:`~tenant_notify.providers._aws.AwsConfig`).

    Attributes:
        configuration_set: The configuration set to send with (event publishing,
            dedicated IPs), if any.
        tracking_configuration_set: The configuration set to send tracked emails
            with instead (one whose event destination publishes ``Open`` and
            ``Click`` events, with open and click tracking on); without it the
            library tracks SES emails itself, when ``[links]`` is set.
    """

    endpoint_prefix: ClassVar[str] = "email"

    configuration_set: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    tracking_configuration_set: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class SesProvider(HttpProvider):
    """Deliver email through Amazon SES v2.

    Keyword arguments are the fields of :class:`SesConfig`::

        SesProvider(region="eu-west-1", access_key_id="AKIA...", secret_access_key="...")

    Raises:
        ConfigurationError: invalid settings.
    """

    name: ClassVar[str] = "ses"
    service: ClassVar[str] = "SES"
    credentials_refused: ClassVar[str] = (
        "the access key, its signature or its permission (ses:SendEmail) was refused"
    )
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL})
    Config: ClassVar[type[ProviderConfig]] = SesConfig
    #: SES v2 takes messages of up to 40 MB; it has no list of tags. It tracks
    #: opens and clicks through a configuration set (see :meth:`tracks`).
    capabilities: ClassVar[Capabilities] = Capabilities(
        features=frozenset(Feature) - {Feature.TAGS}, max_message_bytes=40 * 1000 * 1000
    )

    config: SesConfig

    @classmethod
    def tracks(cls, config: ProviderConfig | None) -> frozenset[Feature]:
        # The configuration set tracks, not the request: only with one for it.
        if isinstance(config, SesConfig) and config.tracking_configuration_set:
            return super().tracks(config)
        return frozenset()

    def __init__(self, *, region: str, **options: Any) -> None:
        super().__init__(region=region, **options)

    @classmethod
    def check_options(cls, options: EmailOptions) -> None:
        super().check_options(options)
        for key, value in options.metadata.items():
            if not _TAG_TEXT.fullmatch(value):
                raise UnsupportedFeatureError(
                    f"provider 'ses' sends metadata as email tags, whose values are 1 to 256 "
                    f"letters, digits, '_' or '-'; {key!r} is not",
                    feature="metadata",
                    provider=cls.name,
                )

    # --- hooks -------------------------------------------------------------------------

    def auth(self) -> httpx.Auth:
        return SigV4Auth(self.config, "ses")

    def secrets(self) -> Iterable[str]:
        return self.config.secret_values()

    def build_payload(self, message: EmailMessage) -> dict[str, Any]:
        """The SendEmail request body for ``message``.

        Raises:
            HeaderInjectionError: a subject, display name or header holds a line break.
            InvalidRecipientError: no recipient, or an address that cannot be sent.
            ValidationError: a reserved header, or an email without any body.
        """
        if not message.to:
            raise InvalidRecipientError("an email needs at least one recipient", field="to")
        destination: dict[str, list[str]] = {}
        for key, field, addresses in (
            ("ToAddresses", "to", message.to),
            ("CcAddresses", "cc", message.cc),
            ("BccAddresses", "bcc", message.bcc),
        ):
            if addresses:
                destination[key] = [_address(a, f"{field}[{i}]") for i, a in enumerate(addresses)]
        payload: dict[str, Any] = {
            "FromEmailAddress": _address(message.from_addr, "from_addr"),
            "Destination": destination,
        }
        if message.reply_to is not None:
            payload["ReplyToAddresses"] = [_address(message.reply_to, "reply_to")]
        if message.attachments:
            raw, _ = wire_bytes(message)
            payload["Content"] = {"Raw": {"Data": base64.b64encode(raw).decode("ascii")}}
        else:
            payload["Content"] = {"Simple": _simple(message)}
        if message.metadata:
            payload["EmailTags"] = [{"Name": k, "Value": v} for k, v in message.metadata.items()]
        tracked = message.track_opens or message.track_clicks
        configuration_set = (
            self.config.tracking_configuration_set if tracked else self.config.configuration_set
        )
        if configuration_set is not None:
            payload["ConfigurationSetName"] = configuration_set
        return payload

    def build_request(self, message: Message) -> HttpRequest:
        assert isinstance(message, EmailMessage)  # the base checked the channel
        body = json.dumps(self.build_payload(message), ensure_ascii=False, separators=(",", ":"))
        return HttpRequest(SEND_PATH, body.encode("utf-8"))

    def message_id(self, response: httpx.Response) -> str | None:
        value = json_object(response).get("MessageId")
        return value if isinstance(value, str) and value else None

    # --- errors ------------------------------------------------------------------------

    def error_details(self, response: httpx.Response) -> ErrorDetails:
        return rest_json_error(response) or super().error_details(response)

    def classify_error(
        self, response: httpx.Response, details: ErrorDetails, reply: str, context: ErrorContext
    ) -> DeliveryError | None:
        code = details.code
        if code in THROTTLING_CODES:
            return TransientDeliveryError(
                "SES is throttling this account (sending rate or quota)",
                provider_response=reply,
                retry_after=retry_after(response.headers),
                throttled=True,
                **context,
            )
        if code in _ACCOUNT_CODES:
            return PermanentDeliveryError(
                "SES refused to send for this account or sender domain",
                provider_response=reply,
                sender_fault=True,
                **context,
            )
        if code == "MessageRejected":
            # "Email address is not verified. The following identities failed the
            # check ...": the tenant's sender identity, not the message, is at fault.
            unverified = "not verified" in details.text.lower()
            return PermanentDeliveryError(
                "SES refused the unverified sender identity"
                if unverified
                else "SES rejected the message",
                provider_response=reply,
                sender_fault=unverified,
                **context,
            )
        return None


def rest_json_error(response: httpx.Response) -> ErrorDetails | None:
    """The code and message of an AWS REST-JSON error reply (``x-amzn-ErrorType``
    header, or ``__type``/``code`` in the body), or None when it is not one."""
    data = json_object(response)
    code = response.headers.get("x-amzn-errortype") or data.get("__type") or data.get("code")
    if not isinstance(code, str) or not code:
        return None
    # "MessageRejected:http://internal.amazon.com/..." or "com.amazonaws...#MessageRejected"
    code = code.partition(":")[0].rpartition("#")[2]
    message = data.get("message") or data.get("Message") or ""
    text = f"{code}: {' '.join(str(message).split())}" if message else code
    return ErrorDetails(text, code=code)


def _address(address: Address, field: str) -> str:
    addr_spec = envelope_address(address.email, f"{field}.email")
    if not address.name:
        return addr_spec
    name = check_header_value(address.name, f"{field}.name")
    # SES takes "Name <address>", with RFC 2047 for a non-ASCII name.
    return email.utils.formataddr((name, addr_spec), charset="utf-8")


def _simple(message: EmailMessage) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if message.text:
        body["Text"] = {"Data": message.text, "Charset": "UTF-8"}
    if message.html:
        body["Html"] = {"Data": message.html, "Charset": "UTF-8"}
    if not body:
        raise ValidationError("the email has neither text nor HTML", field="text")
    simple: dict[str, Any] = {
        "Subject": {"Data": check_header_value(message.subject, "subject"), "Charset": "UTF-8"},
        "Body": body,
    }
    headers = [
        {"Name": name, "Value": value}
        for name, value in outgoing_headers(message.headers, message.notification_id)
    ]
    if headers:
        simple["Headers"] = headers
    return simple
