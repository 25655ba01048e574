"""In-memory stores for one process: the embedded default.

Both are bounded (``[stores] memory_max_statuses`` and ``memory_max_keys``) and
evict the oldest entry in constant time: entries sit in insertion order (an
``OrderedDict``, moved to the end when written again), so the oldest is the first,
and eviction pops it without looking at any other. What a running attempt still
needs (a status in flight, a held delivery lease) is never evicted. Every method
is thread-safe.

A large bound is split in *shards* of about :data:`SHARD_ENTRIES` entries, chosen
by the hash of the id, each with its share of the bound and its own insertion
order; past its share a shard lets its oldest entry go. Ids hash evenly, so that
is among the oldest in the whole store, not exactly the oldest: at 50,000 in
shards of about 515, the entries kept after 200,000 writes were all of the last
45,000 and none written before the last 56,000 (a shard's share covers a span of
writes that varies by a few percent from shard to shard). The reason is memory,
not speed. A dict that always holds as many entries while new keys come and old ones
go re-allocates its table every so often (every 120,000 writes or so at 50,000
entries), and one table of 50,000 entries is megabytes: glibc's malloc soon
serves blocks that big from its heaps instead of mapping them (its mmap threshold
rises to the largest block freed), and the holes the old tables leave, carved up
by small allocations in between, are not given back. A million sends grew the
host by over 120 MiB that way with the stores at their bound. A shard's tables
stay under 128 KiB (about 50 KiB at the default bound), and every shard's
re-allocation asks for one of the same few sizes, so the blocks freed are the
blocks taken next.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeVar

from ..config import Settings
from ..models import DeliveryStatus
from .base import Claim, ClaimState

__all__ = ["SHARD_ENTRIES", "MemoryIdempotencyStore", "MemoryStatusStore"]

_T = TypeVar("_T")

#: About how many entries one shard of a memory store holds (see the module's text).
SHARD_ENTRIES = 512
_MAX_SHARDS = 4096


def _shares(max_entries: int) -> list[int]:
    """``max_entries`` split into shares of about SHARD_ENTRIES: one for a small bound."""
    count = max(1, min(_MAX_SHARDS, max_entries // SHARD_ENTRIES))
    share, extra = divmod(max_entries, count)
    return [share + (index < extra) for index in range(count)]


def _pick(shards: list[_T], key: object) -> _T:
    """The shard that holds ``key`` (by its hash; no hashing with one shard)."""
    return shards[hash(key) % len(shards)] if len(shards) > 1 else shards[0]


class _Statuses:
    """One shard of a status store: final statuses oldest change first, and those in flight."""

    __slots__ = ("active", "final", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.final: OrderedDict[str, DeliveryStatus] = OrderedDict()
        self.active: dict[str, DeliveryStatus] = {}
        self.max_entries = max_entries

    def pop(self, notification_id: str) -> DeliveryStatus | None:
        status = self.active.pop(notification_id, None)
        return self.final.pop(notification_id, None) if status is None else status

    def lookup(self, notification_id: str) -> DeliveryStatus | None:
        status = self.active.get(notification_id)
        return self.final.get(notification_id) if status is None else status

    def __len__(self) -> int:
        return len(self.final) + len(self.active)


class _Keys:
    """One shard of an idempotency store: key -> (value, expires_at), oldest write first."""

    __slots__ = ("entries", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.max_entries = max_entries


class MemoryStatusStore:
    """Statuses in memory, bounded: past the bound, the oldest final status goes.

    Final statuses are kept in the order of their last change, statuses still in
    flight apart (they are never evicted, and are as many as the transport has in
    hand), so a save costs the same whether the store holds ten statuses or its
    bound. A bound of 1,024 or more is split in shards (see the module).

    Args:
        max_entries: How many statuses to keep (``[stores] memory_max_statuses``).
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._shards = [_Statuses(share) for share in _shares(max_entries)]
        # (provider, provider_message_id) -> notification id, for delivery webhooks;
        # in as many shards, by the hash of the pair.
        self._index: list[dict[tuple[str, str], str]] = [{} for _ in self._shards]
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

    def _shard(self, notification_id: str) -> _Statuses:
        return _pick(self._shards, notification_id)

    def _index_for(self, key: tuple[str, str]) -> dict[tuple[str, str], str]:
        return _pick(self._index, key)

    def _save(self, status: DeliveryStatus) -> None:
        """``save`` under the lock."""
        shard = self._shard(status.id)
        previous = shard.pop(status.id)
        if previous is not None:
            self._unindex(previous)
        if status.is_final:
            shard.final[status.id] = status  # popped above: now the newest
        else:
            shard.active[status.id] = status
        if status.provider and status.provider_message_id:
            key = (status.provider, status.provider_message_id)
            self._index_for(key)[key] = status.id
        final = shard.final
        while final and len(final) + len(shard.active) > shard.max_entries:
            self._unindex(final.popitem(last=False)[1])
            self.evicted += 1
        self._changed.notify_all()

    def save_first(self, status: DeliveryStatus) -> bool:
        """Record ``status`` unless its id has a status; True when it had one."""
        with self._changed:
            if self._shard(status.id).lookup(status.id) is not None:
                return True
            self._save(status)
            return False

    def discard_queued(self, status: DeliveryStatus) -> None:
        """Forget ``status.id`` only while its status is still ``status``."""
        with self._changed:
            shard = self._shard(status.id)
            if shard.lookup(status.id) == status:
                self._unindex(shard.pop(status.id))  # type: ignore[arg-type]

    def _lookup(self, notification_id: str) -> DeliveryStatus | None:
        return self._shard(notification_id).lookup(notification_id)

    def _unindex(self, status: DeliveryStatus) -> None:
        if status.provider and status.provider_message_id:
            key = (status.provider, status.provider_message_id)
            index = self._index_for(key)
            if index.get(key) == status.id:
                del index[key]

    def get(self, notification_id: str) -> DeliveryStatus | None:
        with self._changed:
            return self._lookup(notification_id)

    def find_by_provider_message_id(
        self, provider: str, provider_message_id: str
    ) -> DeliveryStatus | None:
        key = (provider, provider_message_id)
        with self._changed:
            notification_id = self._index_for(key).get(key)
            return None if notification_id is None else self._lookup(notification_id)

    def discard(self, notification_id: str) -> None:
        with self._changed:
            status = self._shard(notification_id).pop(notification_id)
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
            return sum(map(len, self._shards))


class MemoryIdempotencyStore:
    """Idempotency keys with expiry times in insertion order, bounded, under one lock.

    Past the bound the entry written longest ago goes (a caller's key, a done
    marker, a lapsed lease); a lease still running is moved to the back instead
    (there are only as many as attempts in flight). Expired entries at the front
    are dropped as they come up, a couple per call. Each call costs the same
    whatever the store holds. A bound of 1,024 or more is split in shards (see the
    module), each with its own order and share of the bound.

    A lease whose attempt handed its message to a provider (``mark_handed``) says
    so in its entry; once it runs out it stays (not dropped as expired, only
    evicted past the bound, after the entries written since) until the next
    claim reports it as
    :attr:`Claim.handed`, and that claim's lease keeps it until ``complete`` or
    ``release``.

    Args:
        max_entries: How many keys to keep (``[stores] memory_max_keys``).
    """

    _LEASED = "\0leased"
    _DONE = "\0done"
    # A lease with a hand-over record: this prefix, then the provider's name.
    _HANDED = "\0handed:"

    def __init__(self, max_entries: int = 50_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        # key -> (value, expires_at on the monotonic clock); oldest write first
        self._shards = [_Keys(share) for share in _shares(max_entries)]
        self._lock = threading.Lock()
        self.max_entries = max_entries
        #: Entries evicted so far to keep the bound (expired ones not counted).
        self.evicted = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryIdempotencyStore:
        return cls(settings.stores.memory_max_keys)

    def _shard(self, key: str) -> _Keys:
        return _pick(self._shards, key)

    def _live(self, key: str, now: float) -> str | None:
        entries = self._shard(key).entries
        entry = entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: str, expires_at: float, now: float) -> None:
        """Write ``key`` as the newest entry, then keep the bound (under the lock)."""
        shard = self._shard(key)
        entries = shard.entries
        entries[key] = (value, expires_at)
        entries.move_to_end(key)
        # Expired entries at the front go first: two at most per write, so the
        # cost stays constant and the store shrinks when the traffic does.
        for _ in range(2):
            oldest = next(iter(entries))
            first = entries[oldest]
            if first[1] > now or oldest == key:
                break
            if first[0].startswith(self._HANDED):
                # A lapsed lease that handed its message over waits for the next
                # claim, behind the others (only the bound evicts it).
                entries.move_to_end(oldest)
                continue
            del entries[oldest]
        moved = 0
        while len(entries) > shard.max_entries and moved < len(entries):
            oldest, entry = entries.popitem(last=False)
            if self._leased(entry[0]) and entry[1] > now:
                entries[oldest] = entry  # an attempt holds it: to the back
                moved += 1
                continue
            self.evicted += 1

    @classmethod
    def _leased(cls, value: str) -> bool:
        return value == cls._LEASED or value.startswith(cls._HANDED)

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
            self._shard(key).entries.pop(key, None)

    def claim(self, key: str, lease: float) -> Claim:
        now = time.monotonic()
        with self._lock:
            entry = self._shard(key).entries.get(key)
            if entry is not None and entry[0].startswith(self._HANDED):
                if entry[1] > now:
                    return Claim(ClaimState.BUSY, retry_in=entry[1] - now)
                # The lease ran out after its attempt handed the message over: the
                # new lease keeps the record until this attempt settles.
                self._put(key, entry[0], now + lease, now)
                return Claim(ClaimState.ACQUIRED, handed=entry[0][len(self._HANDED) :])
            current = self._live(key, now)
            if current == self._DONE:
                return Claim(ClaimState.DONE)
            if current == self._LEASED:
                return Claim(ClaimState.BUSY, retry_in=self._shard(key).entries[key][1] - now)
            self._put(key, self._LEASED, now + lease, now)
            return Claim(ClaimState.ACQUIRED)

    def renew(self, keys: Sequence[str], lease: float) -> list[str]:
        now = time.monotonic()
        lost = []
        with self._lock:
            for key in keys:
                current = self._live(key, now)
                if current is not None and self._leased(current):
                    self._put(key, current, now + lease, now)
                else:
                    lost.append(key)
        return lost

    def mark_handed(self, key: str, provider: str, ttl: float) -> None:
        """Record in the lease on ``key`` that its attempt hands the message to
        ``provider`` (``ttl`` is not needed: the record lives with the lease)."""
        with self._lock:
            entries = self._shard(key).entries
            entry = entries.get(key)
            if entry is not None and self._leased(entry[0]):
                entries[key] = (self._HANDED + provider, entry[1])

    def clear_handed(self, key: str) -> None:
        with self._lock:
            entries = self._shard(key).entries
            entry = entries.get(key)
            if entry is not None and entry[0].startswith(self._HANDED):
                entries[key] = (self._LEASED, entry[1])

    def complete(self, key: str, ttl: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._put(key, self._DONE, now + ttl, now)

    def release(self, key: str) -> None:
        with self._lock:
            entries = self._shard(key).entries
            if self._leased(entries.get(key, ("",))[0]):
                del entries[key]

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        with self._lock:
            return sum(len(shard.entries) for shard in self._shards)
