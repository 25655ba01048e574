"""Amazon SNS's HTTP(S) deliveries: verify the message signature, confirm subscriptions.

SNS signs every message it posts to an HTTP(S) subscriber with the private key of
an X.509 certificate it publishes at ``SigningCertURL``. :func:`verify_sns_message`
checks that:

* the certificate URL is ``https://sns.<region>.amazonaws.com/...pem`` (or the
  ``.amazonaws.com.cn`` partition); any other host is refused before anything is
  fetched, so a forged message cannot make us fetch (or trust) a key of its choosing;
* the certificate is current, and the ``Signature`` verifies over SNS's canonical
  string of the message's fields with it: RSA PKCS#1 v1.5 with SHA-1 for
  ``SignatureVersion`` 1, SHA-256 for 2;
* the ``TopicArn`` is one the host subscribed (any AWS account can subscribe a URL
  to its own topic and SNS would sign that account's messages just the same).

Certificates are fetched through a ``fetch(url) -> bytes`` callable (injectable; the
default uses httpx over verified HTTPS, with a timeout and a size cap) and cached by
URL. :func:`confirm_subscription` follows a ``SubscriptionConfirmation``'s
``SubscribeURL`` through the same fetcher, again only on an SNS host. Needs
``cryptography`` (extra ``webhooks``).

SNS carries other services' events: :mod:`tenant_notify.webhooks.ses` reads the SES
events inside.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..errors import MissingDependencyError, WebhookPayloadError, WebhookVerificationError
from .base import load_json, payload

__all__ = [
    "SNS_MESSAGE_TYPE_HEADER",
    "Fetch",
    "SnsMessage",
    "confirm_subscription",
    "default_fetch",
    "parse_sns_message",
    "verify_sns_message",
]

SNS_MESSAGE_TYPE_HEADER = "x-amz-sns-message-type"
#: ``fetch(url) -> bytes``: how certificates are fetched and subscriptions confirmed.
Fetch = Callable[[str], bytes]
SnsMessage = dict[str, str]

#: The hosts SNS serves certificates and subscription URLs from.
_SNS_HOST = re.compile(r"^sns\.[a-z]{2}(?:-[a-z]+)+-\d{1,2}\.amazonaws\.com(?:\.cn)?$")
_MAX_CERTIFICATE = 64 * 1024
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]
_REQUIRED = ("Type", "MessageId", "TopicArn", "Timestamp", "Signature", "SigningCertURL")


def _crypto() -> Any:
    try:
        from cryptography import exceptions, x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    except ModuleNotFoundError as err:
        raise MissingDependencyError("cryptography", "webhooks") from err
    return exceptions, x509, hashes, padding, rsa


def sns_url(url: str) -> bool:
    """Whether ``url`` is an HTTPS URL on an SNS host (certificates, subscribe URLs)."""
    parts = urlsplit(url)
    return (
        parts.scheme == "https"
        and parts.hostname is not None
        and _SNS_HOST.fullmatch(parts.hostname) is not None
        and parts.port in (None, 443)
        and not parts.username
    )


def default_fetch(url: str) -> bytes:
    """GET ``url`` over verified HTTPS (5 s timeout, 64 KiB at most)."""
    try:
        import httpx
    except ModuleNotFoundError as err:
        raise MissingDependencyError("httpx", "http") from err
    try:
        with httpx.stream("GET", url, timeout=5.0, follow_redirects=False) as response:
            response.raise_for_status()
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > _MAX_CERTIFICATE:
                    raise WebhookVerificationError("the SNS reply is too large", provider="sns")
            return data
    except httpx.HTTPError as err:
        raise WebhookVerificationError(
            f"cannot fetch {url}: {type(err).__name__}", provider="sns"
        ) from err


@payload("sns")
def parse_sns_message(body: bytes | str) -> SnsMessage:
    """The fields of the JSON message SNS posted.

    Raises:
        WebhookPayloadError: not an SNS message.
    """
    data = load_json(body, "sns")
    if not isinstance(data, dict):
        raise WebhookPayloadError("the body is not an SNS message", provider="sns")
    missing = [key for key in _REQUIRED if not isinstance(data.get(key), str)]
    if missing or data["Type"] not in _SIGNED_FIELDS:
        raise WebhookPayloadError(
            f"not an SNS message (missing {', '.join(missing) or 'a known Type'})",
            provider="sns",
        )
    return {key: value for key, value in data.items() if isinstance(value, str)}


def string_to_sign(message: Mapping[str, str]) -> bytes:
    """SNS's canonical form of a message: each signed field's name and value on a
    line of its own, in SNS's order (``Subject`` only when the message has one)."""
    lines = []
    for key in _SIGNED_FIELDS[message["Type"]]:
        if key in message:
            lines += [key, message[key]]
    return ("\n".join(lines) + "\n").encode("utf-8")


class _CertificateCache:
    """Certificates by URL: SNS signs with one certificate for long stretches."""

    def __init__(self, size: int = 32) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._certs: dict[tuple[int, str], Any] = {}

    def get(self, url: str, fetch: Fetch) -> Any:
        key = (id(fetch), url)
        with self._lock:
            cert = self._certs.get(key)
        if cert is None:
            cert = _load_certificate(fetch(url))
            with self._lock:
                if len(self._certs) >= self._size:
                    self._certs.pop(next(iter(self._certs)))
                self._certs[key] = cert
        return cert


_CERTIFICATES = _CertificateCache()


def _load_certificate(data: bytes) -> Any:
    _, x509, _, _, rsa = _crypto()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise WebhookVerificationError(
            "the SigningCertURL does not hold a PEM certificate", provider="sns"
        ) from err
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise WebhookVerificationError("the SNS certificate is not an RSA key", provider="sns")
    return cert


def verify_sns_message(
    message: Mapping[str, str],
    *,
    topic_arns: Iterable[str],
    fetch: Fetch | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Check that ``message`` was signed by SNS, for one of ``topic_arns``.

    Args:
        message: From :func:`parse_sns_message`.
        topic_arns: The topics the host subscribed this endpoint to.
        fetch: ``fetch(url) -> bytes`` for the certificate (default :func:`default_fetch`).
        now: The current time, for tests of the certificate's validity.

    Raises:
        WebhookVerificationError: another topic, a certificate URL off SNS's hosts,
            an unusable or expired certificate, or a signature that does not verify.
    """
    exceptions, _, hashes, padding, _ = _crypto()
    allowed = {topic_arns} if isinstance(topic_arns, str) else set(topic_arns)
    if message.get("TopicArn") not in allowed:
        raise WebhookVerificationError(
            "the message is for a topic this endpoint does not serve", provider="sns"
        )
    url = message.get("SigningCertURL", "")
    if not sns_url(url) or not urlsplit(url).path.endswith(".pem"):
        raise WebhookVerificationError(
            "the SigningCertURL is not an https://sns.<region>.amazonaws.com/... .pem URL",
            provider="sns",
        )
    version = message.get("SignatureVersion")
    algorithm = {"1": hashes.SHA1, "2": hashes.SHA256}.get(version or "")
    if algorithm is None:
        raise WebhookVerificationError(
            f"unknown SignatureVersion {version!r} (1 and 2 are known)", provider="sns"
        )
    try:
        signature = base64.b64decode(message.get("Signature", ""), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the signature is not base64", provider="sns") from None
    cert = _CERTIFICATES.get(url, fetch or default_fetch)
    moment = now or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise WebhookVerificationError("the SNS certificate is not valid now", provider="sns")
    try:
        cert.public_key().verify(
            signature, string_to_sign(message), padding.PKCS1v15(), algorithm()
        )
    except exceptions.InvalidSignature:
        raise WebhookVerificationError(
            "the SNS signature does not match the message", provider="sns"
        ) from None


def confirm_subscription(message: Mapping[str, str], *, fetch: Fetch | None = None) -> None:
    """Confirm a verified ``SubscriptionConfirmation`` by visiting its SubscribeURL.

    Raises:
        WebhookVerificationError: the SubscribeURL is not on an SNS host, or the
            visit failed.
    """
    url = message.get("SubscribeURL", "")
    if not sns_url(url):
        raise WebhookVerificationError(
            "the SubscribeURL is not an https://sns.<region>.amazonaws.com/ URL", provider="sns"
        )
    (fetch or default_fetch)(url)
