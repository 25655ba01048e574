"""The one hook where statuses change: a :class:`StatusObserver`.

Whatever records a new status (the Notifier for ``queued``, the dispatcher for
every attempt's outcome, the webhook appliers for ``delivered`` and
``bounced``) calls :meth:`StatusObserver.status_changed` with it, after the
status store has it. :class:`~tenant_notify.events.lifecycle.LifecycleEvents`
(signed callbacks, the lifecycle exchange, the failure-rate alert) is the
library's observer; a host may pass its own to the Notifier.

An observer is called on the path of a delivery, so it must return at once (hand
the work to a thread of its own) and never raise.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .log import get_logger
from .models import DeliveryStatus

__all__ = ["NullObserver", "StatusObserver", "notify_engagement", "notify_observer"]


@runtime_checkable
class StatusObserver(Protocol):
    """Told of every status change, after the status store recorded it."""

    def status_changed(self, status: DeliveryStatus) -> None:
        """Take note of ``status``; return at once, never raise."""

    def close(self, timeout: float | None = None) -> None:
        """Finish or hand over what is pending (within ``timeout`` seconds)."""


class NullObserver:
    """Observes nothing: the default when no lifecycle events are configured."""

    def status_changed(self, status: DeliveryStatus) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None

    def __repr__(self) -> str:
        return "NullObserver()"


def notify_observer(observer: StatusObserver, status: DeliveryStatus) -> None:
    """Call ``observer`` with ``status``; a broken observer is logged, never raised:
    the status is recorded already, and a delivery must not fail (or be retried,
    and so sent twice) because of it."""
    try:
        observer.status_changed(status)
    except Exception:
        get_logger().exception(
            "status_observer_failed", tenant_id=status.tenant_id, notification_id=status.id
        )


def notify_engagement(observer: StatusObserver, status: DeliveryStatus, event: str) -> None:
    """Tell ``observer`` that ``status``'s email was opened or clicked (``event`` is
    ``"opened"`` or ``"clicked"``; ``status.engagement`` holds the counts), if it
    takes such news: an optional ``engagement_recorded(status, event)`` method, since
    engagement is history beside the state, not a status change. Never raises."""
    method = getattr(observer, "engagement_recorded", None)
    if method is None:
        return
    try:
        method(status, event)
    except Exception:
        get_logger().exception(
            "status_observer_failed", tenant_id=status.tenant_id, notification_id=status.id
        )
