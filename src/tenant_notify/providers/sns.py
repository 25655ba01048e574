"""Send SMS through Amazon SNS (``Publish`` to a phone number), without boto3.

Settings (``[sms]`` or a tenant's ``[tenants.X.sms]``)::

    [sms]
    provider = "sns"
    region = "eu-west-1"
    access_key_id = "AKIA..."
    secret_access_key = "..."              # kept as a SecretStr
    # sender_id = "AcmeShop"               # alphanumeric sender id, where carriers allow
    # sms_type = "Promotional"             # Transactional by default
    # endpoint_url = "http://127.0.0.1:5000"

The form-encoded ``Publish`` request carries ``PhoneNumber``, ``Message`` and the
message attributes ``AWS.SNS.SMS.SMSType`` and, when there is one,
``AWS.SNS.SMS.SenderID`` (the ``sender_id`` setting, else the tenant's ``sms_from``
when it is alphanumeric) or ``AWS.MM.SMS.OriginationNumber`` (the tenant's
``sms_from`` when it is a number). The ``MessageId`` of the reply becomes the
status's ``provider_message_id``.

Error mapping (every error carries ``provider="sns"``, the ids, and SNS's error code
and message as ``provider_response``; the keys never appear):

=========================================  ==========================================
Reply                                      Raised
=========================================  ==========================================
200                                        accepted
``Throttling``, ``KMSThrottling``, 429,    ``TransientDeliveryError``
5xx (``InternalError``)
``OptedOut`` (the number replied STOP)     ``PermanentDeliveryError`` with
                                           ``recipient_error``: no failover
``InvalidParameter`` naming PhoneNumber    ``PermanentDeliveryError`` with
                                           ``recipient_error``
other 4xx, 403 ``AuthorizationError``      ``PermanentDeliveryError``
connect failure, read timeout, ...         see :mod:`tenant_notify.providers.http`
=========================================  ==========================================
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import httpx
from pydantic import field_validator

from ..errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from ..models import Channel, Message, SmsMessage
from ._aws import THROTTLING_CODES, AwsConfig, SigV4Auth
from .base import ProviderConfig
from .http import ErrorContext, ErrorDetails, HttpProvider, HttpRequest, retry_after

__all__ = ["SnsConfig", "SnsProvider"]

API_VERSION = "2010-03-31"
_ALPHANUMERIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9]{1,11}$")
#: Replies longer than this are not parsed (an SNS reply is a few hundred bytes).
_MAX_XML = 64 * 1024


class SnsConfig(AwsConfig):
    """Settings of the SNS provider (see :class:`~tenant_notify.providers._aws.AwsConfig`).

    Attributes:
        sender_id: Alphanumeric sender id (1 to 11 letters and digits), where the
            destination country allows one; overrides an alphanumeric ``sms_from``.
        sms_type: ``Transactional`` (optimised for reliability; the default) or
            ``Promotional`` (optimised for cost).
    """

    endpoint_prefix: ClassVar[str] = "sns"

    sender_id: str | None = None
    sms_type: Literal["Transactional", "Promotional"] = "Transactional"

    @field_validator("sender_id")
    @classmethod
    def _check_sender_id(cls, value: str | None) -> str | None:
        if value is not None and not _ALPHANUMERIC.match(value):
            raise ValueError("must be 1 to 11 letters and digits, at least one a letter")
        return value


class SnsProvider(HttpProvider):
    """Deliver SMS through Amazon SNS.

    Keyword arguments are the fields of :class:`SnsConfig`::

        SnsProvider(region="eu-west-1", access_key_id="AKIA...", secret_access_key="...")

    Raises:
        ConfigurationError: invalid settings.
    """

    name: ClassVar[str] = "sns"
    service: ClassVar[str] = "SNS"
    credentials_refused: ClassVar[str] = (
        "the access key, its signature or its permission (sns:Publish) was refused"
    )
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.SMS})
    Config: ClassVar[type[ProviderConfig]] = SnsConfig

    config: SnsConfig

    def __init__(self, *, region: str, **options: Any) -> None:
        super().__init__(region=region, **options)

    # --- hooks -------------------------------------------------------------------------

    def auth(self) -> httpx.Auth:
        return SigV4Auth(self.config, "sns")

    def secrets(self) -> Iterable[str]:
        return self.config.secret_values()

    def build_form(self, message: SmsMessage) -> list[tuple[str, str]]:
        """The form fields of the Publish request for ``message``."""
        attributes: list[tuple[str, str]] = [("AWS.SNS.SMS.SMSType", self.config.sms_type)]
        sender = self.config.sender_id
        if sender is None and _ALPHANUMERIC.match(message.from_number):
            sender = message.from_number
        if sender is not None:
            attributes.append(("AWS.SNS.SMS.SenderID", sender))
        elif message.from_number.startswith("+"):
            attributes.append(("AWS.MM.SMS.OriginationNumber", message.from_number))
        form = [
            ("Action", "Publish"),
            ("Version", API_VERSION),
            ("PhoneNumber", message.to),
            ("Message", message.body),
        ]
        for index, (name, value) in enumerate(attributes, start=1):
            prefix = f"MessageAttributes.entry.{index}"
            form += [
                (f"{prefix}.Name", name),
                (f"{prefix}.Value.DataType", "String"),
                (f"{prefix}.Value.StringValue", value),
            ]
        return form

    def build_request(self, message: Message) -> HttpRequest:
        assert isinstance(message, SmsMessage)  # the base checked the channel
        body = urlencode(self.build_form(message)).encode("ascii")
        return HttpRequest("/", body, "application/x-www-form-urlencoded; charset=utf-8")

    def message_id(self, response: httpx.Response) -> str | None:
        root = _xml(response)
        if root is None:
            return None
        for element in root.iter():
            if element.tag.rpartition("}")[2] == "MessageId" and element.text:
                return element.text.strip()
        return None

    # --- errors ------------------------------------------------------------------------

    def error_details(self, response: httpx.Response) -> ErrorDetails:
        root = _xml(response)
        if root is not None:
            fields = {e.tag.rpartition("}")[2]: (e.text or "").strip() for e in root.iter()}
            code = fields.get("Code")
            if code:
                message = " ".join(fields.get("Message", "").split())
                return ErrorDetails(f"{code}: {message}" if message else code, code=code)
        return super().error_details(response)

    def classify_error(
        self, response: httpx.Response, details: ErrorDetails, reply: str, context: ErrorContext
    ) -> DeliveryError | None:
        code = details.code
        if code in THROTTLING_CODES or code == "Throttled":
            return TransientDeliveryError(
                "SNS is throttling this account",
                provider_response=reply,
                retry_after=retry_after(response.headers),
                throttled=True,
                **context,
            )
        if code in ("OptedOut", "OptedOutException"):
            return PermanentDeliveryError(
                "SNS refused the recipient: the number has opted out (replied STOP)",
                provider_response=reply,
                recipient_error=True,
                **context,
            )
        if code in ("InvalidParameter", "ParameterValueInvalid") and "PhoneNumber" in reply:
            return PermanentDeliveryError(
                "SNS refused the recipient: not a valid phone number",
                provider_response=reply,
                recipient_error=True,
                **context,
            )
        return None


def _xml(response: httpx.Response) -> ET.Element | None:
    content = response.content
    if not content or len(content) > _MAX_XML or b"<!DOCTYPE" in content or b"<!ENTITY" in content:
        # SNS never sends a DTD; refusing one keeps entity expansion out of reach.
        return None
    try:
        return ET.fromstring(content)  # noqa: S314 - no DTD, size-capped, see above
    except ET.ParseError:
        return None
