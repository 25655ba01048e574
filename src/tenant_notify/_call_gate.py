"""The last word on one provider call, between the dispatcher and the provider.

The dispatcher checks a provider account's pause before it calls the provider,
but the request leaves later (after a free pooled connection, a TCP connect, a
new client, the interpreter's turn among the other delivery threads), and the
reply is read by the provider before the dispatcher hears of it. Between the
two, a delivery thread could send into a pause another thread has just met.

So for the length of one provider call the dispatcher sets a :class:`CallGate`
(in a context variable: each thread has its own), and a provider that can calls

* :meth:`CallGate.before_request` right before the request is written: it
  raises (an exception of the dispatcher's, which the provider lets through) if
  the account was paused meanwhile, and nothing is sent;
* :meth:`CallGate.throttled` the moment a reply says the account is
  throttled, before the connection goes back to the pool for the next thread.

The HTTP providers do both (:mod:`tenant_notify.providers.http`); a provider
that does neither is checked before the call and recorded after it, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

__all__ = ["CallGate", "current", "gated"]


class CallGate(Protocol):
    """What the dispatcher gives a provider for one call."""

    def before_request(self) -> None:
        """Right before the request is written: raises to stop it (the account
        is paused now); returns to let it go."""

    def throttled(self, retry_after: float | None) -> None:
        """The reply said the account is throttled (``retry_after`` seconds, or
        None when it named no time): pause it for every worker now."""


_GATE: ContextVar[CallGate | None] = ContextVar("tenant_notify_call_gate", default=None)


@contextmanager
def gated(gate: CallGate) -> Iterator[None]:
    """Make ``gate`` the current call's gate while the block runs."""
    token = _GATE.set(gate)
    try:
        yield
    finally:
        _GATE.reset(token)


def current() -> CallGate | None:
    """The gate of the provider call this thread is in, if the dispatcher set one."""
    return _GATE.get()
