"""Where reputation state lives: suppression lists, breaker state, engagement.

Three small contracts, implemented together by :class:`MemoryReputationStore`
(one process: the embedded default) and
:class:`~tenant_notify.reputation.redis.RedisReputationStore` (beside the Redis
status store, shared by web processes and Celery workers). A host may implement
them on its own database.

``answers_locally`` tells the Notifier whether asking costs a network round
trip: a store that answers in process is asked at the call (a suppressed
recipient raises :class:`~tenant_notify.errors.RecipientSuppressedError`
before anything is queued); a shared store is asked on the delivery side only,
so the caller never waits on Redis.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..models import MAX_CLICKS, Channel, Click, Engagement, utcnow

if TYPE_CHECKING:
    from .suppressions import Suppression

__all__ = [
    "EngagementStore",
    "MemoryReputationStore",
    "Pause",
    "PauseStore",
    "ReputationStore",
    "SuppressionStore",
    "recipient_key",
]


def recipient_key(channel: Channel, recipient: str) -> str:
    """The form a recipient is looked up by: addresses ignore case, numbers are E.164."""
    return recipient.casefold() if channel is Channel.EMAIL else recipient


@runtime_checkable
class SuppressionStore(Protocol):
    """Per-tenant, per-channel suppression lists."""

    answers_locally: bool

    def add_suppression(self, entry: Suppression) -> None:
        """Record ``entry``, replacing one for the same recipient and category."""

    def remove_suppression(
        self, tenant_id: str, channel: Channel, recipient: str, category: str | None
    ) -> int:
        """Drop the entry of ``recipient`` for ``category``; 1 if there was one, else 0."""

    def get_suppressions(
        self, tenant_id: str, channel: Channel, recipient: str
    ) -> list[Suppression]:
        """Every entry of ``recipient`` (one per category; None first if present)."""

    def list_suppressions(self, tenant_id: str, channel: Channel) -> list[Suppression]:
        """Every entry of the tenant's list on ``channel``."""


@dataclass(frozen=True, slots=True)
class Pause:
    """A tenant's channel paused by the sender-fault breaker.

    Attributes:
        tenant_id, channel: What is paused.
        reason: The error that tripped the breaker.
        faults: Sender faults counted in the window when it tripped.
        since: When it was paused (UTC).
        until: When it ends by itself (UTC).
    """

    tenant_id: str
    channel: Channel
    reason: str
    faults: int
    since: dt.datetime = field(default_factory=utcnow)
    until: dt.datetime = field(default_factory=utcnow)

    def to_dict(self) -> dict[str, object]:
        return {
            "tenant_id": self.tenant_id,
            "channel": self.channel.value,
            "reason": self.reason,
            "faults": self.faults,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Pause:
        return cls(
            tenant_id=str(data["tenant_id"]),
            channel=Channel(str(data["channel"])),
            reason=str(data["reason"]),
            faults=int(str(data["faults"])),
            since=dt.datetime.fromisoformat(str(data["since"])),
            until=dt.datetime.fromisoformat(str(data["until"])),
        )


@runtime_checkable
class PauseStore(Protocol):
    """Sender-fault counts and pauses per tenant and channel."""

    answers_locally: bool

    def count_sender_fault(self, tenant_id: str, channel: Channel, window: float) -> int:
        """Count one fault now; return the faults within the last ``window`` seconds."""

    def pause(self, pause: Pause) -> None:
        """Record ``pause`` until ``pause.until``; the fault count starts again."""

    def resume(self, tenant_id: str, channel: Channel) -> bool:
        """Lift a pause; True if there was one."""

    def get_pause(self, tenant_id: str, channel: Channel) -> Pause | None:
        """The pause in force, or None."""

    def list_pauses(self) -> list[Pause]:
        """Every pause in force."""


@runtime_checkable
class EngagementStore(Protocol):
    """Opens and clicks per notification, kept beside its status."""

    def record_open(self, notification_id: str, at: dt.datetime) -> Engagement:
        """Count an open; return the engagement after it."""

    def record_click(self, notification_id: str, url: str, at: dt.datetime) -> Engagement:
        """Count a click on ``url``; return the engagement after it."""

    def get_engagement(self, notification_id: str) -> Engagement | None:
        """The engagement of a notification, or None when nothing was recorded."""


@runtime_checkable
class ReputationStore(SuppressionStore, PauseStore, EngagementStore, Protocol):
    """All three contracts in one object: what :class:`~tenant_notify.reputation.Reputation`
    is built on, plus the one question the delivery side asks of every notification."""

    def hold_state(
        self, tenant_id: str, channel: Channel, recipient: str
    ) -> tuple[Pause | None, list[Suppression]]:
        """:meth:`get_pause` and :meth:`get_suppressions` together (one round trip on
        a shared store): what decides whether a delivery may go to a provider."""


class MemoryReputationStore:
    """Every reputation contract in dicts under one lock, for one process.

    Args:
        max_engagements: Notifications whose engagement is kept; past it the
            oldest are forgotten (as the memory status store forgets statuses).
    """

    answers_locally = True

    def __init__(self, max_engagements: int = 100_000) -> None:
        self._lock = threading.Lock()
        # (tenant, channel) -> recipient key -> category -> entry
        self._lists: dict[tuple[str, Channel], dict[str, dict[str | None, Suppression]]] = {}
        self._faults: dict[tuple[str, Channel], list[float]] = {}
        self._pauses: dict[tuple[str, Channel], Pause] = {}
        self._engagements: OrderedDict[str, Engagement] = OrderedDict()
        self._max_engagements = max_engagements

    # --- suppressions ------------------------------------------------------------------

    def add_suppression(self, entry: Suppression) -> None:
        key = recipient_key(entry.channel, entry.recipient)
        with self._lock:
            by_recipient = self._lists.setdefault((entry.tenant_id, entry.channel), {})
            by_recipient.setdefault(key, {})[entry.category] = entry

    def remove_suppression(
        self, tenant_id: str, channel: Channel, recipient: str, category: str | None
    ) -> int:
        key = recipient_key(channel, recipient)
        with self._lock:
            by_recipient = self._lists.get((tenant_id, channel), {})
            entries = by_recipient.get(key, {})
            removed = entries.pop(category, None)
            if not entries:
                by_recipient.pop(key, None)
            return 0 if removed is None else 1

    def get_suppressions(
        self, tenant_id: str, channel: Channel, recipient: str
    ) -> list[Suppression]:
        entries = self._lists.get((tenant_id, channel), {}).get(recipient_key(channel, recipient))
        if not entries:
            return []
        with self._lock:
            return sorted(entries.values(), key=lambda e: e.category is not None)

    def list_suppressions(self, tenant_id: str, channel: Channel) -> list[Suppression]:
        with self._lock:
            lists = self._lists.get((tenant_id, channel), {})
            return [entry for entries in lists.values() for entry in entries.values()]

    # --- the breaker ---------------------------------------------------------------------

    def count_sender_fault(self, tenant_id: str, channel: Channel, window: float) -> int:
        now = time.monotonic()
        with self._lock:
            faults = self._faults.setdefault((tenant_id, channel), [])
            faults.append(now)
            faults[:] = [t for t in faults if t > now - window]
            return len(faults)

    def pause(self, pause: Pause) -> None:
        with self._lock:
            self._pauses[(pause.tenant_id, pause.channel)] = pause
            self._faults.pop((pause.tenant_id, pause.channel), None)

    def resume(self, tenant_id: str, channel: Channel) -> bool:
        with self._lock:
            self._faults.pop((tenant_id, channel), None)
            pause = self._pauses.pop((tenant_id, channel), None)
            return pause is not None and pause.until > utcnow()

    def get_pause(self, tenant_id: str, channel: Channel) -> Pause | None:
        pause = self._pauses.get((tenant_id, channel))
        if pause is None:
            return None
        if pause.until <= utcnow():
            with self._lock:
                if self._pauses.get((tenant_id, channel)) is pause:
                    del self._pauses[(tenant_id, channel)]
            return None
        return pause

    def list_pauses(self) -> list[Pause]:
        with self._lock:
            pauses = list(self._pauses.values())
        return [p for p in pauses if self.get_pause(p.tenant_id, p.channel) is not None]

    def hold_state(
        self, tenant_id: str, channel: Channel, recipient: str
    ) -> tuple[Pause | None, list[Suppression]]:
        return self.get_pause(tenant_id, channel), self.get_suppressions(
            tenant_id, channel, recipient
        )

    # --- engagement ----------------------------------------------------------------------

    def _update(self, notification_id: str, change: Engagement) -> Engagement:
        self._engagements[notification_id] = change
        self._engagements.move_to_end(notification_id)
        while len(self._engagements) > self._max_engagements:
            self._engagements.popitem(last=False)
        return change

    def record_open(self, notification_id: str, at: dt.datetime) -> Engagement:
        with self._lock:
            current = self._engagements.get(notification_id) or Engagement()
            first = current.first_opened_at
            last = current.last_opened_at
            return self._update(
                notification_id,
                replace(
                    current,
                    opens=current.opens + 1,
                    first_opened_at=at if first is None or at < first else first,
                    last_opened_at=at if last is None or at > last else last,
                ),
            )

    def record_click(self, notification_id: str, url: str, at: dt.datetime) -> Engagement:
        with self._lock:
            current = self._engagements.get(notification_id) or Engagement()
            clicks = current.clicks
            if len(clicks) < MAX_CLICKS:
                clicks = (*clicks, Click(url=url, at=at))
            return self._update(
                notification_id,
                replace(current, clicks=clicks, click_count=current.click_count + 1),
            )

    def get_engagement(self, notification_id: str) -> Engagement | None:
        return self._engagements.get(notification_id)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "MemoryReputationStore()"
