"""The fair queue in front of the workers: tenants served in weighted turns, urgent first."""

from __future__ import annotations

import queue
import threading

import pytest

from tenant_notify._fair import FairQueue


def take(fair: FairQueue[str], n: int) -> list[str]:
    out = []
    for _ in range(n):
        item = fair.get(timeout=1)
        assert item is not None
        out.append(item)
    return out


def test_a_tenant_queued_later_gets_every_other_turn():
    fair: FairQueue[str] = FairQueue()
    for i in range(100):
        fair.put("a", f"a{i}")
    for i in range(5):
        fair.put("b", f"b{i}")
    order = take(fair, 105)
    # B's five go out in the first eleven, not after A's hundred.
    assert max(order.index(f"b{i}") for i in range(5)) < 11
    # Each tenant's own items keep their order.
    assert [x for x in order if x.startswith("a")] == [f"a{i}" for i in range(100)]


def test_weights_set_the_shares():
    weights = {"big": 3.0, "small": 1.0}
    fair: FairQueue[str] = FairQueue(weight=weights.__getitem__)
    for _i in range(400):
        fair.put("big", "big")
        fair.put("small", "small")
    first = take(fair, 400)
    assert first.count("big") == 300
    assert first.count("small") == 100


def test_urgent_goes_ahead_of_its_own_tenants_bulk_only():
    fair: FairQueue[str] = FairQueue()
    for i in range(10):
        fair.put("a", f"bulk{i}")
    fair.put("b", "b0")
    fair.put("a", "reset", urgent=True)
    order = take(fair, 12)
    assert order[0] == "reset"  # ahead of A's bulk ...
    assert order.index("b0") == 1  # ... not of B's turn


def test_an_idle_tenant_banks_no_credit():
    fair: FairQueue[str] = FairQueue()
    for _ in range(50):
        fair.put("a", "a")
    take(fair, 50)  # A alone: everything
    for _ in range(50):
        fair.put("a", "a")
        fair.put("b", "b")
    # B was idle while A was served; it does not now get 50 turns in a row.
    assert take(fair, 10).count("b") == 5


def test_bound_wake_and_drain():
    fair: FairQueue[str] = FairQueue(maxsize=2)
    fair.put("a", "1")
    fair.put("a", "2")
    with pytest.raises(queue.Full):
        fair.put("a", "3", timeout=0.01)
    fair.put("a", "3", force=True)  # a retry coming back is never refused
    assert fair.backlog() == {"a": 3}
    assert sorted(fair.drain()) == ["1", "2", "3"]
    assert fair.unfinished_tasks == 0
    with pytest.raises(queue.Empty):
        fair.get(timeout=0.01)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(fair.get()))
    waiter.start()
    fair.wake()
    waiter.join(5)
    assert got == [None]


def test_an_unknown_tenant_still_gets_a_turn():
    def weight(tenant: str) -> float:
        raise KeyError(tenant)

    fair: FairQueue[str] = FairQueue(weight=weight)
    fair.put("ghost", "x")
    assert fair.get(timeout=1) == "x"
