"""One way out for text: secrets removed, recipients masked.

Everything the library lets out of the process goes through here: error messages
(:class:`~tenant_notify.errors.NotifyError` redacts its own message; a
:class:`~tenant_notify.errors.DeliveryError` also masks the recipients a provider's
reply quotes), the chains of the errors a provider raises
(:func:`clean_chain`, called by ``Provider.send``), statuses
(:class:`~tenant_notify.models.DeliveryStatus` redacts its ``error``), log events
(the :class:`~tenant_notify.log.Redact` processor), dead-letter headers and the
command line's output (which print those).

* **Secrets**: every secret the settings hold (any value of a key that names one,
  a password in a broker or Redis URL) and every secret a provider is built with
  is registered here (:func:`register_secret`); :func:`redact_secrets` replaces
  each occurrence by ``***``. Secrets shorter than :data:`MIN_SECRET_CHARS` are
  kept out of the text substitution, which would otherwise blank every ``1`` of
  a message for a one-digit password.
* **Recipients**: :func:`mask_recipients` masks every email address and every
  number in E.164 form (``+`` and 7 to 15 digits, spaces, dots, dashes or
  brackets between them) the way the ``to`` field of a log line is masked:
  ``j***@example.com``, ``+1********67``. Masked text stays as it is, so the
  functions may be applied twice.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "MIN_SECRET_CHARS",
    "Redacted",
    "clean_chain",
    "mask_recipients",
    "redact",
    "redact_secrets",
    "redacted_exception",
    "register_secret",
    "register_url_secrets",
]

#: Secrets shorter than this are not searched for in text (see the module docstring).
MIN_SECRET_CHARS = 4

_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first, so a secret inside another goes with it
_lock = threading.Lock()

# Anything around an "@" up to white space, quotes, brackets or separators (an
# international domain, a local part a server quotes oddly): a conservative net.
# No "*" on the left: a masked address stays as it is.
_EMAIL = re.compile(r"[^\s@'\"(),;:<>\[\]*]+@[^\s@'\"(),;:<>\[\]]+")
# An address in quotes or angle brackets, spaces and all (not yet masked).
_QUOTED_EMAIL = re.compile(r"""(['"<])([^'"<>\n]*[^'"<>\n*]@[^'"<>\n]*)(['">])""")
# E.164, as typed or as a provider quotes it: +15551234567, +1 (555) 123-4567.
_PHONE = re.compile(r"(?<![\w+])\+[1-9](?:[ ().-]{0,2}\d){6,14}(?!\d)")
_PHONE_SEPARATORS = re.compile(r"[ ().-]")


def register_secret(value: str) -> None:
    """Remember ``value`` as a secret: from now on it is redacted from every text."""
    global _ordered
    if len(value) < MIN_SECRET_CHARS or value in _secrets:
        return
    with _lock:
        _secrets.add(value)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def register_url_secrets(url: str | None) -> None:
    """Register the password of a URL (``amqp://user:pw@host``, ``?password=pw``)."""
    if not url:
        return
    parts = urlsplit(url)
    candidates = [parts.password or ""]
    candidates += [
        value for name, value in parse_qsl(parts.query) if _SECRET_PARAMETER.search(name)
    ]
    for secret in candidates:
        register_secret(secret)
        register_secret(unquote(secret))


_SECRET_PARAMETER = re.compile(r"password|secret|token", re.IGNORECASE)


def redact_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every registered secret (and each of ``secrets``) as ``***``."""
    # (The SMTP provider scrubs every reply it keeps: most have no secrets to look for.)
    extra = sorted((s for s in secrets if s), key=len, reverse=True) if secrets else ()
    for secret in (*extra, *_ordered) if extra else _ordered:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _mask_email(match: re.Match[str]) -> str:
    local, _, domain = match.group(0).rpartition("@")
    return f"{local[:1]}***@{domain}"


def _mask_phone(match: re.Match[str]) -> str:
    number = _PHONE_SEPARATORS.sub("", match.group(0))
    return f"{number[:2]}{'*' * (len(number) - 4)}{number[-2:]}"


def _mask_quoted(match: re.Match[str]) -> str:
    # An address quoted whole may hold what the plain pattern stops at (a space
    # in one being refused): the quotes say where it ends.
    inner = match.group(2)
    local, _, domain = inner.rpartition("@")
    return f"{match.group(1)}{local[:1]}***@{domain}{match.group(3)}"


def mask_recipients(text: str) -> str:
    """``text`` with every email address and E.164 number in it masked."""
    if "@" in text:
        text = _QUOTED_EMAIL.sub(_mask_quoted, text)
        text = _EMAIL.sub(_mask_email, text)
    if "+" in text:
        text = _PHONE.sub(_mask_phone, text)
    return text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """:func:`redact_secrets`, then :func:`mask_recipients`."""
    return mask_recipients(redact_secrets(text, secrets))


# --- exceptions ---------------------------------------------------------------------------


class Redacted(Exception):
    """Stands in an exception chain for an exception of a type that cannot be
    copied with a redacted message (see :func:`redacted_exception`): its message
    is the original's type and redacted text.

    Attributes:
        original_type: ``module.QualName`` of the exception it stands for.
    """

    def __init__(self, original: BaseException) -> None:
        kind = type(original)
        self.original_type = f"{kind.__module__}.{kind.__qualname__}"
        super().__init__(f"{self.original_type}: {redact(str(original))}")


def redacted_exception(err: BaseException) -> BaseException:
    """``err`` itself if it is the library's (its text is redacted already), else a
    stand-in: a copy of the same type whose only argument is the redacted text (a
    :class:`Redacted` when the type cannot be copied so); either way with a cleaned
    chain."""
    from .errors import NotifyError

    stand_in = err if isinstance(err, NotifyError | Redacted) else _stand_in(err)
    return clean_chain(stand_in)


def _stand_in(err: BaseException) -> BaseException:
    """A copy of ``err`` of the same type (so error trackers group it as before)
    whose only argument is its redacted text, without its other attributes (a
    server's raw reply, say); a :class:`Redacted` when the type cannot be copied
    so. It keeps the traceback (frames, not their values' text) and the chain."""
    text = redact(str(err))
    stand_in: BaseException
    try:
        stand_in = type(err).__new__(type(err))
        stand_in.args = (text,)
        copied = str(stand_in) in (text, repr(text))  # a KeyError shows its repr
    except Exception:
        copied = False
    if not copied:
        stand_in = Redacted(err)
    stand_in.__traceback__ = err.__traceback__
    stand_in.__cause__ = err.__cause__
    stand_in.__context__ = err.__context__
    stand_in.__suppress_context__ = err.__suppress_context__
    return stand_in


def clean_chain(err: BaseException) -> BaseException:
    """Replace, in place, every exception in ``err``'s ``__cause__`` and
    ``__context__`` chain that is not the library's by a redacted stand-in (see
    :func:`redacted_exception`).

    The library's own errors are kept (their text is redacted when they are
    made); the chain goes on below them. Returns ``err``.
    """
    from .errors import NotifyError

    seen: set[int] = set()
    made: set[int] = set()  # the stand-ins made here
    todo = [err]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for attr in ("__cause__", "__context__"):
            link = getattr(node, attr)
            if link is None:
                continue
            if id(link) not in made and not isinstance(link, NotifyError | Redacted):
                link = _stand_in(link)
                made.add(id(link))
                setattr(node, attr, link)
            todo.append(link)
    return err
