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
  throttled, before the connection goes back to the pool for the next thread;
* :meth:`CallGate.handing` right before the point of no return, the last write
  before which the provider cannot have the message (an HTTP request's first
  byte, SMTP's final dot): the dispatcher records, without waiting, that this
  attempt is handing its message over, so that if the worker dies before the
  provider's reply is recorded the redelivered copy ends as ambiguous, as a
  connection dropped after the dot does, instead of being sent again.

The HTTP providers do all three (:mod:`tenant_notify.providers.http`), the SMTP
provider the last (:mod:`tenant_notify.providers.smtp`); a provider that does
none is checked before the call and recorded after it, as before, and a worker
that dies during its call has the message sent again.
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

    def handing(self) -> None:
        """Right before the write after which the provider may have the message:
        record the hand-over (it does not wait for the store). Called at most
        once a call is enough; again is harmless.

        Raises:
            TransientDeliveryError: the hand-over could not be recorded; the
                provider must not write on (nothing was handed over).
        """


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
