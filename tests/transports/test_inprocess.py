"""The in-process transport: fast submit, workers, retries, bounded queue, draining."""

from __future__ import annotations

import threading
import time

import pytest

from tenant_notify import DeliveryState
from tenant_notify.errors import EnqueueError, QueueFullError, StoreUnavailableError
from tenant_notify.models import DeliveryResult
from tenant_notify.testing import ScriptedProvider, make_notifier


class SlowProvider(ScriptedProvider):
    """Delivers after waiting for a gate (or a delay)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[str] = set()

    def _run(self, message) -> DeliveryResult:
        self.gate.wait(10)
        time.sleep(self.delay)
        self.threads.add(threading.current_thread().name)
        return super()._run(message)


def send(notify, n: int = 1, tenant: str = "acme"):
    return [
        notify.send_email(to_email=f"u{i}@example.com", subject=f"s{i}", body="b", tenant_id=tenant)
        for i in range(n)
    ]


def test_submit_returns_before_a_slow_provider_finishes(tenants):
    provider = SlowProvider()
    provider.gate.clear()
    with make_notifier(tenants=tenants, provider=provider, transport="inprocess") as notify:
        [receipt] = send(notify)
        # The provider is blocked, yet the send has returned with a queued receipt.
        assert notify.status(receipt.id).state in {DeliveryState.QUEUED, DeliveryState.SENDING}
        assert len(notify.outbox) == 0
        provider.gate.set()
        assert receipt.wait(5).state is DeliveryState.SENT


def test_workers_deliver_in_parallel(tenants):
    provider = SlowProvider(delay=0.05)
    with make_notifier(
        tenants=tenants, provider=provider, transport={"backend": "inprocess", "workers": 4}
    ) as notify:
        receipts = send(notify, 16)
        for receipt in receipts:
            assert receipt.wait(5).state is DeliveryState.SENT
    assert len(provider.threads) == 4
    assert len(notify.outbox) == 16


def test_transient_failures_retry_with_backoff(tenants):
    provider = ScriptedProvider(["transient", "transient"])
    with make_notifier(
        tenants=tenants,
        provider=provider,
        transport="inprocess",
        retry={"initial_delay": 0.05, "jitter": 0},
    ) as notify:
        start = time.monotonic()
        [receipt] = send(notify)
        status = receipt.wait(5)
        elapsed = time.monotonic() - start
    assert status.state is DeliveryState.SENT and status.attempts == 3
    # 0.05 after the first failure, 0.10 after the second
    assert elapsed >= 0.15


def test_retry_after_from_the_provider_is_honoured(tenants):
    provider = ScriptedProvider(["transient"], retry_after=0.3)
    with make_notifier(
        tenants=tenants, provider=provider, transport="inprocess", retry={"initial_delay": 0.01}
    ) as notify:
        [receipt] = send(notify)
        time.sleep(0.1)
        status = notify.status(receipt.id)
        assert status.state is DeliveryState.RETRYING
        assert status.next_attempt_at is not None
        assert status.error_type == "TransientDeliveryError"
        assert receipt.wait(5).state is DeliveryState.SENT


def test_full_queue_blocks_then_raises(tenants):
    provider = SlowProvider()
    provider.gate.clear()
    notify = make_notifier(
        tenants=tenants,
        provider=provider,
        transport={"backend": "inprocess", "workers": 1, "queue_size": 2, "enqueue_timeout": 0.2},
    )
    try:
        send(notify, 3)  # one in the worker's hands, two queued
        start = time.monotonic()
        with pytest.raises(QueueFullError, match="queue_size"):
            send(notify, 1)
        assert time.monotonic() - start >= 0.2
        # nothing was recorded for the refused send
        assert len(notify.status_store) == 3
    finally:
        provider.gate.set()
        notify.close()
    assert len(notify.outbox) == 3


def test_close_drains_everything_queued(tenants):
    provider = SlowProvider(delay=0.01)
    notify = make_notifier(
        tenants=tenants, provider=provider, transport={"backend": "inprocess", "workers": 2}
    )
    receipts = send(notify, 50)
    notify.close()
    assert len(notify.outbox) == 50
    assert all(notify.status(r.id).state is DeliveryState.SENT for r in receipts)
    with pytest.raises(EnqueueError):
        send(notify)


def test_close_records_what_it_could_not_deliver(tenants):
    provider = ScriptedProvider(then="transient")
    notify = make_notifier(
        tenants=tenants,
        provider=provider,
        transport="inprocess",
        retry={"initial_delay": 60, "max_attempts": 5},
    )
    [receipt] = send(notify)
    deadline = time.monotonic() + 5
    while notify.status(receipt.id).state is not DeliveryState.RETRYING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    notify.close(timeout=0.2)
    status = notify.status(receipt.id)
    assert status.state is DeliveryState.FAILED
    assert "closed" in status.error


def test_threads_start_lazily_and_after_fork(tenants):
    notify = make_notifier(tenants=tenants, transport="inprocess")
    assert notify.transport._threads == []
    send(notify)
    assert len(notify.transport._threads) == notify.transport.workers + 1
    notify.close()


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailableError("redis: connection reset"),  # a shared store out of reach
        RuntimeError("a bug"),  # anything else deliver() lets out
    ],
    ids=["store-unavailable", "bug"],
)
def test_an_attempt_that_raises_is_delivered_later_not_dropped(tenants, error):
    """deliver() raises only before the provider call; the worker used to log it and
    drop the notification, which then stayed ``queued`` for ever, sent by nobody."""
    with make_notifier(tenants=tenants, transport="inprocess") as notify:
        store = notify.idempotency_store
        real_claim = store.claim
        raised = []

        def claim(key: str, lease: float):
            if not raised:
                raised.append(key)
                raise error
            return real_claim(key, lease)

        store.claim = claim  # type: ignore[method-assign]
        [receipt] = send(notify)
        status = receipt.wait(10)
        assert raised == [f"delivery:{receipt.id}"]
        assert status.state is DeliveryState.SENT and status.attempts == 1
        assert len(notify.outbox) == 1
        assert notify.transport.pending == 0
    assert len(notify.outbox) == 1


def test_an_attempt_that_ends_after_close_gave_up_is_recorded_not_left_waiting(tenants):
    """close() settles what is queued or waiting when its time is up; an attempt still
    at the provider then asked for a retry after it, into a heap nobody serves: the
    notification stayed ``retrying`` for ever."""

    class Stuck(ScriptedProvider):
        def __init__(self) -> None:
            super().__init__(then="transient")
            self.inside = threading.Event()
            self.gate = threading.Event()

        def _run(self, message) -> DeliveryResult:
            self.inside.set()
            self.gate.wait(10)
            return super()._run(message)

    provider = Stuck()
    notify = make_notifier(tenants=tenants, provider=provider, transport="inprocess")
    [receipt] = send(notify)
    assert provider.inside.wait(5)
    notify.close(timeout=0.1)
    provider.gate.set()
    status = receipt.wait(5)
    assert status.state is DeliveryState.FAILED
    assert "closed" in (status.error or "")
    # The worker thread counts the attempt done just after recording its status.
    deadline = time.monotonic() + 5
    while notify.transport.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert notify.transport.pending == 0


def test_a_send_that_races_close_is_settled_not_left_queued(tenants):
    """A send that passed the closed check just before close() ran, and put its
    notification on the queue just after close() had drained it, left it ``queued``
    for ever in a queue no worker reads any more."""
    notify = make_notifier(tenants=tenants, transport="inprocess")
    send(notify)  # the workers are running
    transport = notify.transport
    queue = transport._queue
    real_put = queue.put

    def put(*args, **kwargs):
        transport.close(timeout=1)  # another thread's close(), at the worst moment
        return real_put(*args, **kwargs)

    queue.put = put  # type: ignore[method-assign]
    receipt = notify.send_email(
        to_email="late@example.com", subject="s", body="b", tenant_id="acme"
    )
    status = notify.status(receipt.id)
    assert status is not None and status.state is DeliveryState.FAILED
    assert "closed" in (status.error or "")
    assert transport.pending == 0
    notify.close()
