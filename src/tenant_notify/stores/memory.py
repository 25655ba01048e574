"""In-memory stores for one process: the embedded default.

Both are bounded (``[stores] memory_max_statuses`` and ``memory_max_keys``) and
evict the oldest entry in constant time: entries sit in insertion order (an
``OrderedDict``, moved to the end when written again), so the oldest is the first,
and eviction pops it without looking at any other. What a running attempt still
needs (a status in flight, a held delivery lease) is never evicted. Every method
is thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from ..config import Settings
from ..models import DeliveryStatus
from .base import Claim, ClaimState

__all__ = ["MemoryIdempotencyStore", "MemoryStatusStore"]


class MemoryStatusStore:
    """Statuses in memory, bounded: past the bound, the oldest final status goes.

    Final statuses are kept in the order of their last change, statuses still in
    flight apart (they are never evicted, and are as many as the transport has in
    hand), so a save costs the same whether the store holds ten statuses or its
    bound.

    Args:
        max_entries: How many statuses to keep (``[stores] memory_max_statuses``).
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._final: OrderedDict[str, DeliveryStatus] = OrderedDict()  # oldest change first
        self._active: dict[str, DeliveryStatus] = {}  # in flight
        # (provider, provider_message_id) -> notification id, for delivery webhooks.
        self._by_provider_id: dict[tuple[str, str], str] = {}
        self._changed = threading.Condition(threading.Lock())
        self.max_entries = max_entries
        #: Statuses evicted so far to keep the bound.
        self.evicted = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryStatusStore:
        return cls(settings.stores.memory_max_statuses)

    def save(self, status: DeliveryStatus) -> None:
        with self._changed:
            self._save(status)

    def _save(self, status: DeliveryStatus) -> None:
        """``save`` under the lock."""
        previous = self._pop(status.id)
        if previous is not None:
            self._unindex(previous)
        if status.is_final:
            self._final[status.id] = status  # popped above: now the newest
        else:
            self._active[status.id] = status
        if status.provider and status.provider_message_id:
            self._by_provider_id[(status.provider, status.provider_message_id)] = status.id
        while self._final and len(self._final) + len(self._active) > self.max_entries:
            self._unindex(self._final.popitem(last=False)[1])
            self.evicted += 1
        self._changed.notify_all()

    def save_first(self, status: DeliveryStatus) -> bool:
        """Record ``status`` unless its id has a status; True when it had one."""
        with self._changed:
            if self._lookup(status.id) is not None:
                return True
            self._save(status)
            return False

    def discard_queued(self, status: DeliveryStatus) -> None:
        """Forget ``status.id`` only while its status is still ``status``."""
        with self._changed:
            if self._lookup(status.id) == status:
                self._unindex(self._pop(status.id))  # type: ignore[arg-type]

    def _pop(self, notification_id: str) -> DeliveryStatus | None:
        status = self._active.pop(notification_id, None)
        return self._final.pop(notification_id, None) if status is None else status

    def _lookup(self, notification_id: str) -> DeliveryStatus | None:
        status = self._active.get(notification_id)
        return self._final.get(notification_id) if status is None else status

    def _unindex(self, status: DeliveryStatus) -> None:
        if status.provider and status.provider_message_id:
            key = (status.provider, status.provider_message_id)
            if self._by_provider_id.get(key) == status.id:
                del self._by_provider_id[key]

    def get(self, notification_id: str) -> DeliveryStatus | None:
        with self._changed:
            return self._lookup(notification_id)

    def find_by_provider_message_id(
        self, provider: str, provider_message_id: str
    ) -> DeliveryStatus | None:
        with self._changed:
            notification_id = self._by_provider_id.get((provider, provider_message_id))
            return None if notification_id is None else self._lookup(notification_id)

    def discard(self, notification_id: str) -> None:
        with self._changed:
            status = self._pop(notification_id)
            if status is not None:
                self._unindex(status)

    def wait(self, notification_id: str, timeout: float | None) -> DeliveryStatus | None:
        def settled() -> bool:
            status = self._lookup(notification_id)
            return status is None or status.is_final

        with self._changed:
            self._changed.wait_for(settled, timeout)
            return self._lookup(notification_id)

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        with self._changed:
            return len(self._final) + len(self._active)


class MemoryIdempotencyStore:
    """Idempotency keys with expiry times in insertion order, bounded, under one lock.

    Past the bound the entry written longest ago goes (a caller's key, a done
    marker, a lapsed lease); a lease still running is moved to the back instead
    (there are only as many as attempts in flight). Expired entries at the front
    are dropped as they come up, a couple per call. Each call costs the same
    whatever the store holds.

    Args:
        max_entries: How many keys to keep (``[stores] memory_max_keys``).
    """

    _LEASED = "\0leased"
    _DONE = "\0done"

    def __init__(self, max_entries: int = 50_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        # key -> (value, expires_at on the monotonic clock); oldest write first
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        #: Entries evicted so far to keep the bound (expired ones not counted).
        self.evicted = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryIdempotencyStore:
        return cls(settings.stores.memory_max_keys)

    def _live(self, key: str, now: float) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: str, expires_at: float, now: float) -> None:
        """Write ``key`` as the newest entry, then keep the bound (under the lock)."""
        entries = self._entries
        entries[key] = (value, expires_at)
        entries.move_to_end(key)
        # Expired entries at the front go first: two at most per write, so the
        # cost stays constant and the store shrinks when the traffic does.
        for _ in range(2):
            oldest = next(iter(entries))
            if entries[oldest][1] > now or oldest == key:
                break
            del entries[oldest]
        moved = 0
        while len(entries) > self.max_entries and moved < len(entries):
            oldest, entry = entries.popitem(last=False)
            if entry[0] == self._LEASED and entry[1] > now:
                entries[oldest] = entry  # an attempt holds it: to the back
                moved += 1
                continue
            self.evicted += 1

    def reserve(self, key: str, notification_id: str, ttl: float) -> str | None:
        now = time.monotonic()
        with self._lock:
            existing = self._live(key, now)
            if existing is not None:
                return existing
            self._put(key, notification_id, now + ttl, now)
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
            self._put(key, self._LEASED, now + lease, now)
            return Claim(ClaimState.ACQUIRED)

    def renew(self, keys: Sequence[str], lease: float) -> list[str]:
        now = time.monotonic()
        lost = []
        with self._lock:
            for key in keys:
                if self._live(key, now) == self._LEASED:
                    self._put(key, self._LEASED, now + lease, now)
                else:
                    lost.append(key)
        return lost

    def complete(self, key: str, ttl: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._put(key, self._DONE, now + ttl, now)

    def release(self, key: str) -> None:
        with self._lock:
            if self._entries.get(key, ("",))[0] == self._LEASED:
                del self._entries[key]

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
