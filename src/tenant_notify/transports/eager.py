"""Eager transport: deliver in the caller's thread, for scripts and tests.

Retries happen in the caller too, after sleeping the policy's delay; configure a
small ``[retry] initial_delay`` in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..dispatcher import Dispatcher
from ..models import Notification
from .base import Transport

__all__ = ["EagerTransport"]


class EagerTransport(Transport):
    """Delivers each notification before ``submit`` returns.

    Args:
        dispatcher: The dispatcher to run.
        sleep: How to wait between attempts (replaceable in tests).
    """

    name = "eager"

    def __init__(self, dispatcher: Dispatcher, *, sleep: Callable[[float], None] = time.sleep):
        super().__init__(dispatcher)
        self._sleep = sleep

    def submit(self, notification: Notification) -> None:
        attempt = 1
        while True:
            outcome = self.dispatcher.deliver(notification, attempt)
            if outcome.retry_in is None:
                return
            self._sleep(outcome.retry_in)
            if not outcome.deferred:  # a deferral (a limit, a paused account) was no attempt
                attempt += 1
