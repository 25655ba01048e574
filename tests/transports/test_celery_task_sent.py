"""Task-sent events: Celery's own event receiver sees each notification once it is queued.

Flower and ``celery events`` learn of a task from the ``task-sent`` event its sender
publishes (``task_send_sent_event``); the Celery transport writes its messages
itself, so it publishes that event itself when ``[celery] send_events`` is on. What
Celery's ``EventReceiver`` and ``State`` make of it is the evidence.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import Notifier
from tests.integration.conftest import AMQP_URL, REDIS_URL, services, work_queues  # noqa: F401

pytestmark = pytest.mark.integration


def settings(run: str, send_events: bool) -> dict[str, Any]:
    return {
        "transport": "celery",
        "tenants": {"acme": {"name": "Acme", "email_from": "orders@acme.test"}},
        "celery": {
            "broker_url": AMQP_URL,
            "result_backend": REDIS_URL,
            "queue": f"tn_ts_{run}",
            "dead_letter_queue": f"tn_ts_{run}.dead",
            "send_events": send_events,
        },
        "redis": {"url": REDIS_URL, "key_prefix": f"tn_ts:{run}:"},
    }


@pytest.fixture
def receiver(services: None) -> Iterator[tuple[Any, Any]]:  # noqa: F811
    """Celery's event receiver, capturing into a State on a thread."""
    import celery

    app = celery.Celery(broker=AMQP_URL)
    state = app.events.State()
    with app.connection_for_read() as conn:
        recv = app.events.Receiver(conn, handlers={"*": state.event})
        thread = threading.Thread(target=capture, args=(recv,), daemon=True)
        thread.start()
        time.sleep(1.0)  # its queue is bound before anything is sent
        try:
            yield state, recv
        finally:
            recv.should_stop = True  # the capture loop checks it between events
            thread.join(10)


def capture(recv: Any) -> None:
    with contextlib.suppress(TimeoutError):
        recv.capture(limit=None, timeout=None, wakeup=False)


@pytest.mark.parametrize("send_events", [True, False])
def test_a_send_is_a_task_sent_event_when_events_are_on(
    receiver: tuple[Any, Any], send_events: bool
) -> None:
    state, _ = receiver
    run = uuid.uuid4().hex[:10]
    table = settings(run, send_events)
    try:
        with Notifier.from_settings(table) as notify:
            receipt = notify.send_welcome_email(
                user_email="jane@example.com", user_name="Jane", tenant_id="acme"
            )
        deadline = time.monotonic() + (10 if send_events else 2)
        while receipt.id not in state.tasks and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        import kombu

        with kombu.Connection(AMQP_URL) as conn:
            for name in [*work_queues(table), table["celery"]["dead_letter_queue"]]:
                conn.channel().queue_delete(name)
    if not send_events:
        assert receipt.id not in state.tasks
        return
    task = state.tasks[receipt.id]
    assert task.state == "PENDING"  # what Celery makes of task-sent
    assert task.name == "tenant_notify.deliver"
    assert task.sent is not None
    assert "tenant='acme'" in task.args and "j***@example.com" in task.args
    assert "jane@example.com" not in task.args
