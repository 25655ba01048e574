"""Logging: the library's logger, recipient masking, processors for your chain.

tenant-notify logs through ``structlog.get_logger("tenant_notify")`` and never
configures structlog: route it where you like. Event names are stable
(``notification_sent``, ``delivery_retry_scheduled``, ``delivery_failed``,
``notification_duplicate``, ...) and so are the keys: ``tenant_id``,
``notification_id``, ``kind``, ``channel``, ``provider``, ``attempt``, ``to``
(masked), ``error``. While a notification is delivered, ``tenant_id`` and
``notification_id`` are also bound in structlog's context variables, so your own
log lines from inside a provider or resolver carry them when your chain has
``structlog.contextvars.merge_contextvars``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

__all__ = [
    "MaskRecipients",
    "get_logger",
    "mask_email",
    "mask_phone",
    "mask_recipient",
    "mask_url",
]

LOGGER_NAME = "tenant_notify"


def get_logger() -> Any:
    """The library's structlog logger."""
    return structlog.get_logger(LOGGER_NAME)


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
