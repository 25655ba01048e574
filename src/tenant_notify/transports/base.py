"""The transport contract.

A transport has one job: :meth:`Transport.submit` hands a notification to the
delivery side, or raises :class:`~tenant_notify.errors.EnqueueError` when it
cannot (so nothing is ever dropped silently). Delivery itself is always
:meth:`Dispatcher.deliver <tenant_notify.dispatcher.Dispatcher.deliver>`, and a
transport carries out the retry each :class:`~tenant_notify.dispatcher.Outcome`
asks for.

Subclasses implement ``submit`` and, if they hold threads or connections,
``close``; they build themselves from settings in ``from_settings``. A transport
whose deliveries run in other processes overrides ``default_stores`` so that the
Notifier, when given no stores, uses ones every process shares.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

from ..config import Settings
from ..dispatcher import Dispatcher
from ..models import Notification
from ..stores import IdempotencyStore, StatusStore

__all__ = ["Transport"]


class Transport(ABC):
    """Base class of every transport."""

    name: ClassVar[str] = ""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    @classmethod
    def from_settings(cls, dispatcher: Dispatcher, settings: Settings) -> Self:
        """Build the transport from settings (subclasses pick what they need)."""
        return cls(dispatcher)

    @classmethod
    def default_stores(cls, settings: Settings) -> tuple[StatusStore, IdempotencyStore] | None:
        """The status and idempotency stores to use when the Notifier is given none.

        None (the default) means in-memory stores, right for transports that
        deliver in the caller's process. The ``celery`` transport returns Redis
        stores, so the web process and the workers see the same state.
        """
        return None

    @abstractmethod
    def submit(self, notification: Notification) -> None:
        """Hand ``notification`` to the delivery side.

        Raises:
            EnqueueError: it was not accepted; nothing is queued.
        """

    def close(self, timeout: float | None = None) -> None:  # noqa: B027 - optional hook
        """Stop accepting work and finish or settle what was accepted."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
