"""The values that travel through the pipeline.

A :class:`Notification` is what the caller's side builds and a transport carries
(it holds ids, kind, recipient and context, never credentials or rendered text).
The delivery side renders it into a provider-neutral :class:`EmailMessage` or
:class:`SmsMessage`, a provider turns that into a :class:`DeliveryResult`, and the
status store keeps a :class:`DeliveryStatus` per notification id.

What an email carries besides its rendered text (cc and bcc, a reply-to, extra
headers, tags, metadata, :class:`Attachment` objects) is checked once at the call
into :class:`EmailOptions`, which travels with the notification and is applied to
the rendered :class:`EmailMessage` on the delivery side.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
import json
import mimetypes
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from ._headers import check_extra_header, check_header_value
from ._json import quote
from ._redact import redact
from .errors import InvalidAttachmentError, InvalidContextError, ValidationError

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_ATTACHMENT_BYTES",
    "MAX_RECIPIENTS",
    "Address",
    "Attachment",
    "Channel",
    "Click",
    "DeliveryResult",
    "DeliveryState",
    "DeliveryStatus",
    "EmailMessage",
    "EmailOptions",
    "Engagement",
    "Feature",
    "Notification",
    "Receipt",
    "SmsMessage",
]


class Channel(enum.StrEnum):
    """How a notification reaches its recipient."""

    EMAIL = "email"
    SMS = "sms"


class DeliveryState(enum.StrEnum):
    """Where a notification is in its life.

    ``queued -> sending -> sent``, with ``retrying`` between attempts and ``failed``
    when the last attempt (or a permanent error) ends it. A provider's delivery
    events (:mod:`tenant_notify.webhooks`) can move a notification on from
    ``sent`` to ``delivered`` (it reached the recipient), ``bounced`` (the
    recipient's side refused it) or ``failed`` (the provider gave up on it).
    ``suppressed`` ends a notification whose recipient is on the tenant's
    suppression list: no provider was called.
    """

    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    SUPPRESSED = "suppressed"

    @property
    def is_final(self) -> bool:
        """True for states a notification does not leave by itself."""
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    {
        DeliveryState.SENT,
        DeliveryState.DELIVERED,
        DeliveryState.BOUNCED,
        DeliveryState.FAILED,
        DeliveryState.SUPPRESSED,
    }
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_notification_id(
    tenant_id: str | None = None, kind: str | None = None, idempotency_key: str | None = None
) -> str:
    """A notification id: random, or derived from an idempotency key.

    With ``idempotency_key`` the id is a function of the tenant, the kind and the
    key, so a repeated send carries the id of the first one and the worker that
    claims it delivers it once, without the caller waiting on a shared store.
    The three are hashed in an unambiguous encoding (a JSON array: every
    character of a tenant id or a key is escaped, none can stand for a
    separator), so no two different triples share an id. Like a random id: 32
    lowercase hex digits.
    """
    if idempotency_key is None:
        return uuid.uuid4().hex
    if type(tenant_id) is str and type(kind) is str and type(idempotency_key) is str:
        # json.dumps([tenant_id, kind, idempotency_key]), without building its encoder
        # per call: the same text (tests/test_notifier.py checks), so the same ids.
        encoded = f"[{quote(tenant_id)}, {quote(kind)}, {quote(idempotency_key)}]"
    else:
        encoded = json.dumps([tenant_id, kind, idempotency_key], ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Address:
    """An email address with an optional display name."""

    email: str
    name: str = ""

    def __str__(self) -> str:
        from email.headerregistry import Address as _HeaderAddress

        if not self.name:
            return self.email
        return str(_HeaderAddress(display_name=self.name, addr_spec=self.email))


# --- message features ----------------------------------------------------------------

#: The most attachment bytes (raw, before base64) one email may carry, all
#: attachments together. Notifications travel to workers whole (on Celery through
#: the broker, base64-encoded: about 13.4 MB at this limit), so larger files are
#: refused at the call: link to them instead.
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
#: The most attachments (inline images included) one email may carry.
MAX_ATTACHMENTS = 50
#: The most recipients (to, cc and bcc together) one email may have; SES and
#: Postmark allow 50.
MAX_RECIPIENTS = 50
#: The most extra headers, tags and metadata entries one email may carry.
MAX_HEADERS = 50
MAX_TAGS = 10
MAX_METADATA = 20

#: type/subtype, each of RFC 2045 token characters.
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
#: A Content-ID without its angle brackets (RFC 2392: an addr-spec; dot-atom text
#: on both sides keeps it safe in a header and in a ``cid:`` URL).
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,128}(?:@[A-Za-z0-9.-]{1,128})?")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Metadata keys the providers use to correlate delivery events with statuses.
RESERVED_METADATA = frozenset({"tenant_id", "notification_id"})


class Feature(enum.StrEnum):
    """Something an email may ask of its provider beyond subject, body and recipient.

    Providers declare the features they support
    (:attr:`~tenant_notify.providers.Provider.capabilities`); a send that asks for
    one the tenant's provider lacks is refused at the call with
    :class:`~tenant_notify.errors.UnsupportedFeatureError`.
    """

    ATTACHMENTS = "attachments"
    INLINE_IMAGES = "inline_images"
    CC = "cc"
    BCC = "bcc"
    HEADERS = "headers"
    TAGS = "tags"
    METADATA = "metadata"
    #: The provider counts opens itself (SendGrid open tracking, Postmark
    #: TrackOpens). Without it the library adds its own pixel, when ``[links]`` is set.
    TRACK_OPENS = "track_opens"
    #: The provider rewrites links itself; else the library does (``[links]``).
    TRACK_CLICKS = "track_clicks"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to an email, or an image shown inline in its HTML.

    Every field is checked when the attachment is made, so a bad one is refused
    before anything is queued::

        Attachment(filename="invoice-1042.pdf", content=pdf, content_type="application/pdf")
        Attachment.from_path("static/logo.png", inline=True, content_id="logo")
        # ... and in the HTML: <img src="cid:logo">

    Attributes:
        filename: The name the recipient sees (no path; at most 255 characters).
        content: The bytes.
        content_type: ``type/subtype``; guessed from the filename when None
            (``application/octet-stream`` when it cannot be guessed).
        inline: Shown in the HTML body (referenced as ``cid:<content_id>``)
            rather than offered as a download.
        content_id: The id the HTML refers to; required for inline attachments.

    Raises:
        InvalidAttachmentError: a field that could not be sent safely.
    """

    filename: str
    content: bytes
    content_type: str | None = None
    inline: bool = False
    content_id: str | None = None

    def __post_init__(self) -> None:
        name = self.filename
        if not isinstance(name, str) or not name.strip():
            raise InvalidAttachmentError("must be a non-empty file name", field="filename")
        check_header_value(name, "filename")
        if (
            len(name) > 255
            or "/" in name
            or "\\" in name
            or name in (".", "..")
            or not name.isprintable()
        ):
            raise InvalidAttachmentError(
                f"{name!r} is not a plain file name (no path, printable, at most 255 characters)",
                field="filename",
            )
        content = self.content
        if isinstance(content, bytearray | memoryview):
            object.__setattr__(self, "content", bytes(content))
        elif not isinstance(content, bytes):
            raise InvalidAttachmentError("must be bytes", field=f"{name}.content")
        if len(self.content) > MAX_ATTACHMENT_BYTES:
            raise InvalidAttachmentError(
                f"is {len(self.content)} bytes; an email carries at most "
                f"{MAX_ATTACHMENT_BYTES} bytes of attachments",
                field=f"{name}.content",
            )
        content_type = self.content_type
        if content_type is None:
            content_type = mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
        if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type):
            raise InvalidAttachmentError(
                f"{content_type!r} is not a content type such as 'application/pdf' "
                "(type/subtype, no parameters)",
                field=f"{name}.content_type",
            )
        content_type = content_type.lower()
        if content_type.startswith(("multipart/", "message/")):
            raise InvalidAttachmentError(
                "multipart and message types describe MIME structure, not a file",
                field=f"{name}.content_type",
            )
        object.__setattr__(self, "content_type", content_type)
        if not isinstance(self.inline, bool):
            raise InvalidAttachmentError("must be True or False", field=f"{name}.inline")
        cid = self.content_id
        if cid is not None:
            bare = cid.strip().removeprefix("<").removesuffix(">") if isinstance(cid, str) else ""
            if not _CONTENT_ID.fullmatch(bare):
                raise InvalidAttachmentError(
                    f"{cid!r} is not a content id such as 'logo' or 'logo@shop.example'",
                    field=f"{name}.content_id",
                )
            object.__setattr__(self, "content_id", bare)
        if self.inline and self.content_id is None:
            raise InvalidAttachmentError(
                "an inline attachment needs the content_id its HTML refers to (cid:...)",
                field=f"{name}.content_id",
            )

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        inline: bool = False,
        content_id: str | None = None,
    ) -> Attachment:
        """Read a file into an attachment (named after the file unless ``filename``).

        Raises:
            InvalidAttachmentError: the file cannot be read, is too large, or a
                field is invalid.
        """
        file = Path(path)
        try:
            size = file.stat().st_size
            if size > MAX_ATTACHMENT_BYTES:
                raise InvalidAttachmentError(
                    f"is {size} bytes; an email carries at most {MAX_ATTACHMENT_BYTES} bytes "
                    "of attachments",
                    field=str(path),
                )
            content = file.read_bytes()
        except OSError as err:
            raise InvalidAttachmentError(
                f"cannot be read: {err.strerror or err}", field=str(path)
            ) from err
        return cls(
            filename=filename if filename is not None else file.name,
            content=content,
            content_type=content_type,
            inline=inline,
            content_id=content_id,
        )

    @property
    def size(self) -> int:
        """The number of bytes of content."""
        return len(self.content)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (content in base64), for brokers."""
        return {
            "filename": self.filename,
            "content": base64.b64encode(self.content).decode("ascii"),
            "content_type": self.content_type,
            "inline": self.inline,
            "content_id": self.content_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attachment:
        """Inverse of :meth:`to_dict` (checked again, as any attachment is)."""
        try:
            content = base64.b64decode(data["content"], validate=True)
        except (binascii.Error, ValueError, TypeError) as err:
            raise InvalidAttachmentError("content is not base64", field="content") from err
        return cls(
            filename=data["filename"],
            content=content,
            content_type=data.get("content_type"),
            inline=bool(data.get("inline", False)),
            content_id=data.get("content_id"),
        )

    def __repr__(self) -> str:
        # The content may be large, and is the recipient's business: show its size.
        inline = f", inline=True, content_id={self.content_id!r}" if self.inline else ""
        return (
            f"Attachment(filename={self.filename!r}, content_type={self.content_type!r}, "
            f"size={self.size}{inline})"
        )


def _address_list(value: object, field: str) -> tuple[Address, ...]:
    from ._validation import normalize_email

    if value is None:
        return ()
    items = [value] if isinstance(value, str | Address) else value
    if not isinstance(items, Iterable) or isinstance(items, Mapping | bytes):
        raise ValidationError("must be an address or a list of addresses", field=field)
    addresses = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if isinstance(item, Address):
            name = item.name
            if name:
                check_header_value(name, f"{where}.name")
                if len(name) > 200:
                    raise ValidationError("is longer than 200 characters", field=f"{where}.name")
            addresses.append(Address(normalize_email(item.email, where), name))
        else:
            addresses.append(Address(normalize_email(item, where)))
    return tuple(addresses)


@dataclass(frozen=True, slots=True)
class EmailOptions:
    """What an email asks for besides its rendered subject and body.

    Built (and every field checked) at the call by :meth:`build`; it travels with
    the notification and is applied to the rendered message by :meth:`apply`.

    Attributes:
        to_name: The recipient's display name.
        cc, bcc: Further recipients.
        reply_to: Overrides the tenant's reply-to address for this message.
        headers: Extra headers (never ones the library sets).
        tags: Labels for the provider's analytics (SendGrid categories,
            Postmark's tag).
        metadata: Key-value pairs the provider keeps with the message and
            reports back in its delivery events.
        attachments: Files and inline images.
    """

    to_name: str = ""
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: Address | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        to_name: str | None = None,
        cc: str | Address | Iterable[str | Address] | None = None,
        bcc: str | Address | Iterable[str | Address] | None = None,
        reply_to: str | Address | None = None,
        headers: Mapping[str, str] | None = None,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        attachments: Iterable[Attachment] | None = None,
        to: str | None = None,
    ) -> EmailOptions | None:
        """Check every option of a send; None when none is given.

        ``to`` is the (normalised) recipient, so that no address is given twice
        across to, cc and bcc (providers refuse that).

        Raises:
            InvalidRecipientError: a cc, bcc or reply-to address that is not valid.
            HeaderInjectionError: a name or header that could start a new header.
            InvalidAttachmentError: an attachment that is not an :class:`Attachment`,
                duplicate content ids, or more than :data:`MAX_ATTACHMENT_BYTES`.
            ValidationError: anything else out of bounds (counts, lengths, types,
                reserved names).
        """
        if all(
            v is None for v in (to_name, cc, bcc, reply_to, headers, tags, metadata, attachments)
        ):
            return None
        name = ""
        if to_name is not None:
            if not isinstance(to_name, str) or len(to_name) > 200:
                raise ValidationError("must be a string of at most 200 characters", field="to_name")
            name = check_header_value(to_name.strip(), "to_name")
        cc_list = _address_list(cc, "cc")
        bcc_list = _address_list(bcc, "bcc")
        if 1 + len(cc_list) + len(bcc_list) > MAX_RECIPIENTS:
            raise ValidationError(
                f"an email has at most {MAX_RECIPIENTS} recipients (to, cc and bcc)", field="cc"
            )
        seen = {to.casefold()} if to else set()
        for where, address in [
            *((f"cc[{i}]", a) for i, a in enumerate(cc_list)),
            *((f"bcc[{i}]", a) for i, a in enumerate(bcc_list)),
        ]:
            if address.email.casefold() in seen:
                raise ValidationError(
                    f"{address.email!r} is already a recipient of this email", field=where
                )
            seen.add(address.email.casefold())
        reply = None
        if reply_to is not None:
            if isinstance(reply_to, Iterable) and not isinstance(reply_to, str | Address):
                raise ValidationError("must be one address", field="reply_to")
            (reply,) = _address_list(reply_to, "reply_to")
        return cls(
            to_name=name,
            cc=cc_list,
            bcc=bcc_list,
            reply_to=reply,
            headers=_check_headers(headers),
            tags=_check_tags(tags),
            metadata=_check_metadata(metadata),
            attachments=_check_attachments(attachments),
        )

    @property
    def features(self) -> frozenset[Feature]:
        """The features this message needs of its provider."""
        needs = set()
        if self.cc:
            needs.add(Feature.CC)
        if self.bcc:
            needs.add(Feature.BCC)
        if self.headers:
            needs.add(Feature.HEADERS)
        if self.tags:
            needs.add(Feature.TAGS)
        if self.metadata:
            needs.add(Feature.METADATA)
        for attachment in self.attachments:
            needs.add(Feature.INLINE_IMAGES if attachment.inline else Feature.ATTACHMENTS)
        return frozenset(needs)

    @property
    def attachment_bytes(self) -> int:
        """The bytes of every attachment together."""
        return sum(a.size for a in self.attachments)

    def apply(self, message: EmailMessage) -> EmailMessage:
        """``message`` (as rendered for the tenant) with these options."""
        to = message.to
        if self.to_name:
            to = tuple(Address(a.email, a.name or self.to_name) for a in to)
        return replace(
            message,
            to=to,
            cc=self.cc,
            bcc=self.bcc,
            reply_to=self.reply_to or message.reply_to,
            headers={**message.headers, **self.headers},
            tags=self.tags,
            metadata=dict(self.metadata),
            attachments=self.attachments,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, for brokers."""
        return {
            "to_name": self.to_name,
            "cc": [[a.email, a.name] for a in self.cc],
            "bcc": [[a.email, a.name] for a in self.bcc],
            "reply_to": [self.reply_to.email, self.reply_to.name] if self.reply_to else None,
            "headers": dict(self.headers),
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "attachments": [a.to_dict() for a in self.attachments],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmailOptions:
        """Inverse of :meth:`to_dict`."""
        reply = data.get("reply_to")
        return cls(
            to_name=data.get("to_name", ""),
            cc=tuple(Address(email, name) for email, name in data.get("cc", ())),
            bcc=tuple(Address(email, name) for email, name in data.get("bcc", ())),
            reply_to=Address(reply[0], reply[1]) if reply else None,
            headers=dict(data.get("headers") or {}),
            tags=tuple(data.get("tags") or ()),
            metadata=dict(data.get("metadata") or {}),
            attachments=tuple(Attachment.from_dict(a) for a in data.get("attachments", ())),
        )


def _check_headers(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ValidationError("must be a mapping of header names to values", field="headers")
    if len(headers) > MAX_HEADERS:
        raise ValidationError(f"at most {MAX_HEADERS} extra headers", field="headers")
    seen: set[str] = set()
    for name, value in headers.items():
        field = check_extra_header(name, value)
        if name.lower() in seen:
            raise ValidationError("is given twice (header names ignore case)", field=field)
        seen.add(name.lower())
    return dict(headers)


def _check_tags(tags: object) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise ValidationError("must be a list of strings", field="tags")
    checked: list[str] = []
    for index, tag in enumerate(tags):
        where = f"tags[{index}]"
        if not isinstance(tag, str) or not tag.strip() or len(tag) > 255:
            raise ValidationError(
                "must be a non-empty string of at most 255 characters", field=where
            )
        if not tag.isprintable():
            raise ValidationError("must be printable text", field=where)
        check_header_value(tag, where)
        if tag not in checked:
            checked.append(tag)
    if len(checked) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags", field="tags")
    return tuple(checked)


def _check_metadata(metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValidationError("must be a mapping of names to strings", field="metadata")
    if len(metadata) > MAX_METADATA:
        raise ValidationError(f"at most {MAX_METADATA} entries", field="metadata")
    for key, value in metadata.items():
        where = f"metadata[{key!r}]"
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            raise ValidationError("keys are 1 to 64 letters, digits, '_' or '-'", field=where)
        if key in RESERVED_METADATA:
            raise ValidationError("is set by tenant-notify to match delivery events", field=where)
        if not isinstance(value, str) or len(value) > 1000 or not value.isprintable():
            raise ValidationError(
                "values are printable strings of at most 1000 characters", field=where
            )
    return dict(metadata)


def _check_attachments(attachments: object) -> tuple[Attachment, ...]:
    if attachments is None:
        return ()
    if isinstance(attachments, Attachment) or not isinstance(attachments, Iterable):
        raise InvalidAttachmentError("must be a list of Attachment objects", field="attachments")
    items = tuple(attachments)
    if len(items) > MAX_ATTACHMENTS:
        raise InvalidAttachmentError(f"at most {MAX_ATTACHMENTS} attachments", field="attachments")
    content_ids: set[str] = set()
    total = 0
    for index, item in enumerate(items):
        if not isinstance(item, Attachment):
            raise InvalidAttachmentError(
                "must be an Attachment (from tenant_notify import Attachment)",
                field=f"attachments[{index}]",
            )
        if item.content_id is not None:
            if item.content_id in content_ids:
                raise InvalidAttachmentError(
                    f"content id {item.content_id!r} is used twice",
                    field=f"attachments[{index}].content_id",
                )
            content_ids.add(item.content_id)
        total += item.size
    if total > MAX_ATTACHMENT_BYTES:
        raise InvalidAttachmentError(
            f"the attachments are {total} bytes together; an email carries at most "
            f"{MAX_ATTACHMENT_BYTES}",
            field="attachments",
        )
    return items


# --- the notification --------------------------------------------------------------

# Context values travel to workers as JSON; these tags carry the types JSON lacks.
_TAG = "__tn__"

#: Containers in a context may nest this deep (``{"a": [{"b": 1}]}`` is 3).
MAX_CONTEXT_DEPTH = 32
#: Integers a context may hold: 64 bits, which every JSON reader takes exactly
#: (and no more: Python refuses to write an int of over 4,300 digits as JSON).
MAX_CONTEXT_INT = 2**63 - 1
#: Decimals a context may hold: up to 10**50, with at most 100 digits and 100
#: decimal places: what the ``money`` filter and ``%f`` can format.
MAX_DECIMAL_ADJUSTED = 50
MAX_DECIMAL_DIGITS = 100
# Lone surrogates: Python strings may hold them, no encoding can write them.
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(Exception):
    """Raised by the encoder; the path to the value is added on the way up."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


class _Encoder:
    """Encodes one context, counting its size and watching its depth and cycles."""

    __slots__ = ("active", "left", "max_chars")

    def __init__(self, max_chars: float) -> None:
        self.max_chars = max_chars
        self.left = max_chars
        self.active: set[int] = set()  # ids of the containers being encoded

    def too_large(self) -> _Refused:
        return _Refused(
            f"takes the context over {int(self.max_chars):,} characters, more than a render "
            "can work with (8 x templates.max_output_chars)"
        )

    def value(self, value: Any, depth: int) -> Any:
        # The common types first: this runs for every value of every send.
        kind = type(value)
        if kind is str:
            self.left -= len(value) + 1
            if self.left < 0:
                raise self.too_large()
            if not value.isascii() and _SURROGATE.search(value):
                raise _Refused("holds a lone surrogate, which no encoding can write")
            return value
        if kind is dict or kind is list:
            return self.container(value, depth)
        if value is None or kind is bool:
            return value
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            if not -MAX_CONTEXT_INT <= value <= MAX_CONTEXT_INT:
                raise _Refused("is an integer beyond 64 bits; pass it as a string or Decimal")
            self.left -= 8
            return value if kind is int else int(value)  # an IntEnum is an int on Celery
        if isinstance(value, str):
            return self.value(str(value), depth)  # Markup, a StrEnum: a str on Celery
        if isinstance(value, Decimal):
            text = _check_decimal(value)
            self.left -= len(text) + 1
            return {_TAG: "decimal", "v": text}
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise _Refused("is not a finite number")
            self.left -= 8
            return value
        if isinstance(value, dt.datetime):
            self.left -= 32
            return {_TAG: "datetime", "v": value.isoformat()}
        if isinstance(value, dt.date):
            self.left -= 10
            return {_TAG: "date", "v": value.isoformat()}
        if isinstance(value, uuid.UUID):
            self.left -= 36
            return str(value)
        if isinstance(value, Mapping | list | tuple):
            return self.container(value, depth)
        raise _Refused(
            f"{type(value).__name__} cannot travel to a worker; use str, int, float, bool, "
            "Decimal, date, datetime, None, or lists and dicts of these"
        )

    def container(self, value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], depth: int) -> Any:
        if depth > MAX_CONTEXT_DEPTH:
            raise _Refused(f"is nested deeper than {MAX_CONTEXT_DEPTH}")
        key = id(value)
        if key in self.active:
            raise _Refused("holds itself (a cycle)")
        self.left -= len(value) + 1
        if self.left < 0:
            raise self.too_large()
        self.active.add(key)
        depth += 1
        if isinstance(value, Mapping):
            encoded: Any = {}
            for name, item in value.items():
                if type(name) is not str:
                    self.active.discard(key)
                    raise _Refused("mapping keys must be strings")
                if name == _TAG:
                    self.active.discard(key)
                    raise _Refused(f"the key {_TAG!r} is reserved")
                self.left -= len(name)
                try:
                    encoded[name] = self.value(item, depth)
                except _Refused as err:
                    self.active.discard(key)
                    err.path.append(f".{name}")
                    raise
        else:
            encoded = []
            for index, item in enumerate(value):
                try:
                    encoded.append(self.value(item, depth))
                except _Refused as err:
                    self.active.discard(key)
                    err.path.append(f"[{index}]")
                    raise
        self.active.discard(key)
        return encoded


def _check_decimal(value: Decimal) -> str:
    """``str(value)``, or refuse a Decimal the templates could not format."""
    if not value.is_finite():
        raise _Refused("is not a finite number")
    _sign, digits, exponent = value.as_tuple()
    if (
        len(digits) > MAX_DECIMAL_DIGITS
        or len(digits) + int(exponent) - 1 > MAX_DECIMAL_ADJUSTED
        or -int(exponent) > MAX_DECIMAL_DIGITS
    ):
        raise _Refused(
            f"is too large or too precise to format (at most 10**{MAX_DECIMAL_ADJUSTED}, "
            f"{MAX_DECIMAL_DIGITS} digits and {MAX_DECIMAL_DIGITS} decimal places)"
        )
    return str(value)


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        tag = value.get(_TAG)
        if tag == "decimal":
            return Decimal(value["v"])
        if tag == "datetime":
            return dt.datetime.fromisoformat(value["v"])
        if tag == "date":
            return dt.date.fromisoformat(value["v"])
        return {key: _decode_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_value(item) for item in value]
    return value


def encode_context(
    context: Mapping[str, Any], *, max_chars: float = float("inf")
) -> dict[str, Any]:
    """Return ``context`` as JSON-ready data, or raise :class:`InvalidContextError`.

    Args:
        context: Template fields by name.
        max_chars: The most characters its strings, keys and numbers may take in
            all (shared values counted each time they occur): what a render can
            work with (see ``TemplateRenderer.max_work``).

    Raises:
        InvalidContextError: naming the field (``items[2].price``): a type JSON
            cannot carry, an integer beyond 64 bits, a non-finite or huge number,
            a lone surrogate, containers nested deeper than
            :data:`MAX_CONTEXT_DEPTH` or holding themselves, or over ``max_chars``.
    """
    encoder = _Encoder(max_chars)
    encoded = {}
    for key, value in context.items():
        try:
            encoded[key] = encoder.value(value, 1)
            if encoder.left < 0:
                raise encoder.too_large()
        except _Refused as err:
            field = key + "".join(reversed(err.path))
            raise InvalidContextError(err.message, field=field) from None
    return encoded


def decode_context(data: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_context`."""
    return {key: _decode_value(value) for key, value in data.items()}


@dataclass(frozen=True, slots=True)
class Notification:
    """One request to notify one recipient, as built on the caller's side.

    It holds what a worker needs to render and deliver (ids, kind, channel,
    recipient, context) and nothing secret. ``context`` keeps its JSON-ready
    encoding (see :meth:`to_dict`), so it is the same on every transport.

    Attributes:
        id: Unique id; also the status key (and, on Celery, the task id).
        tenant_id: Whose identity, provider and templates to use.
        kind: Template kind (``"order_confirmation"``, or a host-defined one).
        channel: ``email`` or ``sms``.
        to: Normalised recipient: an email address or an E.164 number.
        context: Template fields, JSON-ready (see :func:`encode_context`).
        idempotency_key: The caller's key, scoped to the tenant, if any.
        locale: Overrides the tenant's locale for this send, if set.
        created_at: When the caller sent it (UTC).
        options: An email's cc, bcc, headers, attachments, ..., if any.
    """

    id: str
    tenant_id: str
    kind: str
    channel: Channel
    to: str
    context: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    locale: str | None = None
    created_at: dt.datetime = field(default_factory=utcnow)
    options: EmailOptions | None = None

    def template_context(self) -> dict[str, Any]:
        """The context as templates see it (Decimals and dates restored)."""
        return decode_context(self.context)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, for brokers and stores."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "channel": self.channel.value,
            "to": self.to,
            "context": dict(self.context),
            "idempotency_key": self.idempotency_key,
            "locale": self.locale,
            "created_at": self.created_at.isoformat(),
            "options": self.options.to_dict() if self.options is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=data["id"],
            tenant_id=data["tenant_id"],
            kind=data["kind"],
            channel=Channel(data["channel"]),
            to=data["to"],
            context=dict(data.get("context") or {}),
            idempotency_key=data.get("idempotency_key"),
            locale=data.get("locale"),
            created_at=dt.datetime.fromisoformat(data["created_at"]),
            options=EmailOptions.from_dict(data["options"]) if data.get("options") else None,
        )


# --- provider-neutral messages -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailMessage:
    """A rendered email, ready for any email provider.

    Attributes:
        from_addr: Sender, with the tenant's display name.
        to: Recipients, with display names when known.
        subject: One line, already checked for header injection.
        text: The text/plain part.
        html: The text/html part, or None for a text-only email.
        reply_to: Reply-To address: the send's own, else the tenant's, if any.
        headers: Extra headers (already checked).
        notification_id, tenant_id, kind: Where the message came from.
        cc, bcc: Further recipients (bcc never appears in a header).
        tags: Labels for the provider's analytics.
        metadata: Key-value pairs the provider keeps with the message.
        attachments: Files, and inline images the HTML refers to by content id.
        track_opens, track_clicks: Ask the provider to track opens and clicks in
            its own way (set only for providers that declare
            :attr:`Feature.TRACK_OPENS` / :attr:`Feature.TRACK_CLICKS`; for the
            others the library has already added its pixel and links to ``html``).
    """

    from_addr: Address
    to: tuple[Address, ...]
    subject: str
    text: str
    html: str | None = None
    reply_to: Address | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    notification_id: str = ""
    tenant_id: str = ""
    kind: str = ""
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    track_opens: bool = False
    track_clicks: bool = False

    channel = Channel.EMAIL


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """A rendered SMS, ready for any SMS provider."""

    from_number: str
    to: str
    body: str
    notification_id: str = ""
    tenant_id: str = ""
    kind: str = ""

    channel = Channel.SMS


Message = EmailMessage | SmsMessage


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a provider reports for a message it accepted.

    Attributes:
        provider: Provider name (``"smtp"``).
        provider_message_id: The provider's id for the message (Message-ID, sid, ...).
        accepted_at: When the provider accepted it (UTC).
        detail: Free-form extra facts (file path, SMTP reply), never secrets.
    """

    provider: str
    provider_message_id: str | None = None
    accepted_at: dt.datetime = field(default_factory=utcnow)
    detail: Mapping[str, Any] = field(default_factory=dict)


#: The clicks an :class:`Engagement` keeps (the first ones); later ones are counted.
MAX_CLICKS = 50


@dataclass(frozen=True, slots=True)
class Click:
    """One followed link of a tracked email.

    Attributes:
        url: The original URL (as it was in the message).
        at: When it was followed (UTC), per the provider or the library's endpoint.
    """

    url: str
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Engagement:
    """What the recipient did with a tracked email: opens and clicks.

    Engagement is history beside the delivery state (a ``delivered`` email that
    was opened stays ``delivered``). Opens are an upper bound: mail privacy
    proxies (Apple Mail Privacy Protection, Gmail's image proxy) fetch images
    without anyone reading the message (see ``docs/tracking.md``).

    Attributes:
        opens: How many opens were reported.
        first_opened_at, last_opened_at: When (UTC), if ever.
        clicks: The first :data:`MAX_CLICKS` clicks, in order.
        click_count: Every click reported, including those not kept.
    """

    opens: int = 0
    first_opened_at: dt.datetime | None = None
    last_opened_at: dt.datetime | None = None
    clicks: tuple[Click, ...] = ()
    click_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "opens": self.opens,
            "first_opened_at": _iso(self.first_opened_at),
            "last_opened_at": _iso(self.last_opened_at),
            "clicks": [{"url": c.url, "at": c.at.isoformat()} for c in self.clicks],
            "click_count": self.click_count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Engagement:
        return cls(
            opens=int(data.get("opens") or 0),
            first_opened_at=_from_iso(data.get("first_opened_at")),
            last_opened_at=_from_iso(data.get("last_opened_at")),
            clicks=tuple(
                Click(url=c["url"], at=dt.datetime.fromisoformat(c["at"]))
                for c in data.get("clicks") or ()
            ),
            click_count=int(data.get("click_count") or 0),
        )


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _from_iso(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """The status of one notification, as the status store records it.

    Attributes:
        id: The notification id.
        tenant_id, kind, channel: What it was.
        state: queued | sending | retrying | sent | failed, then (from the
            provider's delivery events) delivered | bounced | failed.
        attempts: How many delivery attempts have started.
        provider: The provider that handled the last attempt (after a failover, the
            fallback that took the message; after a failure, the one whose error is shown).
        provider_message_id: The provider's id once sent.
        error: Why the last attempt failed (never secrets), or None.
        error_type: The library error class name of ``error``, or None.
        created_at, updated_at: Timestamps (UTC).
        next_attempt_at: When a retry is due, while ``retrying``.
        engagement: Opens and clicks of a tracked email, if any were reported
            (``Notifier.status`` fills it in from the engagement store).
    """

    id: str
    tenant_id: str
    kind: str
    channel: Channel
    state: DeliveryState = DeliveryState.QUEUED
    attempts: int = 0
    provider: str | None = None
    provider_message_id: str | None = None
    error: str | None = None
    error_type: str | None = None
    created_at: dt.datetime = field(default_factory=utcnow)
    updated_at: dt.datetime = field(default_factory=utcnow)
    next_attempt_at: dt.datetime | None = None
    engagement: Engagement | None = None

    def __post_init__(self) -> None:
        # Every status, whoever records it (a delivery, a provider's event, a
        # replay) and wherever it is read (a store, the command line, a dead
        # letter), says why it failed without a secret or a recipient in clear.
        if self.error is not None:
            object.__setattr__(self, "error", redact(self.error))

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def evolve(self, **changes: Any) -> DeliveryStatus:
        """A copy with ``changes`` applied and ``updated_at`` set to now."""
        if "updated_at" not in changes:
            changes["updated_at"] = utcnow()
        # dataclasses.replace, less its walk over the fields' metadata (twice a delivery).
        for name in _STATUS_FIELDS:
            if name not in changes:
                changes[name] = getattr(self, name)
        return type(self)(**changes)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "channel": self.channel.value,
            "state": self.state.value,
            "attempts": self.attempts,
            "provider": self.provider,
            "provider_message_id": self.provider_message_id,
            "error": self.error,
            "error_type": self.error_type,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
        }
        if self.engagement is not None:
            data["engagement"] = self.engagement.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeliveryStatus:
        next_at = data.get("next_attempt_at")
        return cls(
            id=data["id"],
            tenant_id=data["tenant_id"],
            kind=data["kind"],
            channel=Channel(data["channel"]),
            state=DeliveryState(data["state"]),
            attempts=int(data["attempts"]),
            provider=data.get("provider"),
            provider_message_id=data.get("provider_message_id"),
            error=data.get("error"),
            error_type=data.get("error_type"),
            created_at=dt.datetime.fromisoformat(data["created_at"]),
            updated_at=dt.datetime.fromisoformat(data["updated_at"]),
            next_attempt_at=dt.datetime.fromisoformat(next_at) if next_at else None,
            engagement=Engagement.from_dict(data["engagement"]) if data.get("engagement") else None,
        )

    @classmethod
    def queued(cls, notification: Notification) -> DeliveryStatus:
        """The first status of a freshly submitted notification."""
        return cls(
            id=notification.id,
            tenant_id=notification.tenant_id,
            kind=notification.kind,
            channel=notification.channel,
            created_at=notification.created_at,
            updated_at=utcnow(),
        )


#: The fields of a DeliveryStatus, in order (every one an __init__ argument).
_STATUS_FIELDS = tuple(f.name for f in fields(DeliveryStatus))


class Receipt:
    """What every send returns: the notification id, and a way to follow it.

    Attributes:
        id: The notification id (pass it to ``Notifier.status``).
        tenant_id: The tenant it was sent for.
        kind: Its kind.
        duplicate: True when the idempotency key had been used before (same
            tenant and kind) and this receipt points at the earlier notification
            instead of a new one. On a shared store (Redis) the send does not wait
            to know: reading ``duplicate`` waits for the store's answer if it has
            not come yet (False if the store never answered).
    """

    __slots__ = (
        "_aget_status",
        "_await",
        "_duplicate",
        "_get_status",
        "_wait",
        "id",
        "kind",
        "tenant_id",
    )

    def __init__(
        self,
        id: str,
        *,
        tenant_id: str,
        kind: str,
        duplicate: bool | Callable[[], bool] = False,
        get_status: Callable[[str], DeliveryStatus],
        wait: Callable[[str, float | None], DeliveryStatus],
        aget_status: Callable[[str], Awaitable[DeliveryStatus]],
        await_: Callable[[str, float | None], Awaitable[DeliveryStatus]],
    ) -> None:
        self.id = id
        self.tenant_id = tenant_id
        self.kind = kind
        self._duplicate = duplicate
        self._get_status = get_status
        self._wait = wait
        self._aget_status = aget_status
        self._await = await_

    @property
    def duplicate(self) -> bool:
        if not isinstance(self._duplicate, bool):
            self._duplicate = bool(self._duplicate())
        return self._duplicate

    def status(self) -> DeliveryStatus:
        """The current status of the notification."""
        return self._get_status(self.id)

    def wait(self, timeout: float | None = 30.0) -> DeliveryStatus:
        """Block until the notification is sent or failed and return its status.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
        """
        return self._wait(self.id, timeout)

    async def astatus(self) -> DeliveryStatus:
        """The current status, read without blocking the event loop."""
        return await self._aget_status(self.id)

    async def await_(self, timeout: float | None = 30.0) -> DeliveryStatus:
        """Wait, without blocking the event loop, until the notification is sent or
        failed, and return its status (the coroutine twin of :meth:`wait`).

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first.
        """
        return await self._await(self.id, timeout)

    def __repr__(self) -> str:
        # (Known ones only: a repr never waits for a store.)
        dup = ", duplicate=True" if self._duplicate is True else ""
        return f"Receipt(id={self.id!r}, tenant_id={self.tenant_id!r}, kind={self.kind!r}{dup})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Receipt) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)
