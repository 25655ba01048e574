"""Turn a provider-neutral :class:`~tenant_notify.models.EmailMessage` into MIME.

The result is what the SMTP provider sends and the file provider writes: an
``email.message.EmailMessage`` under ``email.policy.SMTP`` whose serialised form
is 7-bit clean (headers RFC 2047-encoded, bodies quoted-printable or base64), so
any SMTP server accepts it without 8BITMIME or SMTPUTF8.

Every header value is checked again here with
:func:`~tenant_notify._headers.check_header_value`, although input validation has
done so already: this module is the last point before bytes leave the process.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.message
import email.policy
import email.utils
import quopri
import re
from email.headerregistry import Address as HeaderAddress

from ._headers import check_header_value
from .errors import HeaderInjectionError, InvalidRecipientError, ValidationError
from .models import Address, EmailMessage

__all__ = ["build_mime", "envelope_address", "make_message_id", "mime_bytes"]

#: RFC 5322 field name: printable US-ASCII except the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
#: Characters that may stand in a 7bit body as they are.
_NOT_7BIT = re.compile(r"[^\t\n\r\x20-\x7e]")
#: RFC 5322 recommends lines of at most 78 characters.
_MAX_LINE = 78
#: A domain after IDNA encoding: letters, digits, hyphens and dots.
_ASCII_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
#: Used for Message-IDs when the sender's domain is unusable; ``.invalid`` is reserved.
_FALLBACK_DOMAIN = "tenant-notify.invalid"

#: Headers the library sets itself; ``EmailMessage.headers`` may not override them.
_RESERVED_HEADERS = frozenset(
    {
        "bcc",
        "cc",
        "content-transfer-encoding",
        "content-type",
        "date",
        "from",
        "message-id",
        "mime-version",
        "reply-to",
        "return-path",
        "sender",
        "subject",
        "to",
        "x-tenant-notify-id",
    }
)


def make_message_id(from_addr: Address) -> str:
    """A new globally unique Message-ID under the sender's domain, with angle brackets.

    The domain is given to :func:`email.utils.make_msgid` explicitly, so it never
    falls back to ``socket.getfqdn()`` (which can block on a DNS lookup).
    """
    _, at, domain = from_addr.email.rpartition("@")
    domain = (_idna_domain(domain) if at else None) or _FALLBACK_DOMAIN
    return email.utils.make_msgid(domain=domain)


def envelope_address(address: str, field: str) -> str:
    """``address`` in the ASCII form SMTP commands and headers need.

    The domain is IDNA-encoded (``exämple.com`` -> ``xn--exmple-cua.com``). A
    non-ASCII local part would need SMTPUTF8, which the library does not use.

    Raises:
        InvalidRecipientError: the address cannot be written in ASCII.
    """
    check_header_value(address, field)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidRecipientError("is not an email address", field=field)
    if not local.isascii():
        raise InvalidRecipientError(
            "has a non-ASCII local part, which needs SMTPUTF8 (not supported)", field=field
        )
    ascii_domain = _idna_domain(domain)
    if ascii_domain is None:
        raise InvalidRecipientError("has a domain that cannot be IDNA-encoded", field=field)
    return f"{local}@{ascii_domain}"


def build_mime(
    message: EmailMessage, *, message_id: str | None = None
) -> email.message.EmailMessage:
    """Build the MIME message for ``message``.

    Args:
        message: The rendered email.
        message_id: The Message-ID to use, with or without angle brackets; a new
            one under the sender's domain (:func:`make_message_id`) by default.

    Returns:
        A ``text/plain`` message, or ``multipart/alternative`` (text first, then
        HTML) when ``message.html`` is set, under ``email.policy.SMTP``.

    Raises:
        HeaderInjectionError: a header value holds CR, LF, NUL or an encoded word
            hiding one, or an extra header name is not a valid field name.
        InvalidRecipientError: there is no recipient, or an address cannot be
            written in ASCII.
        ValidationError: an extra header would override one the library sets.
    """
    if not message.to:
        raise InvalidRecipientError("an email needs at least one recipient", field="to")
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"] = _header_address(message.from_addr, "from_addr")
    msg["To"] = [_header_address(addr, f"to[{i}]") for i, addr in enumerate(message.to)]
    if message.reply_to is not None:
        msg["Reply-To"] = _header_address(message.reply_to, "reply_to")
    msg["Subject"] = check_header_value(message.subject, "subject")
    msg["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    msg["Message-ID"] = _message_id(message_id, message.from_addr)
    msg["MIME-Version"] = "1.0"
    if message.notification_id:
        msg["X-Tenant-Notify-Id"] = check_header_value(message.notification_id, "notification_id")
    for name, value in message.headers.items():
        _add_extra_header(msg, name, value)

    msg.set_content(message.text, subtype="plain", charset="utf-8", cte=_body_cte(message.text))
    if message.html is not None:
        msg.add_alternative(
            message.html, subtype="html", charset="utf-8", cte=_body_cte(message.html)
        )
        # add_alternative builds the new part as an EmailMessage, which stamps its
        # own MIME-Version; only the top level should have one.
        for part in msg.iter_parts():
            del part["MIME-Version"]
    return msg


def mime_bytes(msg: email.message.EmailMessage) -> bytes:
    """Serialise ``msg`` for the wire: CRLF line endings, 7-bit clean."""
    return msg.as_bytes(policy=email.policy.SMTP)


# --- helpers ---------------------------------------------------------------------------


def _idna_domain(domain: str) -> str | None:
    if not domain:
        return None
    try:
        ascii_domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return ascii_domain if _ASCII_DOMAIN.fullmatch(ascii_domain) else None


def _header_address(address: Address, field: str) -> HeaderAddress:
    check_header_value(address.name, f"{field}.name")
    addr_spec = envelope_address(address.email, f"{field}.email")
    try:
        return HeaderAddress(display_name=address.name, addr_spec=addr_spec)
    except (ValueError, IndexError) as err:
        raise InvalidRecipientError("is not a valid email address", field=field) from err


def _message_id(message_id: str | None, from_addr: Address) -> str:
    if message_id is None:
        return make_message_id(from_addr)
    bare = check_header_value(message_id, "message_id").strip().strip("<>")
    if not bare or not bare.isascii() or any(char.isspace() for char in bare):
        raise ValidationError("is not a valid Message-ID", field="message_id")
    return f"<{bare}>"


def _add_extra_header(msg: email.message.EmailMessage, name: str, value: str) -> None:
    field = f"headers[{name!r}]"
    if not _FIELD_NAME.fullmatch(name):
        raise HeaderInjectionError("is not a valid header name", field=field)
    if name.lower() in _RESERVED_HEADERS:
        raise ValidationError("is set by tenant-notify and cannot be overridden", field=field)
    check_header_value(value, field)
    try:
        msg[name] = value
    except (ValueError, TypeError) as err:
        raise ValidationError(f"is not a valid header value: {err}", field=field) from err


def _body_cte(body: str) -> str:
    """The Content-Transfer-Encoding that keeps ``body`` 7-bit clean and short.

    ``7bit`` for short-lined printable ASCII, else the shorter of quoted-printable
    and base64 (quoted-printable on a tie: it stays readable). The stdlib's own
    choice under ``policy.SMTP`` would be ``8bit`` for non-ASCII text.
    """
    lines = body.splitlines()
    if not _NOT_7BIT.search(body) and all(len(line) <= _MAX_LINE for line in lines):
        return "7bit"
    raw = body.encode("utf-8")
    qp_size = len(quopri.encodestring(raw))
    b64_size = len(base64.encodebytes(raw))
    return "base64" if b64_size < qp_size else "quoted-printable"
