"""The celery transport end to end: a real worker, RabbitMQ, Redis and an SMTP server.

What the SMTP server received is the evidence: every notification arrives once,
with its own tenant's sender, also when the worker is killed mid-run; statuses
written by the worker are read here, in another process, from Redis.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import DeliveryState, Notifier, load_settings
from tenant_notify.errors import EnqueueError
from tenant_notify.stores.redis import RedisStatusStore, connect
from tenant_notify.transports.celery import replay_dead_letters
from tenant_notify.transports.celery.message import Routes
from tenant_notify.transports.celery.publisher import Publisher
from tests.integration.conftest import TENANTS, TcpProxy, Worker, settings_table
from tests.smtp_server import LoopbackSMTPServer, ReceivedMessage

pytestmark = pytest.mark.integration


@pytest.fixture
def notify(settings: dict[str, Any], worker: Worker) -> Iterator[Notifier]:
    with Notifier.from_settings(settings) as notifier:
        yield notifier


@pytest.fixture
def server(smtp: LoopbackSMTPServer) -> Iterator[LoopbackSMTPServer]:
    smtp.clear()
    yield smtp
    smtp.clear()


def ids_of(messages: list[ReceivedMessage]) -> collections.Counter[str]:
    return collections.Counter(str(m.message["X-Tenant-Notify-Id"]) for m in messages)


def send_many(notify: Notifier, count: int, tag: str) -> dict[str, str]:
    """Send ``count`` order confirmations across the tenants; return id -> tenant."""
    tenants = sorted(TENANTS)
    sent = {}
    for i in range(count):
        tenant = tenants[i % len(tenants)]
        receipt = notify.send_order_confirmation(
            order_id=f"{tag}-{i}",
            customer_email=f"customer{i}@example.com",
            order_total="19.99",
            currency="EUR",
            tenant_id=tenant,
        )
        sent[receipt.id] = tenant
    return sent


def wait_settled(store: RedisStatusStore, ids: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for notification_id in ids:
        store.wait(notification_id, max(0.1, deadline - time.monotonic()))


def test_hundreds_across_tenants_each_with_its_own_sender(notify, server, settings, worker):
    sent = send_many(notify, 300, "many")
    assert notify.transport.flush(10)
    messages = server.wait_for(300, timeout=90)

    counts = ids_of(messages)
    assert set(counts) == set(sent) and set(counts.values()) == {1}
    for message in messages:
        tenant = sent[str(message.message["X-Tenant-Notify-Id"])]
        name, address = TENANTS[tenant]
        assert message.message["From"].addresses[0].addr_spec == address
        assert message.message["From"].addresses[0].display_name == name
        assert message.mail_from == address

    # Statuses as another process sees them: a fresh Redis store, not the notifier's.
    loaded = load_settings(settings)
    store = RedisStatusStore.from_settings(loaded, connect(loaded))
    try:
        wait_settled(store, list(sent))
        by_message_id = {str(m.message["Message-ID"]).strip("<>"): m for m in messages}
        for notification_id, tenant in sent.items():
            status = store.get(notification_id)
            assert status is not None
            assert (status.state, status.tenant_id, status.attempts) == (
                DeliveryState.SENT,
                tenant,
                1,
            )
            assert status.provider == "smtp"
            received = by_message_id[status.provider_message_id or ""]
            assert received.message["X-Tenant-Notify-Id"] == notification_id
    finally:
        store.close()


def test_receipt_wait_and_idempotency_through_the_worker(notify, server):
    first = notify.send_welcome_email(
        user_email="new.user@example.com", user_name="New User", tenant_id="globex"
    )
    again = notify.send_welcome_email(
        user_email="New.User@example.com", user_name="New User", tenant_id="globex"
    )
    assert again.duplicate and again.id == first.id
    status = first.wait(30)
    assert status.state is DeliveryState.SENT
    time.sleep(0.5)
    assert list(ids_of(server.messages).values()) == [1]


def test_worker_killed_mid_run_loses_nothing_and_doubles_nothing(notify, server, worker):
    # Everything is queued before the worker runs, so it is surely mid-run when killed.
    worker.stop()
    sent = send_many(notify, 400, "crash")
    assert notify.transport.flush(10)
    worker.start()
    server.wait_for(80, timeout=60)
    worker.kill()  # SIGKILL, with messages delivered, reserved and unacknowledged
    killed_at = len(server.messages)
    assert killed_at < len(sent), "the worker finished before it could be killed"
    worker.start()

    server.wait_for(len(sent), timeout=120)
    # Redelivered messages that had been sent are skipped; give stragglers a moment.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        time.sleep(0.2)
    counts = ids_of(server.messages)
    assert set(counts) == set(sent)
    doubled = {k: v for k, v in counts.items() if v != 1}
    assert not doubled
    for notification_id in list(sent)[:: len(sent) // 40]:
        assert notify.wait(notification_id, 10).state is DeliveryState.SENT
    assert "notification_already_delivered" in worker.log() or killed_at == len(sent)


def test_transient_failure_is_retried_by_the_worker(notify, server):
    server.fail_next("MAIL", "451 4.3.0 try again later")
    receipt = notify.send_email(
        to_email="retry@example.com", subject="Retry", body="b", tenant_id="acme"
    )
    status = receipt.wait(30)
    assert status.state is DeliveryState.SENT and status.attempts == 2
    assert list(ids_of(server.messages)) == [receipt.id]


def test_last_attempt_failed_goes_to_the_dead_letter_queue_and_replays(notify, server, settings):
    server.reject_recipient("bounce@example.com")
    receipt = notify.send_email(
        to_email="bounce@example.com", subject="Dead", body="b", tenant_id="initech"
    )
    status = receipt.wait(30)
    assert status.state is DeliveryState.FAILED
    assert status.error and "550" in status.error

    loaded = notify.settings
    deadline = time.monotonic() + 10
    while True:
        listed = replay_dead_letters(loaded, dry_run=True)
        if listed or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [d.id for d in listed] == [receipt.id]
    assert listed[0].to == "b***@example.com" and "550" in listed[0].error
    assert replay_dead_letters(loaded, dry_run=True) == listed  # listing keeps them

    server.clear()  # the mailbox exists now
    replayed = replay_dead_letters(loaded)
    assert [d.id for d in replayed] == [receipt.id]
    assert notify.wait(receipt.id, 30).state is DeliveryState.SENT
    assert list(ids_of(server.messages)) == [receipt.id]
    assert replay_dead_letters(loaded, dry_run=True) == []


def letters_of(settings: Any, notification_id: str, timeout: float = 15) -> list[Any]:
    """The dead letters of ``notification_id``, once there is one (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = replay_dead_letters(settings, dry_run=True, ids=[notification_id])
        if listed or time.monotonic() > deadline:
            return listed
        time.sleep(0.1)


def test_a_replayed_dead_letter_that_fails_again_is_dead_lettered_again(notify, server):
    server.reject_recipient("twice@example.com")
    receipt = notify.send_email(
        to_email="twice@example.com", subject="Twice", body="b", tenant_id="globex"
    )
    assert receipt.wait(30).state is DeliveryState.FAILED
    loaded = notify.settings
    assert [d.id for d in letters_of(loaded, receipt.id)] == [receipt.id]

    # Replayed while the mailbox still refuses it: it fails at the same attempt
    # as before, and must come back to the queue for the operator.
    assert [d.id for d in replay_dead_letters(loaded, ids=[receipt.id])] == [receipt.id]
    assert notify.wait(receipt.id, 30).state is DeliveryState.FAILED
    again = letters_of(loaded, receipt.id)
    assert [d.id for d in again] == [receipt.id] and "550" in again[0].error

    server.clear()  # the mailbox exists now
    assert [d.id for d in replay_dead_letters(loaded, ids=[receipt.id])] == [receipt.id]
    assert notify.wait(receipt.id, 30).state is DeliveryState.SENT
    assert list(ids_of(server.messages)) == [receipt.id]
    assert replay_dead_letters(loaded, dry_run=True, ids=[receipt.id]) == []


def test_a_finished_notification_delivered_again_is_not_dead_lettered_again(notify, server, worker):
    # A copy of a notification that comes back after it has finished (the retry a
    # worker publishes when it meets the claim of an attempt still running, a
    # caller's retry after an in-doubt publish, a redelivery) carries a later
    # attempt number. The worker finds the notification finished and must not add
    # a second dead letter for the operator to replay.
    kwargs: dict[str, Any] = {
        "to_email": "repeat@example.com",
        "subject": "Once",
        "body": "b",
        "tenant_id": "globex",
        "idempotency_key": "dead-once",
    }
    server.reject_recipient("repeat@example.com")
    first = notify.send_email(**kwargs)
    assert first.wait(30).state is DeliveryState.FAILED
    loaded = notify.settings
    assert [d.id for d in letters_of(loaded, first.id)] == [first.id]

    copy = notify.build(notify.send_email, **kwargs)
    assert copy.id == first.id
    publisher = Publisher(loaded.celery, routes=Routes.from_settings(loaded))
    try:
        publisher.publish(copy, attempt=2, wait=True)
    finally:
        publisher.close()
    # The worker takes the copy and finds it finished (its log says so); a dead
    # letter it published would come right after.
    deadline = time.monotonic() + 30
    while "notification_already_delivered" not in worker.log_file.read_text():
        assert time.monotonic() < deadline, worker.log_file.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)
    assert [d.id for d in replay_dead_letters(loaded, dry_run=True, ids=[first.id])] == [first.id]
    assert server.messages == []


def test_broker_down_raises_enqueue_error_then_recovers(
    run_id, smtp, server, worker, proxy: TcpProxy
):
    settings = settings_table(
        run_id, smtp.port, broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//"
    )
    with Notifier.from_settings(settings) as notify:

        def send(order: str) -> Any:
            return notify.send_order_confirmation(
                order_id=order,
                customer_email="jane@example.com",
                order_total="5.00",
                currency="USD",
                tenant_id="acme",
            )

        assert send("down-1").wait(30).state is DeliveryState.SENT

        proxy.stop()
        # Let the broker's end of the connection reach this side, as it has by the
        # time anyone sends during a real outage. (A message written in that very
        # instant is recorded as failed by the confirm reader instead.)
        time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(EnqueueError, match="cannot publish to the broker"):
            send("down-2")
        assert time.monotonic() - started < 5
        # Nothing was kept of the refused send: the same order can be sent again.
        with pytest.raises(EnqueueError):
            send("down-2")

        proxy.start()  # same port: the broker is back
        receipt = send("down-2")
        assert not receipt.duplicate
        assert receipt.wait(30).state is DeliveryState.SENT
    counts = ids_of(server.messages)
    assert len(counts) == 2 and set(counts.values()) == {1}


def test_unconfirmed_messages_are_published_again_and_delivered_once(
    run_id, smtp, server, worker, monkeypatch
):
    from tenant_notify.transports.celery.publisher import _Link

    # The broker's confirms never arrive: the publisher must write the message
    # again on a new connection (twice), then give up on the confirm, without
    # losing or doubling the notification, nor overwriting the worker's status.
    monkeypatch.setattr(_Link, "_on_ack", lambda self, tag, multiple: None)
    settings = settings_table(run_id, smtp.port, publish_timeout=0.5)
    with Notifier.from_settings(settings) as notify:
        receipt = notify.send_email(
            to_email="confirm@example.com", subject="Confirm", body="b", tenant_id="globex"
        )
        assert receipt.wait(30).state is DeliveryState.SENT
        publisher = notify.transport.publisher
        deadline = time.monotonic() + 10
        while any(link.unconfirmed or link.redo for link in publisher._links):
            assert time.monotonic() < deadline, "the publisher kept waiting for the confirm"
            time.sleep(0.1)
        assert notify.status(receipt.id).state is DeliveryState.SENT
    time.sleep(1.0)  # the copies written again reach the worker, which skips them
    assert ids_of(server.messages) == {receipt.id: 1}
    assert worker.log().count(f"deliver[{receipt.id}] received") >= 2


def test_the_workers_log_records_keep_their_levels(notify, server, worker):
    receipt = notify.send_welcome_email(
        user_email="level@example.com", user_name="Lev", tenant_id=sorted(TENANTS)[0]
    )
    assert receipt.wait(timeout=30).state == "sent"
    # The status is saved before the record is written: give the line a moment.
    deadline = time.monotonic() + 10
    while True:
        lines = worker.log().splitlines()
        found = [line for line in lines if f"notification_id={receipt.id}" in line]
        found = [line for line in found if "notification_sent" in line]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    [sent] = found
    # Celery's format: "[time: LEVEL/process] message"; stdout redirected there would be WARNING.
    assert ": INFO/" in sent and "notification_sent tenant_id=" in sent
    assert "to=l***@example.com" in sent and "level@example.com" not in worker.log()
