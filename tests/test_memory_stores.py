"""The in-memory stores: bounded, oldest out first, constant cost, never an attempt's entry."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any

import pytest

from tenant_notify import Notifier, load_settings
from tenant_notify.errors import ConfigurationError
from tenant_notify.models import Channel, DeliveryState, DeliveryStatus
from tenant_notify.stores import ClaimState, MemoryIdempotencyStore, MemoryStatusStore


class Watched(OrderedDict):  # type: ignore[type-arg]
    """An OrderedDict that counts the entries anything iterates over (a scan)."""

    visited = 0

    def __iter__(self) -> Any:
        for key in super().__iter__():
            type(self).visited += 1
            yield key

    def items(self) -> Any:
        return [(key, self[key]) for key in self]

    def keys(self) -> Any:
        return list(self)

    def values(self) -> Any:
        return [self[key] for key in self]


@pytest.fixture(autouse=True)
def _reset_count() -> None:
    Watched.visited = 0


def status(n: int, state: DeliveryState = DeliveryState.SENT) -> DeliveryStatus:
    return DeliveryStatus(
        id=f"n{n}", tenant_id="acme", kind="welcome", channel=Channel.EMAIL, state=state
    )


def deliver(store: MemoryStatusStore, n: int) -> None:
    """queued, sending, sent with a provider id: what one delivery saves."""
    first = status(n, DeliveryState.QUEUED)
    store.save(first)
    store.save(first.evolve(state=DeliveryState.SENDING, attempts=1, provider="smtp"))
    store.save(
        first.evolve(
            state=DeliveryState.SENT, attempts=1, provider="smtp", provider_message_id=f"m{n}"
        )
    )


def test_status_store_keeps_its_bound_and_the_newest_statuses_without_scanning():
    store = MemoryStatusStore(max_entries=1000)
    (shard,) = store._shards  # a bound this small is one shard: exactly the oldest goes
    shard.final = Watched()
    for n in range(5000):
        deliver(store, n)
        assert len(store) <= 1000
    assert len(store) == 1000 and store.evicted == 4000
    assert store.get("n3999") is None and store.get("n4000") is not None
    assert store.get("n4999").state is DeliveryState.SENT  # type: ignore[union-attr]
    # The provider-id index went with the evicted statuses.
    assert store.find_by_provider_message_id("smtp", "m10") is None
    assert store.find_by_provider_message_id("smtp", "m4500").id == "n4500"  # type: ignore[union-attr]
    assert sum(map(len, store._index)) == 1000
    # 15,000 saves, 4,000 evictions: no save looked at any other entry.
    assert Watched.visited == 0


def test_status_store_never_evicts_a_status_in_flight():
    store = MemoryStatusStore(max_entries=10)
    for n in range(5):
        store.save(status(n, DeliveryState.SENDING))
    for n in range(5, 100):
        deliver(store, n)
    assert all(store.get(f"n{n}").state is DeliveryState.SENDING for n in range(5))  # type: ignore[union-attr]
    assert len(store) == 10
    # Once final, they are the newest, so the last to go.
    store.save(status(0))
    for n in range(100, 104):
        deliver(store, n)
    assert store.get("n0").state is DeliveryState.SENT  # type: ignore[union-attr]
    assert store.get("n98") is None  # final before n0 was: gone first
    assert store.get("n1").state is DeliveryState.SENDING  # type: ignore[union-attr]


def test_a_final_status_written_again_is_the_newest():
    store = MemoryStatusStore(max_entries=3)
    for n in range(3):
        store.save(status(n))
    store.save(status(0, DeliveryState.FAILED))  # a delivery event after the send
    store.save(status(3))
    assert store.get("n1") is None and store.get("n0").state is DeliveryState.FAILED  # type: ignore[union-attr]


def test_idempotency_store_keeps_its_bound_without_scanning():
    store = MemoryIdempotencyStore(max_entries=1000)
    (shard,) = store._shards
    shard.entries = Watched()
    for n in range(5000):
        assert store.reserve(f"send:acme:order:{n}", f"n{n}", 600) is None
        assert store.claim(f"delivery:n{n}", 60).state is ClaimState.ACQUIRED
        store.complete(f"delivery:n{n}", 600)
        assert len(store) <= 1000
    assert len(store) == 1000 and store.evicted == 9000
    # The newest keys are remembered, the oldest were let go.
    assert store.reserve("send:acme:order:4999", "other", 600) == "n4999"
    assert store.claim("delivery:n4999", 60).state is ClaimState.DONE
    assert store.reserve("send:acme:order:0", "again", 600) is None
    # 15,000 writes; each looks at the oldest entry once (is it expired?), no more.
    assert Watched.visited <= 15_000 + 10


def test_idempotency_store_never_evicts_a_held_lease():
    store = MemoryIdempotencyStore(max_entries=10)
    for n in range(3):
        assert store.claim(f"delivery:held{n}", 60).state is ClaimState.ACQUIRED
    for n in range(100):
        store.reserve(f"send:{n}", f"n{n}", 600)
    assert len(store) == 10
    for n in range(3):
        assert store.claim(f"delivery:held{n}", 60).state is ClaimState.BUSY


def test_expired_keys_leave_the_front_as_writes_come(monkeypatch):
    import tenant_notify.stores.memory as memory

    now = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: now[0])
    store = MemoryIdempotencyStore(max_entries=1000)
    for n in range(100):
        store.reserve(f"old:{n}", f"n{n}", 10)
    now[0] += 11
    for n in range(60):
        store.reserve(f"new:{n}", f"m{n}", 10)
    assert len(store) == 60  # two expired ones went with each write
    assert store.reserve("old:0", "again", 10) is None  # expired: free again


def test_stores_are_thread_safe_at_their_bound():
    statuses = MemoryStatusStore(max_entries=200)
    keys = MemoryIdempotencyStore(max_entries=200)

    def work(base: int) -> None:
        for n in range(base, base + 1000):
            deliver(statuses, n)
            keys.reserve(f"k{n}", f"n{n}", 600)
            statuses.get(f"n{n - 50}")

    threads = [threading.Thread(target=work, args=(i * 10_000,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == 200 and len(keys) == 200
    assert sum(map(len, statuses._index)) == 200


def test_the_notifier_builds_its_memory_stores_from_the_settings():
    with Notifier.from_settings(
        {
            "transport": "eager",
            "stores": {"memory_max_statuses": 3, "memory_max_keys": 4},
            "tenants": {"acme": {"name": "Acme", "email_from": "a@acme.test"}},
        }
    ) as notify:
        assert isinstance(notify.status_store, MemoryStatusStore)
        assert notify.status_store.max_entries == 3
        assert isinstance(notify.idempotency_store, MemoryIdempotencyStore)
        assert notify.idempotency_store.max_entries == 4
        ids = [
            notify.send_email(
                to_email=f"u{n}@example.com", subject="s", body="b", tenant_id="acme"
            ).id
            for n in range(5)
        ]
        assert len(notify.status_store) == 3
        assert notify.status_store.get(ids[0]) is None
        assert notify.status_store.get(ids[-1]).state is DeliveryState.SENT  # type: ignore[union-attr]


def test_keys_cannot_outlive_the_retention():
    with pytest.raises(ConfigurationError, match="retention"):
        load_settings({"stores": {"retention": 3600}, "idempotency": {"ttl": 7200}})
    settings = load_settings({"stores": {"retention": 3600}, "idempotency": {"ttl": 600}})
    assert settings.status_retention == 3600
    # The deprecated [redis] status_ttl still sets the statuses' retention.
    assert load_settings({"redis": {"status_ttl": 60}}).status_retention == 60


def test_a_large_bound_is_split_in_shards_so_no_table_is_large():
    """A dict of 50,000 entries is megabytes, re-allocated every ~120,000 writes as
    keys come and go; glibc serves blocks that size from its heap once it has freed
    one, and the holes never go back (a million in-process sends grew the host by
    126 MiB). Split, no table any store keeps at the default bound passes 128 KiB,
    and what goes is still (about) the oldest."""
    statuses = MemoryStatusStore(max_entries=50_000)
    keys = MemoryIdempotencyStore(max_entries=50_000)
    for n in range(100_000):
        deliver(statuses, n)
        assert keys.claim(f"delivery:n{n}", 60).state is ClaimState.ACQUIRED
        keys.complete(f"delivery:n{n}", 600)
    assert len(statuses) == 50_000 and statuses.evicted == 50_000
    assert len(keys) == 50_000 and keys.evicted == 50_000
    tables: list[object] = [*statuses._index]
    tables += [table for shard in statuses._shards for table in (shard.final, shard.active)]
    tables += [shard.entries for shard in keys._shards]
    assert max(map(sys.getsizeof, tables)) < 128 * 1024
    # The newest 40,000 are all kept, the oldest 40,000 all gone, in both stores.
    assert all(statuses.get(f"n{n}") is not None for n in range(60_000, 100_000))
    assert all(statuses.get(f"n{n}") is None for n in range(40_000))
    assert statuses.find_by_provider_message_id("smtp", "m99999").id == "n99999"  # type: ignore[union-attr]
    assert statuses.find_by_provider_message_id("smtp", "m10") is None
    assert sum(map(len, statuses._index)) == 50_000
    assert all(
        keys.claim(f"delivery:n{n}", 60).state is ClaimState.DONE for n in range(60_000, 100_000)
    )
    assert all(keys.claim(f"delivery:n{n}", 60).state is ClaimState.ACQUIRED for n in range(40_000))


def test_a_hand_over_outlives_its_lease_until_the_next_claim_settles(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("tenant_notify.stores.memory.time.monotonic", lambda: clock[0])
    store = MemoryIdempotencyStore(max_entries=4)
    assert store.claim("delivery:a", 1.0).state is ClaimState.ACQUIRED
    store.mark_handed("delivery:a", "smtp", 60)
    assert store.claim("delivery:a", 1.0).state is ClaimState.BUSY  # still held
    clock[0] += 2  # the holder stopped: its lease ran out
    for n in range(3):  # writes that drop expired entries at the front leave it be
        store.reserve(f"k{n}", f"n{n}", 0.5)
    clock[0] += 1
    store.reserve("k3", "n3", 10)
    again = store.claim("delivery:a", 1.0)
    assert again.state is ClaimState.ACQUIRED and again.handed == "smtp"
    assert store.renew(["delivery:a"], 1.0) == []  # the new lease keeps it, renewed
    store.release("delivery:a")  # retried: the record goes with the lease
    assert store.claim("delivery:a", 1.0).handed is None
    store.mark_handed("delivery:a", "smtp", 60)
    store.complete("delivery:a", 60)
    assert store.claim("delivery:a", 1.0).state is ClaimState.DONE
    # Taken back (a certain refusal): a later claim is not told.
    assert store.claim("delivery:b", 1.0).state is ClaimState.ACQUIRED
    store.mark_handed("delivery:b", "smtp", 60)
    store.clear_handed("delivery:b")
    clock[0] += 2
    assert store.claim("delivery:b", 1.0).handed is None
    # Never more than the bound: a lapsed hand-over is evicted like any lapsed lease.
    store.mark_handed("delivery:b", "smtp", 60)
    clock[0] += 2
    for n in range(8):
        store.reserve(f"x{n}", f"n{n}", 60)
    assert len(store) <= 4
