"""Header-injection checks shared by input validation and MIME building."""

from __future__ import annotations

import re
from email.header import decode_header

from .errors import HeaderInjectionError

# An RFC 2047 encoded word: =?charset?Q|B?text?=
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[qQbB]\?[^?\s]*\?=")
_FORBIDDEN = ("\r", "\n", "\0")
_FORBIDDEN_CHAR = re.compile(r"[\r\n\0]")


def check_header_value(value: str, field: str) -> str:
    """Return ``value`` if it is safe in a header, else raise HeaderInjectionError.

    Refuses CR, LF and NUL, and RFC 2047 encoded words that decode to any of them:
    CPython's ``email`` package (3.11.7 and others, CVE-2024-6923) decodes such a
    word when the header is set and can serialise the bare line break, which would
    let a subject like ``=?UTF-8?Q?=0A?=Bcc: x@evil`` add a header.
    """
    if _FORBIDDEN_CHAR.search(value):
        raise HeaderInjectionError("must not contain CR, LF or NUL characters", field=field)
    if "=?" not in value:
        return value  # no encoded word: the common case, checked without a regex scan
    for word in _ENCODED_WORD.findall(value):
        try:
            parts = decode_header(word)
        except ValueError:
            # A malformed word stays literal text in the header, which is harmless.
            continue
        decoded = "".join(_decode_part(part, charset) for part, charset in parts)
        if any(char in decoded for char in _FORBIDDEN):
            raise HeaderInjectionError(
                "holds an encoded word that decodes to a line break or NUL", field=field
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
