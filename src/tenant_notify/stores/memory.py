"""In-memory stores for one process: the embedded default."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from ..models import DeliveryStatus
from .base import Claim, ClaimState

__all__ = ["MemoryIdempotencyStore", "MemoryStatusStore"]


class MemoryStatusStore:
    """Statuses in a dict, bounded: the oldest final statuses go first.

    Args:
        max_entries: How many statuses to keep. Statuses still in flight are never
            evicted; past the bound, the oldest final ones are.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._statuses: OrderedDict[str, DeliveryStatus] = OrderedDict()
        # (provider, provider_message_id) -> notification id, for delivery webhooks.
        self._by_provider_id: dict[tuple[str, str], str] = {}
        self._changed = threading.Condition()
        self._max_entries = max_entries

    def save(self, status: DeliveryStatus) -> None:
        with self._changed:
            previous = self._statuses.get(status.id)
            if previous is not None:
                self._unindex(previous)
            self._statuses[status.id] = status
            self._statuses.move_to_end(status.id)
            if status.provider and status.provider_message_id:
                self._by_provider_id[(status.provider, status.provider_message_id)] = status.id
            if len(self._statuses) > self._max_entries:
                self._evict()
            self._changed.notify_all()

    def save_first(self, status: DeliveryStatus) -> bool:
        """Record ``status`` unless its id has a status; True when it had one."""
        with self._changed:
            if status.id in self._statuses:
                return True
        self.save(status)
        return False

    def discard_queued(self, status: DeliveryStatus) -> None:
        """Forget ``status.id`` only while its status is still ``status``."""
        with self._changed:
            if self._statuses.get(status.id) == status:
                self._unindex(self._statuses.pop(status.id))

    def _unindex(self, status: DeliveryStatus) -> None:
        if status.provider and status.provider_message_id:
            key = (status.provider, status.provider_message_id)
            if self._by_provider_id.get(key) == status.id:
                del self._by_provider_id[key]

    def _evict(self) -> None:
        excess = len(self._statuses) - self._max_entries
        for key in [k for k, s in self._statuses.items() if s.is_final][:excess]:
            self._unindex(self._statuses.pop(key))

    def get(self, notification_id: str) -> DeliveryStatus | None:
        return self._statuses.get(notification_id)

    def find_by_provider_message_id(
        self, provider: str, provider_message_id: str
    ) -> DeliveryStatus | None:
        with self._changed:
            notification_id = self._by_provider_id.get((provider, provider_message_id))
            return None if notification_id is None else self._statuses.get(notification_id)

    def discard(self, notification_id: str) -> None:
        with self._changed:
            status = self._statuses.pop(notification_id, None)
            if status is not None:
                self._unindex(status)

    def wait(self, notification_id: str, timeout: float | None) -> DeliveryStatus | None:
        def settled() -> bool:
            status = self._statuses.get(notification_id)
            return status is None or status.is_final

        with self._changed:
            self._changed.wait_for(settled, timeout)
            return self._statuses.get(notification_id)

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._statuses)


class MemoryIdempotencyStore:
    """Idempotency keys in a dict with expiry times, under one lock."""

    _LEASED = "\0leased"
    _DONE = "\0done"

    def __init__(self) -> None:
        # key -> (value, expires_at on the monotonic clock)
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def _live(self, key: str, now: float) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def _sweep(self, now: float) -> None:
        # Expired keys are dropped now and then, so the dict does not only grow.
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        for key in [k for k, (_, expires) in self._entries.items() if expires <= now]:
            del self._entries[key]

    def reserve(self, key: str, notification_id: str, ttl: float) -> str | None:
        now = time.monotonic()
        with self._lock:
            self._sweep(now)
            existing = self._live(key, now)
            if existing is not None:
                return existing
            self._entries[key] = (notification_id, now + ttl)
            return None

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def claim(self, key: str, lease: float) -> Claim:
        now = time.monotonic()
        with self._lock:
            current = self._live(key, now)
            if current == self._DONE:
                return Claim(ClaimState.DONE)
            if current == self._LEASED:
                return Claim(ClaimState.BUSY, retry_in=self._entries[key][1] - now)
            self._entries[key] = (self._LEASED, now + lease)
            return Claim(ClaimState.ACQUIRED)

    def renew(self, keys: Sequence[str], lease: float) -> list[str]:
        now = time.monotonic()
        lost = []
        with self._lock:
            for key in keys:
                if self._live(key, now) == self._LEASED:
                    self._entries[key] = (self._LEASED, now + lease)
                else:
                    lost.append(key)
        return lost

    def complete(self, key: str, ttl: float) -> None:
        with self._lock:
            self._entries[key] = (self._DONE, time.monotonic() + ttl)

    def release(self, key: str) -> None:
        with self._lock:
            if self._entries.get(key, ("",))[0] == self._LEASED:
                del self._entries[key]

    def close(self) -> None:
        pass
