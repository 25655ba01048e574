"""A canary secret and a canary recipient, and everything that left the library.

Shared by tests/test_canary.py (eager, every failure path the tests know) and
tests/integration/test_canary_celery.py (a real worker, broker and dead letters).
:class:`Exits` collects what the library let out (log records as a handler
formats them, their attributes, the library's captured events, statuses, errors
with their whole ``__cause__``/``__context__`` chains and formatted tracebacks,
message headers, command-line output); :meth:`Exits.assert_clean` fails naming
the first text that still holds a canary.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tenant_notify.log import LOGGER_NAME, capture_logs

#: A password as YAML reads ``password: 73915824``: an int, and a secret.
CANARY_NUMBER = 73915824
CANARY_SECRET = "Cnry-7f3a9c-s3cret"
CANARY_TO = "canary.recipient@example.com"
CANARY_PHONE = "+15005550188"
#: What must appear nowhere (the address's local part, the number's digits too).
CANARIES = (
    str(CANARY_NUMBER),
    CANARY_SECRET,
    CANARY_TO,
    CANARY_TO.partition("@")[0],
    CANARY_PHONE,
    CANARY_PHONE[2:],
)


class _Collect(logging.Handler):
    def __init__(self, exits: Exits) -> None:
        super().__init__(logging.DEBUG)
        self.exits = exits
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.exits.add(f"log record {record.getMessage()!r}", self.format(record))
        self.exits.add("log record attributes", repr(vars(record)))
        if record.exc_info and record.exc_info[1] is not None:
            self.exits.add_error(record.exc_info[1], "logged exception")


class Exits:
    """The texts the library let out, each with where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: Any) -> None:
        self.texts.append((where, text if isinstance(text, str) else repr(text)))

    def add_status(self, status: Any) -> None:
        self.add(f"status {status.id}", json.dumps(status.to_dict(), default=str))

    def add_error(self, err: BaseException, where: str = "error") -> None:
        """``err`` and every exception in its chain: text, repr, args, attributes,
        and the traceback as Python (and so an error tracker) would print it."""
        self.add(f"{where} traceback", "".join(traceback.format_exception(err)))
        seen: set[int] = set()
        todo: list[BaseException] = [err]
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            name = f"{where} chain {type(node).__qualname__}"
            self.add(name, str(node))
            self.add(name, repr(node))
            self.add(name, repr(node.args))
            self.add(name, repr(getattr(node, "__dict__", {})))
            todo += [link for link in (node.__cause__, node.__context__) if link is not None]

    @contextmanager
    def watching_logs(self) -> Iterator[None]:
        """Collect the library's log records and captured events meanwhile."""
        logger = logging.getLogger(LOGGER_NAME)
        handler = _Collect(self)
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            with capture_logs() as events:
                yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            for event in events:
                self.add(f"log event {event.get('event')}", repr(event))

    def assert_clean(self) -> None:
        assert self.texts, "nothing was collected"
        for where, text in self.texts:
            for canary in CANARIES:
                assert canary not in text, f"{canary!r} in {where}: {text[:2000]}"
