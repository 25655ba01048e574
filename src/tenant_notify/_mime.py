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
import binascii
import datetime as dt
import email.message
import email.policy
import email.utils
import functools
import quopri
import random
import re
import time
from email.headerregistry import Address as HeaderAddress

from . import _process
from ._headers import check_extra_header, check_header_value
from .errors import InvalidRecipientError, NotifyError, ValidationError
from .models import Address, EmailMessage

__all__ = ["build_mime", "envelope_address", "make_message_id", "mime_bytes", "wire_bytes"]

#: Characters that may stand in a 7bit body as they are.
_NOT_7BIT = re.compile(r"[^\t\n\r\x20-\x7e]")
#: RFC 5322 recommends lines of at most 78 characters.
_MAX_LINE = 78
#: A domain after IDNA encoding: letters, digits, hyphens and dots.
_ASCII_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
#: Used for Message-IDs when the sender's domain is unusable; ``.invalid`` is reserved.
_FALLBACK_DOMAIN = "tenant-notify.invalid"


def make_message_id(from_addr: Address) -> str:
    """A new globally unique Message-ID under the sender's domain, with angle brackets.

    The domain is given to :func:`email.utils.make_msgid` explicitly, so it never
    falls back to ``socket.getfqdn()`` (which can block on a DNS lookup).
    """
    domain = _message_id_domain(from_addr)
    # email.utils.make_msgid(domain=domain), with the process id read once (and again
    # in a forked child) rather than by a system call per message.
    return f"<{int(time.time() * 100)}.{_process.pid()}.{random.getrandbits(64)}@{domain}>"


def _message_id_domain(from_addr: Address) -> str:
    _, at, domain = from_addr.email.rpartition("@")
    return (_idna_domain(domain) if at else None) or _FALLBACK_DOMAIN


#: A notification id that can stand as a Message-ID's left part (a dot-atom; the
#: library's ids are 32 hex digits).
_ID_LEFT = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


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
        message_id: The Message-ID to use, with or without angle brackets. By
            default ``<notification id@sender's domain>`` (every attempt of a
            notification the same), or a new one (:func:`make_message_id`) for a
            message without a notification id.

    Returns:
        A ``text/plain`` message, or ``multipart/alternative`` (text first, then
        HTML) when ``message.html`` is set, under ``email.policy.SMTP``. Inline
        images make the HTML part ``multipart/related`` (the HTML, then each
        image with its ``Content-ID``); attachments put all of that first in a
        ``multipart/mixed``, the files after it. ``Bcc`` never appears.

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
    if message.cc:
        msg["Cc"] = [_header_address(addr, f"cc[{i}]") for i, addr in enumerate(message.cc)]
    if message.reply_to is not None:
        msg["Reply-To"] = _header_address(message.reply_to, "reply_to")
    msg["Subject"] = check_header_value(message.subject, "subject")
    msg["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    msg["Message-ID"] = _message_id(message_id, message)
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
    if message.attachments:
        _add_attachments(msg, message)
    # add_alternative and friends build new parts as EmailMessage objects, which
    # stamp their own MIME-Version; only the top level should have one.
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]
    return msg


def _add_attachments(msg: email.message.EmailMessage, message: EmailMessage) -> None:
    html_part = msg.get_body(("html",)) if message.html is not None else None
    for index, attachment in enumerate(message.attachments):
        check_header_value(attachment.filename, f"attachments[{index}].filename")
        assert attachment.content_type is not None  # Attachment fills it in
        maintype, _, subtype = attachment.content_type.partition("/")
        cid = f"<{attachment.content_id}>" if attachment.content_id else None
        if attachment.inline and html_part is not None:
            # Beside the HTML that refers to it: the HTML part becomes multipart/related.
            html_part.add_related(
                attachment.content,
                maintype,
                subtype,
                cid=cid,
                filename=attachment.filename,
                disposition="inline",
            )
        else:
            # The message becomes multipart/mixed, with the body first. Without an
            # HTML part to show it, an inline image is still marked inline.
            msg.add_attachment(
                attachment.content,
                maintype,
                subtype,
                cid=cid,
                filename=attachment.filename,
                disposition="inline" if attachment.inline else "attachment",
            )


#: policy.SMTP, except that headers added raw (set_raw: the URL lists) are not refolded.
_WIRE_POLICY = email.policy.SMTP.clone(refold_source="none")


def mime_bytes(msg: email.message.EmailMessage) -> bytes:
    """Serialise ``msg`` for the wire: CRLF line endings, 7-bit clean."""
    return msg.as_bytes(policy=_WIRE_POLICY)


#: Headers whose value is a list of ``<URL>`` entries (RFC 2369, RFC 8058).
URL_LIST_HEADERS = frozenset({"list-unsubscribe", "list-help", "list-subscribe", "list-archive"})


def _url_list(name: str, value: str) -> str | None:
    """A URL-list header's value folded only between its entries (a URL is never
    broken or encoded), or None when ``name`` is no such header or the value is
    not plain ASCII (then it is written as any other header)."""
    if name.lower() not in URL_LIST_HEADERS or not value.isascii() or not value.isprintable():
        return None
    entries = [entry.strip() for entry in re.split(r"(?<=>)\s*,\s*(?=<)", value)]
    if len(name) + 2 + len(value) <= _MAX_LINE:
        return ", ".join(entries)
    return ",\r\n ".join(entries)


# --- helpers ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _idna_domain(domain: str) -> str | None:
    # Cached: a tenant's sender domain is encoded for every message's Message-ID.
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


def _message_id(message_id: str | None, message: EmailMessage) -> str:
    if message_id is None:
        # Every attempt of a notification carries the same Message-ID: a copy sent
        # again (the provider accepted the first, the worker died before it could
        # record that) is recognisable as the same message where it arrives.
        notification_id = message.notification_id
        if notification_id and _ID_LEFT.fullmatch(notification_id):
            return f"<{notification_id}@{_message_id_domain(message.from_addr)}>"
        return make_message_id(message.from_addr)
    bare = check_header_value(message_id, "message_id").strip().strip("<>")
    if not bare or not bare.isascii() or any(char.isspace() for char in bare):
        raise ValidationError("is not a valid Message-ID", field="message_id")
    return f"<{bare}>"


def _add_extra_header(msg: email.message.EmailMessage, name: str, value: str) -> None:
    field = check_extra_header(name, value)
    url_list = _url_list(name, value)
    if url_list is not None:
        # Written as it is (mime_bytes does not refold raw headers): the email
        # package would RFC 2047-encode a long URL, which no client can follow.
        msg.set_raw(name, url_list)
        return
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


# --- the fast path -----------------------------------------------------------------------
#
# build_mime goes through the email package's header registry and generator, which costs
# about 1.4 ms for an ordinary two-part message: more than a whole SMTP round trip to a
# relay on the same network. wire_bytes writes the same MIME directly for the common case
# (printable header values, dot-atom local parts, regular spacing) and hands anything
# unusual to build_mime, so the two never disagree about what a message means;
# tests/test_mime_wire.py parses both and compares them over a wide corpus.

#: RFC 5322 atext, the characters a display name may use without quoting.
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
#: Headers the email package parses as structured (besides the reserved ones): left to it.
_STRUCTURED = frozenset(
    {"resent-date", "orig-date", "resent-sender", "resent-to", "resent-cc", "resent-bcc",
     "resent-from", "content-disposition"}
)  # fmt: skip
#: UTF-8 bytes per RFC 2047 encoded word in unstructured text: 30 bytes are 40 base64
#: characters, so a word (``=?utf-8?b?...?=``, 52 characters) fits within the 75 RFC 2047
#: allows, and after ``X-Tenant-Notify-Id: `` on a 78-character line.
_WORD_BYTES = 30
#: In a display name, which is written as one encoded word: 72 characters at most.
_PHRASE_WORD_BYTES = 45


class _Unusual(Exception):
    """The fast writer leaves this message to build_mime."""


def wire_bytes(message: EmailMessage, *, message_id: str | None = None) -> tuple[bytes, str]:
    """The message as SMTP sends it, and its Message-ID (without angle brackets).

    Equivalent to ``mime_bytes(build_mime(message, message_id=message_id))`` (same
    checks, same errors, same meaning on the wire) at a fraction of the cost.
    """
    try:
        return _fast_wire_bytes(message, message_id)
    except _Unusual:
        msg = build_mime(message, message_id=message_id)
        return mime_bytes(msg), str(msg["Message-ID"]).strip().strip("<>")


def _fast_wire_bytes(message: EmailMessage, message_id: str | None) -> tuple[bytes, str]:
    if not message.to:
        raise InvalidRecipientError("an email needs at least one recipient", field="to")
    if message.attachments:
        # Base64 of the files dominates; the email package's writer costs little more.
        raise _Unusual
    lines = [_fold("From", _address_atoms(message.from_addr, "from_addr"))]
    lines.append(_fold("To", _address_list_atoms(message.to, "to")))
    if message.cc:
        lines.append(_fold("Cc", _address_list_atoms(message.cc, "cc")))
    if message.reply_to is not None:
        lines.append(_fold("Reply-To", _address_atoms(message.reply_to, "reply_to")))
    lines.append(_fold("Subject", _unstructured(check_header_value(message.subject, "subject"))))
    lines.append(_date_header())
    msgid = _message_id(message_id, message)
    if len(msgid) > 76 or not msgid.isprintable():
        raise _Unusual
    lines.append("Message-ID: " + msgid)
    lines.append("MIME-Version: 1.0")
    if message.notification_id:
        notification_id = check_header_value(message.notification_id, "notification_id")
        lines.append(_fold("X-Tenant-Notify-Id", _unstructured(notification_id)))
    for name, value in message.headers.items():
        check_extra_header(name, value)
        url_list = _url_list(name, value)
        if url_list is not None:
            lines.append(f"{name}: {url_list}")
            continue
        if name.lower() in _STRUCTURED or len(name) > 60:
            raise _Unusual
        lines.append(_fold(name, _unstructured(value)))

    text_headers, text = _text_part(message.text, "plain")
    if message.html is None:
        head = "\r\n".join([*lines, *text_headers]).encode("ascii")
        return head + b"\r\n\r\n" + text, msgid[1:-1]
    html_headers, html = _text_part(message.html, "html")
    # Unique enough and checked below: it needs no cryptographic randomness (a
    # system call per message), since a body holding it goes to the email package.
    boundary = f"=_tn_{random.getrandbits(96):024x}"
    marker = boundary.encode("ascii")
    if marker in text or marker in html:  # pragma: no cover - 2**-96
        raise _Unusual
    lines.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"')
    head = "\r\n".join(lines).encode("ascii")
    return (
        head
        + b"\r\n\r\n--" + marker + b"\r\n"
        + "\r\n".join(text_headers).encode("ascii") + b"\r\n\r\n" + text
        + b"\r\n--" + marker + b"\r\n"
        + "\r\n".join(html_headers).encode("ascii") + b"\r\n\r\n" + html
        + b"\r\n--" + marker + b"--\r\n",
        msgid[1:-1],
    )  # fmt: skip


def _text_part(body: str, subtype: str) -> tuple[list[str], bytes]:
    """Headers and encoded payload of a text part, as ``set_content`` would make them
    (the transfer encoding chosen as :func:`_body_cte` does)."""
    raw = body.encode("utf-8")
    lines = raw.splitlines()
    # Line lengths first: a long line settles it without scanning every character.
    if max(map(len, lines), default=0) <= _MAX_LINE and not _NOT_7BIT.search(body):
        cte = "7bit"
        payload = b"\r\n".join(lines) + b"\r\n"
    else:
        normal = b"\n".join(lines) + b"\n"
        qp = _quoted_printable(lines)
        b64_size = _base64_size(len(raw))
        # The choice is made on the body as given; its line endings change the
        # quoted-printable size by a few bytes at most (the last line's end),
        # so the body is encoded a second time only when the sizes are close.
        qp_size = len(qp)
        if normal != raw and (b"\r" in raw or abs(b64_size - qp_size) <= _QP_SLACK):
            qp_size = len(binascii.b2a_qp(raw, istext=True))
        if b64_size < qp_size:
            cte = "base64"
            payload = base64.encodebytes(b"\r\n".join(lines) + b"\r\n").replace(b"\n", b"\r\n")
        else:
            cte = "quoted-printable"
            payload = qp.replace(b"\n", b"\r\n")
    headers = [
        f'Content-Type: text/{subtype}; charset="utf-8"',
        f"Content-Transfer-Encoding: {cte}",
    ]
    return headers, payload


#: Lines of at most this many bytes have their quoted-printable form cached.
_QP_CACHED_LINE = 256
#: How many such lines are kept (most recently used): the templates' fixed lines.
_QP_CACHE_LINES = 2048


def _quoted_printable(lines: list[bytes]) -> bytes:
    """``binascii.b2a_qp(b"\\n".join(lines) + b"\\n", istext=True)``, line by line.

    Quoted-printable encodes each line on its own (soft breaks, trailing white
    space and a lone dot depend on the line alone), and most lines of a message
    are its template's, the same in every message: the HTML layout, the
    greetings. Encoding them costs about 18 ns a byte; a cached line, a lookup.
    ``lines`` hold no CR or LF (``bytes.splitlines``). tests/test_mime_wire.py
    compares this with the whole body encoded at once.
    """
    return b"".join(
        [_qp_line(line) if len(line) <= _QP_CACHED_LINE else _qp_uncached(line) for line in lines]
    )


def _qp_uncached(line: bytes) -> bytes:
    return binascii.b2a_qp(line + b"\n", istext=True)


_qp_line = functools.lru_cache(maxsize=_QP_CACHE_LINES)(_qp_uncached)


def _address_list_atoms(addresses: tuple[Address, ...], field: str) -> list[str]:
    atoms: list[str] = []
    for i, addr in enumerate(addresses):
        if atoms:
            atoms[-1] += ","
        atoms.extend(_address_atoms(addr, f"{field}[{i}]"))
    return atoms


#: More than the quoted-printable sizes of a body with and without a final newline differ.
_QP_SLACK = 16


def _base64_size(size: int) -> int:
    """``len(base64.encodebytes(data))`` for ``size`` bytes of data, without encoding it:
    every 57 bytes become a line of 76 characters and a newline."""
    lines, rest = divmod(size, 57)
    return lines * 77 + (4 * -(-rest // 3) + 1 if rest else 0)


def _address_atoms(address: Address, field: str) -> list[str]:
    try:
        return list(_cached_address_atoms(address.email, address.name))
    except NotifyError as err:
        # The cached call cannot know the field; errors are rare, so check again.
        check_header_value(address.name, f"{field}.name")
        envelope_address(address.email, f"{field}.email")
        raise err  # pragma: no cover - the checks above raise it with the field


@functools.lru_cache(maxsize=4096)
def _cached_address_atoms(email: str, name: str) -> tuple[str, ...]:
    # Senders and reply-to addresses repeat for every message of a tenant.
    check_header_value(name, "name")
    addr_spec = envelope_address(email, "email")
    if not _DOT_ATOM.fullmatch(addr_spec.rpartition("@")[0]):
        raise _Unusual  # a quoted local part: the email package knows how
    if not name:
        return (addr_spec,)
    return (*_phrase(name), f"<{addr_spec}>")


def _date_header() -> str:
    global _date_cache
    second = int(time.time())
    cached = _date_cache
    if cached[0] != second:
        stamp = dt.datetime.fromtimestamp(second, dt.UTC)
        cached = _date_cache = (second, "Date: " + email.utils.format_datetime(stamp))
    return cached[1]


#: (epoch second, "Date: ..."): the Date header is formatted once a second.
_date_cache: tuple[int, str] = (-1, "")


def _phrase(name: str) -> list[str]:
    """A display name as header words: atoms, encoded words, or one quoted string."""
    _check_regular(name)
    if _ATOMS.fullmatch(name):
        return name.split(" ")
    if name.isascii():
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) > 70:
            raise _Unusual
        return [quoted]
    # Atoms stay readable; a name with other specials is encoded whole. Each encoded
    # run must fit in one encoded word: parsers disagree about the space between two
    # adjacent encoded words in a phrase (RFC 2047 drops it, the email package keeps
    # it), so longer names are left to the email package.
    words = name.split(" ")
    if not all(not w.isascii() or _ATOMS.fullmatch(w) for w in words):
        words = [name]
    return _mixed(words, max_bytes=_PHRASE_WORD_BYTES, split=False)


def _unstructured(value: str) -> list[str]:
    """An unstructured header value (Subject, extra headers) as foldable words."""
    _check_regular(value)
    words = value.split(" ")
    if any(len(word) > 70 and word.isascii() for word in words):
        raise _Unusual
    return words if value.isascii() else _mixed(words)


def _mixed(words: list[str], *, max_bytes: int = _WORD_BYTES, split: bool = True) -> list[str]:
    """ASCII words as they are, each run of non-ASCII words as encoded words.

    A run is encoded together, spaces included: the space between two encoded
    words is dropped when they are decoded, the one next to a plain word is not.
    """
    out: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:
        if word.isascii() and run:
            encoded = _encoded_words(" ".join(run), max_bytes)
            if len(encoded) > 1 and not split:
                raise _Unusual
            out.extend(encoded)
            run = []
        if not word.isascii():
            run.append(word)
        elif word:
            out.append(word)
    return out


def _encoded_words(text: str, max_bytes: int) -> list[str]:
    """``text`` as RFC 2047 base64 encoded words, never splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:  # the common case: one word
        return [f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="]
    words = []
    chunk = bytearray()
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > max_bytes:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
            chunk.clear()
        chunk += data
    words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
    return words


def _check_regular(value: str) -> None:
    # Left to the email package: empty values, text that looks like an encoded word
    # (it decodes those), control or invisible characters, and irregular spacing
    # (folding would have to keep it).
    if (
        not value
        or "=?" in value
        or "  " in value
        or value[0] == " "
        or value[-1] == " "
        or not value.isprintable()
    ):
        raise _Unusual


def _fold(name: str, words: list[str]) -> str:
    """``Name: words...`` folded before a word wherever a line would pass 78 characters."""
    single = f"{name}: {' '.join(words)}"
    if len(single) <= _MAX_LINE:
        return single
    if len(name) + 2 + len(words[0]) > _MAX_LINE:
        # Folding right after the colon would add a space to the value.
        raise _Unusual
    lines = []
    line = name + ":"
    for word in words:
        if len(line) + 1 + len(word) > _MAX_LINE and line != name + ":":
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    return "\r\n".join(lines)
