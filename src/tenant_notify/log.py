"""Logging: the library's logger, recipient masking, processors for your chain.

tenant-notify logs through the standard library: every event is one
:class:`logging.LogRecord` of the ``tenant_notify`` logger, so the host's levels,
handlers and formatters apply, and nothing is printed anywhere until the host (or
the ``tenant-notify`` command) configures logging. The library never calls
``structlog.configure()`` nor ``logging.basicConfig()``: it writes through
structlog's standard-library integration with a processor chain of its own, so the
host's structlog configuration, if any, changes nothing in it.

A record's message is the event name followed by its keys in logfmt
(``notification_sent tenant_id=acme notification_id=... to=j***@example.com``),
and every key is also an attribute of the record (``record.event``,
``record.tenant_id``, ...), for JSON formatters and structlog's
``ProcessorFormatter`` (with ``structlog.stdlib.ExtraAdder()`` in its
``foreign_pre_chain``). Event names are stable (``notification_sent``,
``delivery_retry_scheduled``, ``delivery_failed``, ``notification_duplicate``,
...) and so are the keys: ``tenant_id``, ``notification_id``, ``kind``,
``channel``, ``provider``, ``attempt``, ``to`` (masked), ``error``. While a
notification is delivered, ``tenant_id`` and ``notification_id`` are also bound in
structlog's context variables: the library's records carry them, and so do your
own structlog lines from inside a provider or resolver when your chain has
``structlog.contextvars.merge_contextvars``.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from ._redact import redact, redacted_exception

__all__ = [
    "LOGGER_NAME",
    "MaskRecipients",
    "Redact",
    "capture_logs",
    "get_logger",
    "mask_email",
    "mask_phone",
    "mask_recipient",
    "mask_url",
]

LOGGER_NAME = "tenant_notify"

_stdlib_logger = logging.getLogger(LOGGER_NAME)
# The standard advice for libraries: without this, an unconfigured host would get
# warnings and errors printed by logging's last-resort handler.
_stdlib_logger.addHandler(logging.NullHandler())

# LogRecord attributes an event key must not overwrite (``extra`` refuses them).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_LEVELS = logging.getLevelNamesMapping()
_logfmt = structlog.processors.LogfmtRenderer(bool_as_flag=False)

_captures: list[list[dict[str, Any]]] = []
_captures_lock = threading.Lock()


_ALIASES = {"exception": "error", "warn": "warning", "fatal": "critical"}


def _level_name(method_name: str) -> str:
    return _ALIASES.get(method_name, method_name)


def _level(method_name: str) -> int:
    return _LEVELS.get(_level_name(method_name).upper(), logging.ERROR)


def _drop_unless_wanted(
    logger: logging.Logger, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # First, so an event the host's level excludes costs next to nothing; kept
    # while capture_logs() is active, which sees every level.
    if not _captures and not logger.isEnabledFor(_level(method_name)):
        raise structlog.DropEvent
    return event_dict


def _capture(
    logger: logging.Logger, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _captures:
        entry = {**event_dict, "log_level": _level_name(method_name)}
        with _captures_lock:
            for captured in _captures:
                captured.append(dict(entry))
        if not logger.isEnabledFor(_level(method_name)):
            raise structlog.DropEvent
    return event_dict


def _to_record(
    logger: logging.Logger, method_name: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of the ``logging`` call: message, extra attributes, exc_info."""
    options = {
        name: event_dict.pop(name) for name in ("exc_info", "stack_info") if name in event_dict
    }
    event = str(event_dict.pop("event", ""))
    rest = _logfmt(logger, method_name, dict(event_dict)) if event_dict else ""
    extra = {key: value for key, value in event_dict.items() if key not in _RECORD_ATTRIBUTES}
    extra["event"] = event
    return {"msg": f"{event} {rest}" if rest else event, "extra": extra, **options}


# Keys the library fills with its own structured values: left as they are. Every
# other string value may quote a provider, a template or an exception.
_STRUCTURED_KEYS = frozenset(
    {
        "event", "tenant_id", "notification_id", "kind", "channel", "provider",
        "next_provider", "attempt", "attempts", "error_type", "provider_message_id",
        "retry_in", "state", "queue", "log_level",
    }
)  # fmt: skip
# Recipients the library masks itself (or, with mask_recipients off, on purpose not).
_RECIPIENT_KEYS = frozenset({"to", "recipient", "to_email", "to_phone"})


def _scrub_event(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if type(value) is str and key not in _STRUCTURED_KEYS and key not in _RECIPIENT_KEYS:
            event_dict[key] = redact(value)
    exc_info = event_dict.get("exc_info")
    if exc_info:
        # What a host's handler (or error tracker) gets: a redacted stand-in
        # with a cleaned chain, never the exception itself.
        if exc_info is True:
            exc_info = sys.exc_info()
        error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if isinstance(error, BaseException):
            stand_in = redacted_exception(error)
            event_dict["exc_info"] = (type(stand_in), stand_in, stand_in.__traceback__)
    return event_dict


class Redact:
    """A structlog processor: secrets and recipients out of every free-text value.

    The library's own chain has it; add it to yours so that your lines from inside
    a provider or a resolver are scrubbed the same way:
    ``structlog.configure(processors=[Redact(), ...])``. Every string value but
    the library's structured keys (``tenant_id``, ``notification_id``, ``kind``,
    ...) and the recipient keys (``to``: see :class:`MaskRecipients`) goes through
    :func:`~tenant_notify._redact.redact`; an exception to log becomes a redacted
    stand-in with a cleaned chain.
    """

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return _scrub_event(logger, method_name, event_dict)


#: The library's processor chain, in order. Every event goes through it, whatever
#: the host's structlog configuration: dropped early if no one wants it, the context
#: variables merged in, masking and scrubbing (before ``_capture``, so captured
#: events show what is logged), then one standard-library record.
PROCESSORS: list[Any] = [
    _drop_unless_wanted,
    structlog.contextvars.merge_contextvars,
    _scrub_event,
    _capture,
    _to_record,
]


#: The ``logging`` level of each logger method.
_METHOD_LEVELS = {
    name: _level(name)
    for name in ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal")
}


class _BoundLogger(structlog.stdlib.BoundLogger):
    """structlog's standard-library logger that drops an event nobody wants before
    building it: its keys merged, its processors run, ``DropEvent`` raised and
    caught (about a tenth of a delivery's logging cost, with ``info`` off)."""

    def _proxy_to_logger(
        self, method_name: str, event: str | None = None, *event_args: str, **event_kw: Any
    ) -> Any:
        if not _captures and not self._logger.isEnabledFor(
            _METHOD_LEVELS.get(method_name) or _level(method_name)
        ):
            return None
        return super()._proxy_to_logger(method_name, event, *event_args, **event_kw)


def get_logger() -> Any:
    """The library's logger: structlog's standard-library logger over ``tenant_notify``."""
    return _BoundLogger(_stdlib_logger, PROCESSORS, {})


class LazyBound:
    """``logger.bind(**keys)``, bound only when an event is logged that someone wants.

    A delivery binds its ids for every line it may log, and in the common case
    logs one ``info`` line that nobody wants (``info`` off): binding costs more
    than the dropped line. ``debug`` and ``info`` are checked first, as the
    library's logger checks them; every other method binds and logs.
    """

    __slots__ = ("_bound", "_keys", "_logger")

    def __init__(self, logger: Any, **keys: Any) -> None:
        self._logger = logger
        self._keys = keys
        self._bound: Any = None

    def _get(self) -> Any:
        bound = self._bound
        if bound is None:
            bound = self._bound = self._logger.bind(**self._keys)
        return bound

    def debug(self, event: str, **kw: Any) -> Any:
        if _captures or _stdlib_logger.isEnabledFor(logging.DEBUG):
            return self._get().debug(event, **kw)
        return None

    def info(self, event: str, **kw: Any) -> Any:
        if _captures or _stdlib_logger.isEnabledFor(logging.INFO):
            return self._get().info(event, **kw)
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


@contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Collect the library's log events, from every thread, as dicts.

    Each entry holds ``event``, the event's keys (masked as they would be logged)
    and ``log_level``. Every level is collected, whatever the ``tenant_notify``
    logger's level; records are still emitted only where the host's levels let
    them. The standard-library counterpart is pytest's ``caplog``.
    """
    captured: list[dict[str, Any]] = []
    with _captures_lock:
        _captures.append(captured)
    try:
        yield captured
    finally:
        with _captures_lock:
            _captures.remove(captured)


def mask_email(address: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    """``+15551234567`` -> ``+1********67``: the first and last two characters."""
    if len(number) < 6:
        return "***"
    return f"{number[:2]}{'*' * (len(number) - 4)}{number[-2:]}"


def mask_recipient(value: str) -> str:
    """Mask an email address or a phone number."""
    return mask_email(value) if "@" in value else mask_phone(value)


_SECRET_PARAMETER = re.compile(r"(password|secret|token|api_key)$", re.IGNORECASE)


def mask_url(url: str) -> str:
    """A URL with its password (and secret query parameters) replaced by ``***``.

    ``amqp://app:s3cret@rabbit:5672//`` -> ``amqp://app:***@rabbit:5672//``;
    ``redis://h:6379/0?password=x`` -> ``redis://h:6379/0?password=***``.
    """
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAMETER.search(name) for name, _ in pairs):
            query = urlencode(
                [(n, "***" if _SECRET_PARAMETER.search(n) else v) for n, v in pairs], safe="*"
            )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class MaskRecipients:
    """A structlog processor that masks recipient fields in any event.

    Add it to your own chain to mask recipients in your application's log lines
    too: ``structlog.configure(processors=[MaskRecipients(), ...])``.

    Args:
        keys: Event keys holding an address or a number.
    """

    def __init__(self, keys: Iterable[str] = ("to", "recipient", "to_email", "to_phone")) -> None:
        self.keys = frozenset(keys)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in self.keys & event_dict.keys():
            value = event_dict[key]
            if isinstance(value, str) and "*" not in value:
                event_dict[key] = mask_recipient(value)
        return event_dict
