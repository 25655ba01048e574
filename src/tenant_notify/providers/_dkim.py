"""DKIM signing (RFC 6376) of the messages the SMTP provider sends, with dkimpy.

A tenant that brings its own sending domain signs with its own key: the
selector and the PEM private key go in its SMTP table (the key is a secret like
any other: a ``SecretStr``, never in a repr, log or error)::

    [tenants.acme.email]
    provider = "smtp"
    dkim_selector = "tn2026"
    dkim_private_key = "-----BEGIN PRIVATE KEY-----\\n..."   # or the environment
    # dkim_domain = "acme.example"     # default: the domain of each message's From

The signature (``rsa-sha256``, ``relaxed/simple``) covers From (twice, so no
second From can be added), To, Cc, Reply-To, Subject, Date, Message-ID,
MIME-Version, Content-Type and both ``List-Unsubscribe`` headers when the
message has them. ``tenant-notify check-domain`` looks the selector's record up.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigurationError, MissingDependencyError, PermanentDeliveryError

__all__ = ["SIGNED_HEADERS", "DkimSigner"]

#: Headers signed when present, in this order; From is signed once more at the end.
SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
_HEADER_NAME = re.compile(rb"^([!-9;-~]+):", re.MULTILINE)
#: Mailbox providers ignore (Gmail) or refuse keys shorter than this.
MIN_KEY_BITS = 1024


def _dkim() -> Any:
    try:
        import dkim
    except ModuleNotFoundError as err:
        raise MissingDependencyError("dkimpy", "deliverability", key="dkim_private_key") from err
    return dkim


class DkimSigner:
    """Signs raw messages with one domain's key.

    Args:
        selector: The DNS selector (``<selector>._domainkey.<domain>`` holds the key).
        private_key: The RSA private key in PEM (PKCS#1 or PKCS#8).
        domain: The signing domain ``d=``; None takes the From domain of each message.

    Raises:
        ConfigurationError: a key that is not a PEM RSA key of at least 1024 bits
            (the message never quotes the key), or a selector that is not a DNS label.
        MissingDependencyError: dkimpy is not installed (extra ``deliverability``).
    """

    def __init__(self, selector: str, private_key: str, domain: str | None = None) -> None:
        dkim = _dkim()
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})", selector):
            raise ConfigurationError("is not a DNS selector", key="dkim_selector")
        self._key = private_key.strip().encode("ascii", errors="replace") + b"\n"
        try:
            parsed = dkim.crypto.parse_pem_private_key(self._key)
        except Exception:
            # The parser's message may quote the key: say only what is wrong.
            raise ConfigurationError(
                "is not a PEM RSA private key", key="dkim_private_key"
            ) from None
        if int(parsed["modulus"]).bit_length() < MIN_KEY_BITS:
            raise ConfigurationError(
                f"the key is shorter than {MIN_KEY_BITS} bits", key="dkim_private_key"
            )
        self.selector = selector
        self.domain = domain

    def signature(self, raw: bytes, from_domain: str) -> bytes:
        """The ``DKIM-Signature`` header line (CRLF-terminated) to put before ``raw``.

        Raises:
            PermanentDeliveryError: dkimpy refused to sign the message.
        """
        dkim = _dkim()
        head = raw.split(b"\r\n\r\n", 1)[0]
        present = {name.lower().decode("ascii") for name in _HEADER_NAME.findall(head)}
        headers = [name for name in SIGNED_HEADERS if name in present]
        headers.append("from")  # over-signed: a From added later breaks the signature
        domain = (self.domain or from_domain).encode("ascii")
        try:
            line: bytes = dkim.sign(
                raw,
                self.selector.encode("ascii"),
                domain,
                self._key,
                include_headers=[name.encode("ascii") for name in headers],
                linesep=b"\r\n",
            )
        except dkim.DKIMException as err:
            raise PermanentDeliveryError(f"DKIM signing failed: {err}", provider="smtp") from None
        return line

    def __repr__(self) -> str:
        return f"DkimSigner(selector={self.selector!r}, domain={self.domain!r})"
