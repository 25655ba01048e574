"""Sends that cannot be delivered, each with the error it must raise at the call.

Shared by tests/test_notifier.py (eager and in-process) and
tests/integration/test_bad_input_celery.py (a real broker), so every transport
is shown the same inputs and must answer them the same way, before anything is
queued.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from tenant_notify.errors import (
    HeaderInjectionError,
    InvalidAmountError,
    InvalidContextError,
    NotifyError,
    ValidationError,
)

# Every character a reader may take for a line break, and other controls.
LINE_BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
CONTROLS = ["\x00", "\x01", "\x1b", "\x7f", "\x80", "\x9b", "\x9f"]


def _deep(levels: int) -> dict[str, Any]:
    top = node = {}
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return top


def _cycle() -> dict[str, Any]:
    loop: dict[str, Any] = {"x": 1}
    loop["again"] = [loop]
    return loop


def _email(**change: Any) -> Callable[[Any], Any]:
    args = {"to_email": "jane@example.com", "subject": "Hi", "body": "b", "tenant_id": "acme"}
    return lambda notify: notify.send_email(**{**args, **change})


def _order(**change: Any) -> Callable[[Any], Any]:
    args = {
        "order_id": "A-1",
        "customer_email": "jane@example.com",
        "order_total": Decimal("9.99"),
        "currency": "USD",
        "tenant_id": "acme",
    }
    return lambda notify: notify.send_order_confirmation(**{**args, **change})


def _context(**values: Any) -> Callable[[Any], Any]:
    context = {"subject": "Hi", "body": "b", **values}
    return lambda notify: notify.send(
        "email", tenant_id="acme", to="j@example.com", context=context
    )


BAD_SENDS: dict[str, tuple[Callable[[Any], Any], type[NotifyError], str]] = {
    **{
        f"subject U+{ord(char):04X}": (
            _email(subject=f"Hi{char}Bcc: x@evil.test"),
            HeaderInjectionError,
            "control character",
        )
        for char in LINE_BREAKS + CONTROLS
    },
    "subject lone surrogate": (
        _email(subject="Hi \ud800"),
        HeaderInjectionError,
        "control character",
    ),
    "subject encoded U+2028": (
        _email(subject="=?utf-8?q?=E2=80=A8?=Bcc: x"),
        HeaderInjectionError,
        "control character",
    ),
    "customer name U+2028": (
        _order(customer_name="Jane\u2028Doe"),
        HeaderInjectionError,
        "control character",
    ),
    "order url NEL": (
        _order(order_url="https://x.test/\x85"),
        HeaderInjectionError,
        "control character",
    ),
    "body over the render cap": (_email(body="x" * 262_145), ValidationError, "longer than"),
    "html body over the render cap": (_email(html_body="<p>" * 90_000), ValidationError, "longer"),
    "total 1e60": (_order(order_total="1e60"), InvalidAmountError, "largest amount"),
    "total 10**15 + 1": (_order(order_total=10**15 + 1), InvalidAmountError, "largest amount"),
    "total with 40 decimal places": (
        _order(order_total="0." + "1" * 40),
        InvalidAmountError,
        "decimal places",
    ),
    "quantity 10**10": (
        _order(items=[{"name": "x", "quantity": 10**10, "unit_price": 1}]),
        InvalidContextError,
        "quantity",
    ),
    "order id 10**5000": (_order(order_id=10**5000), ValidationError, "64 bits"),
    "context 100,000 deep": (_context(tree=_deep(100_000)), InvalidContextError, "deeper than 32"),
    "context 33 deep": (_context(tree=_deep(33)), InvalidContextError, "deeper than 32"),
    "cyclic context": (_context(loop=_cycle()), InvalidContextError, "cycle"),
    "context int 10**5000": (_context(n=10**5000), InvalidContextError, "64 bits"),
    "context int 2**63": (_context(n=[2**63]), InvalidContextError, "64 bits"),
    "context Decimal 1e60": (_context(d=Decimal("1e60")), InvalidContextError, "too large"),
    "context NaN": (_context(d={"x": float("nan")}), InvalidContextError, "finite"),
    "context lone surrogate": (_context(s=["ok", "\udc80"]), InvalidContextError, "surrogate"),
    "context over the work budget": (
        _context(rows=["x" * 1000] * 2100),
        InvalidContextError,
        "more than a render can work with",
    ),
    "context of shared references": (
        _context(rows=[["x" * 100] * 100] * 1000),
        InvalidContextError,
        "more than a render can work with",
    ),
}

# At the edge of every limit above, and so accepted.
GOOD_SENDS: dict[str, Callable[[Any], Any]] = {
    "subject with a tab": _email(subject="Order\t42"),
    "subject with non-ASCII": _email(subject="Gr\u00fc\u00dfe \u2013 \u2713"),
    "body at the render cap": _email(body="x" * 262_144),
    "total 10**15": _order(order_total=10**15),
    "context 32 deep": _context(tree=_deep(31)),
    "context int 2**63 - 1": _context(n=2**63 - 1),
    "context Decimal 1e50": _context(d=Decimal("1e50")),
    "context of shared strings": _context(rows=["x" * 1000] * 2000),
}
