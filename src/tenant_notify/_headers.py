"""Header checks shared by input validation, MIME building and the HTTP providers.

Every header a caller may set travels through :func:`check_extra_header`, once at
the call (nothing is queued for a bad header) and again where the message is
written out (SMTP, SES raw MIME, SendGrid, Postmark), which is the last point
before bytes leave the process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.header import decode_header

from .errors import HeaderInjectionError, ValidationError

__all__ = [
    "FIELD_NAME",
    "MAX_HEADER_CHARS",
    "NOTIFICATION_ID_HEADER",
    "RESERVED_HEADERS",
    "check_extra_header",
    "check_header_value",
    "outgoing_headers",
]

#: The header every message carries its notification id in.
NOTIFICATION_ID_HEADER = "X-Tenant-Notify-Id"

#: RFC 5322 field name: printable US-ASCII except the colon.
FIELD_NAME = re.compile(r"[!-9;-~]+")
#: RFC 5322's limit for a line; a header value longer than that is refused.
MAX_HEADER_CHARS = 998
#: Headers the library sets itself (or that describe the MIME structure it
#: builds); a caller's extra headers may not set them.
RESERVED_HEADERS = frozenset(
    {
        "bcc",
        "cc",
        "content-disposition",
        "content-id",
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

# An RFC 2047 encoded word: =?charset?Q|B?text?=
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[qQbB]\?[^?\s]*\?=")
# Every character Python, a mail client or a terminal may take for a line break
# (CR, LF, VT, FF, FS, GS, RS, NEL, U+2028, U+2029) and every other control
# character (C0, DEL, C1), TAB aside: it is folding white space in a header.
_CONTROLS = "\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029"
_FORBIDDEN_DECODED = re.compile(f"[{_CONTROLS}]")
# In the value itself also lone surrogates, which no encoding can write.
_FORBIDDEN_CHAR = re.compile(f"[{_CONTROLS}\ud800-\udfff]")


def check_header_value(value: str, field: str) -> str:
    """Return ``value`` if it is safe in a header, else raise HeaderInjectionError.

    Refuses every line break (CR and LF, and VT, FF, FS, GS, RS, NEL, U+2028 and
    U+2029, which ``str.splitlines`` and the ``email`` package also break lines
    at), every other C0 and C1 control character and DEL (TAB is allowed: it is
    folding white space), lone surrogates (no encoding can write them), and RFC
    2047 encoded words that decode to a control character: CPython's ``email``
    package (3.11.7 and others, CVE-2024-6923) decodes such a word when the header
    is set and can serialise the bare line break, which would let a subject like
    ``=?UTF-8?Q?=0A?=Bcc: x@evil`` add a header.
    """
    found = _FORBIDDEN_CHAR.search(value)
    if found is not None:
        raise HeaderInjectionError(
            f"must not contain line breaks or control characters (found U+{ord(found[0]):04X})",
            field=field,
        )
    if "=?" not in value:
        return value  # no encoded word: the common case, checked without a regex scan
    for word in _ENCODED_WORD.findall(value):
        try:
            parts = decode_header(word)
        except ValueError:
            # A malformed word stays literal text in the header, which is harmless.
            continue
        decoded = "".join(_decode_part(part, charset) for part, charset in parts)
        found = _FORBIDDEN_DECODED.search(decoded)
        if found is not None:
            raise HeaderInjectionError(
                "holds an encoded word that decodes to a line break or control character "
                f"(U+{ord(found[0]):04X})",
                field=field,
            )
    return value


def _decode_part(part: bytes | str, charset: str | None) -> str:
    if isinstance(part, str):
        return part
    try:
        return part.decode(charset or "ascii", errors="surrogateescape")
    except LookupError:
        # The email package falls back to ASCII for unknown charsets, so a line
        # break still comes through; decode the same way to see it.
        return part.decode("ascii", errors="surrogateescape")


def check_extra_header(
    name: object, value: object, *, reserved: frozenset[str] = frozenset()
) -> str:
    """Check one header a caller asked for; return the field name errors use for it.

    Args:
        name: The header name; an RFC 5322 field name, not one of
            :data:`RESERVED_HEADERS` nor of ``reserved`` (a provider's own).
        value: The value: a string without line breaks, control characters or an
            encoded word hiding one (see :func:`check_header_value`), at most
            :data:`MAX_HEADER_CHARS` characters.
        reserved: Lower-case names a provider refuses besides the library's.

    Raises:
        HeaderInjectionError: a name that is not a field name, or a value that
            could start a new header.
        ValidationError: a reserved name, a value that is not a string or too long.
    """
    field = f"headers[{name!r}]"
    if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
        raise HeaderInjectionError("is not a valid header name", field=field)
    lowered = name.lower()
    if lowered in RESERVED_HEADERS or lowered in reserved:
        raise ValidationError(
            "is set by tenant-notify or the provider and cannot be overridden", field=field
        )
    if not isinstance(value, str):
        raise ValidationError("must be a string", field=field)
    if len(name) + 2 + len(value) > MAX_HEADER_CHARS:
        raise ValidationError(f"is longer than {MAX_HEADER_CHARS} characters", field=field)
    check_header_value(value, field)
    return field


def outgoing_headers(
    headers: Mapping[str, str], notification_id: str, *, reserved: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """A message's extra headers, each checked again (:func:`check_extra_header`),
    then :data:`NOTIFICATION_ID_HEADER` when there is a notification id: the headers
    an HTTP provider hands its API."""
    checked = []
    for name, value in headers.items():
        check_extra_header(name, value, reserved=reserved)
        checked.append((name, value))
    if notification_id:
        checked.append(
            (NOTIFICATION_ID_HEADER, check_header_value(notification_id, "notification_id"))
        )
    return checked
