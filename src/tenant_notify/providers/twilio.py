"""Send SMS through Twilio's Messages API (``POST /2010-04-01/Accounts/{sid}/Messages.json``),
without the SDK.

Settings (``[sms]`` or a tenant's ``[tenants.X.sms]``)::

    [sms]
    provider = "twilio"
    account_sid = "AC..."
    auth_token = "..."                    # or api_key_sid = "SK..." + api_key_secret
    # messaging_service_sid = "MG..."     # send through a Messaging Service: no From
    # status_callback = "https://shop.example/hooks/twilio"   # delivery events

The form-encoded request carries ``To``, ``Body`` and ``From`` (the tenant's
``sms_from``) or ``MessagingServiceSid``, and ``StatusCallback`` when set; it is
authenticated with HTTP basic auth (account SID and auth token, or an API key SID
and secret). The ``sid`` of the 201 reply becomes the status's ``provider_message_id``.

Error mapping (every error carries ``provider="twilio"``, the ids, and Twilio's
``code``, ``message`` and ``more_info`` as ``provider_response``; the token never
appears):

===========================================  ==========================================
Reply                                        Raised
===========================================  ==========================================
201                                          accepted
HTTP 429, or Twilio code 20429               ``TransientDeliveryError`` (``retry_after``
                                             from ``Retry-After`` when present)
5xx                                          ``TransientDeliveryError``
code 21211 (invalid To), 21610 (recipient    ``PermanentDeliveryError`` with
replied STOP), 21614 (To is not a mobile     ``recipient_error``: no failover, another
number)                                      provider must not be asked; 21610 also
                                             ``suppress_as="unsubscribe"``
code 21408 (region not enabled for the       ``PermanentDeliveryError``; may fail over:
account)                                     it is this account's setting
code 21212, 21606, 21659, 21660 (invalid     ``PermanentDeliveryError`` with
From); 401 (code 20003)                      ``sender_fault`` (the breaker counts it)
other 4xx                                    ``PermanentDeliveryError``
connect failure, read timeout, ...           see :mod:`tenant_notify.providers.http`
===========================================  ==========================================

A read timeout after the request went out is an ``AmbiguousDeliveryError``:
Twilio may have queued the SMS. The default retry policy does not retry it (a
retry could text the recipient twice); ``[retry] retry_ambiguous = true`` does.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlencode, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from ..errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from ..models import Channel, DeliveryResult, Message, SmsMessage
from .base import ProviderConfig
from .http import (
    ErrorContext,
    ErrorDetails,
    HttpConfig,
    HttpProvider,
    HttpRequest,
    json_object,
    retry_after,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["RECIPIENT_ERROR_CODES", "SENDER_FAULT_CODES", "TwilioConfig", "TwilioProvider"]

DEFAULT_BASE_URL = "https://api.twilio.com"
#: Twilio error codes that refuse the recipient itself: no failover after them.
RECIPIENT_ERROR_CODES = frozenset({21211, 21610, 21614})
#: Twilio error codes that mean "slow down".
RATE_LIMIT_CODES = frozenset({20429})
#: Twilio error codes that blame the tenant's sending setup (the breaker counts them):
#: an invalid From, a From the account does not own or that cannot send SMS.
SENDER_FAULT_CODES = frozenset({21212, 21606, 21659, 21660})
#: The recipient replied STOP: suppress the number.
OPTED_OUT_CODE = 21610
_TWILIO_NAMES = {
    21211: "invalid 'To' phone number",
    21212: "invalid 'From' phone number",
    21606: "the 'From' number cannot send SMS (or is not the account's)",
    21659: "'From' is not a Twilio number or short code of the account",
    21660: "'From' does not belong to the account",
    21408: "permission to send to this region is not enabled on the account",
    21610: "the recipient has opted out (replied STOP)",
    21614: "'To' is not a mobile number",
    20003: "authentication failed",
}


class TwilioConfig(HttpConfig):
    """Settings of the Twilio provider.

    Attributes:
        account_sid: The account (``AC`` + 32 hex digits); part of the URL.
        auth_token: The account's auth token; or use an API key:
        api_key_sid: An API key (``SK`` + 32 hex digits) ...
        api_key_secret: ... and its secret.
        messaging_service_sid: Send through this Messaging Service (``MG...``):
            Twilio picks the sender, so ``From`` is left out.
        status_callback: URL Twilio posts status changes to (see
            :func:`tenant_notify.webhooks.apply_twilio_callback`).
        base_url: ``https://api.twilio.com``, or a test server.
        connect_timeout, read_timeout, max_connections, verify_tls: see
            :class:`~tenant_notify.providers.http.HttpConfig`.
    """

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr | None = None
    api_key_sid: str | None = Field(default=None, pattern=r"^SK[0-9a-fA-F]{32}$")
    api_key_secret: SecretStr | None = None
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    status_callback: str | None = None
    base_url: str = DEFAULT_BASE_URL

    @field_validator("status_callback")
    @classmethod
    def _check_callback(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> TwilioConfig:
        has_key = self.api_key_sid is not None or self.api_key_secret is not None
        if self.auth_token is not None and has_key:
            raise ValueError("give auth_token or api_key_sid and api_key_secret, not both")
        if has_key and (self.api_key_sid is None or self.api_key_secret is None):
            raise ValueError("api_key_sid and api_key_secret go together")
        if self.auth_token is None and not has_key:
            raise ValueError(
                "credentials are missing: auth_token, or api_key_sid and api_key_secret"
            )
        for secret in (self.auth_token, self.api_key_secret):
            if secret is not None and not secret.get_secret_value().strip():
                raise ValueError("a token or secret must not be empty")
        return self


class TwilioProvider(HttpProvider):
    """Deliver SMS through Twilio's Messages API.

    Keyword arguments are the fields of :class:`TwilioConfig`::

        TwilioProvider(account_sid="AC...", auth_token="...")

    Raises:
        ConfigurationError: invalid settings.
    """

    name: ClassVar[str] = "twilio"
    service: ClassVar[str] = "Twilio"
    credentials_refused: ClassVar[str] = (
        "the credentials were refused (account SID and auth token or API key)"
    )
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.SMS})
    Config: ClassVar[type[ProviderConfig]] = TwilioConfig

    config: TwilioConfig

    def __init__(self, *, account_sid: str, **options: Any) -> None:
        super().__init__(account_sid=account_sid, **options)
        self._path = f"/2010-04-01/Accounts/{quote(account_sid)}/Messages.json"

    # --- hooks -------------------------------------------------------------------------

    def _credentials(self) -> tuple[str, str]:
        cfg = self.config
        if cfg.api_key_sid is not None and cfg.api_key_secret is not None:
            return cfg.api_key_sid, cfg.api_key_secret.get_secret_value()
        assert cfg.auth_token is not None
        return cfg.account_sid, cfg.auth_token.get_secret_value()

    def auth(self) -> httpx.Auth:
        import httpx  # present: the base imported it

        return httpx.BasicAuth(*self._credentials())

    def secrets(self) -> Iterable[str]:
        user, secret = self._credentials()
        return (secret, base64.b64encode(f"{user}:{secret}".encode()).decode("ascii"))

    # --- sending -----------------------------------------------------------------------

    def build_form(self, message: SmsMessage) -> dict[str, str]:
        """The form fields of the Messages request for ``message``."""
        form = {"To": message.to, "Body": message.body}
        if self.config.messaging_service_sid is not None:
            form["MessagingServiceSid"] = self.config.messaging_service_sid
        else:
            form["From"] = message.from_number
        if self.config.status_callback is not None:
            form["StatusCallback"] = self.config.status_callback
        return form

    def build_request(self, message: Message) -> HttpRequest:
        assert isinstance(message, SmsMessage)  # the base checked the channel
        body = urlencode(self.build_form(message)).encode("ascii")
        return HttpRequest(self._path, body, "application/x-www-form-urlencoded")

    def parse_result(self, response: httpx.Response, message: Message) -> DeliveryResult:
        resource = json_object(response)
        sid = resource.get("sid")
        detail: dict[str, Any] = {"status_code": response.status_code}
        for key in ("status", "num_segments", "messaging_service_sid"):
            if isinstance(resource.get(key), str):
                detail[key] = resource[key]
        return DeliveryResult(
            provider=self.name,
            provider_message_id=sid if isinstance(sid, str) and sid else None,
            detail=detail,
        )

    # --- errors ------------------------------------------------------------------------

    def error_details(self, response: httpx.Response) -> ErrorDetails:
        data = json_object(response)
        code = data.get("code") if isinstance(data.get("code"), int) else None
        message = data.get("message") if isinstance(data.get("message"), str) else None
        if code is None and not message:
            return super().error_details(response)
        parts = [f"code {code}:" if code is not None else "", " ".join((message or "").split())]
        if isinstance(data.get("more_info"), str):
            parts.append(f"({data['more_info']})")
        return ErrorDetails(" ".join(p for p in parts if p), code=code)

    def classify_error(
        self, response: httpx.Response, details: ErrorDetails, reply: str, context: ErrorContext
    ) -> DeliveryError | None:
        code = details.code if isinstance(details.code, int) else None
        if code in RATE_LIMIT_CODES:
            return TransientDeliveryError(
                "Twilio rate limit reached",
                provider_response=reply,
                retry_after=retry_after(response.headers),
                throttled=True,
                **context,
            )
        what = _TWILIO_NAMES.get(code or 0)
        if code in RECIPIENT_ERROR_CODES:
            return PermanentDeliveryError(
                f"Twilio refused the recipient: {what}",
                provider_response=reply,
                recipient_error=True,
                suppress_as="unsubscribe" if code == OPTED_OUT_CODE else None,
                **context,
            )
        if what and 400 <= response.status_code < 500 and response.status_code not in (401, 429):
            return PermanentDeliveryError(
                f"Twilio refused the message: {what}",
                provider_response=reply,
                sender_fault=code in SENDER_FAULT_CODES,
                **context,
            )
        return None
