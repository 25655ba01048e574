"""The publisher's ready-made AMQP frames are the bytes py-amqp would write.

The publisher writes a task message as the frames of one ``basic.publish``
(tenant_notify.transports.celery.publisher._Frames) instead of going through
``prepare_message`` and ``basic_publish``; a broker must not be able to tell.
These tests encode the same messages both ways and compare every byte, (one round
trip through RabbitMQ is in tests/integration/test_celery_frames.py).
"""

from __future__ import annotations

import types
import uuid
from typing import Any

import pytest
from amqp import Message, spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from tenant_notify.models import Channel, Notification
from tenant_notify.transports.celery.message import build_message
from tenant_notify.transports.celery.publisher import _Frames, _Pending


def _by_py_amqp(pending: _Pending, channel_id: int, frame_max: int) -> bytes:
    """What py-amqp's frame writer writes for the message the publisher used to build."""
    written: list[bytes] = []
    connection = types.SimpleNamespace(frame_max=frame_max, bytes_sent=0)
    transport = types.SimpleNamespace(write=lambda data: written.append(bytes(data)))
    message = Message(
        pending.body,
        priority=pending.priority,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=pending.headers,
        correlation_id=pending.notification.id,
        delivery_mode=2,
    )
    args = dumps("Bssbb", (0, pending.queue, pending.queue, False, False))
    frame_writer(connection, transport)(1, channel_id, spec.Basic.Publish, args, message)
    return b"".join(written)


def _pending(context: dict[str, Any], *, tenant: str = "acme", **options: Any) -> _Pending:
    notification = Notification(
        id=uuid.uuid4().hex,
        tenant_id=tenant,
        kind="order_confirmation",
        channel=Channel.EMAIL,
        to="customer@example.com",
        context=context,
        idempotency_key="order_confirmation:1",
    )
    body, headers = build_message(notification, origin="1@host", **options)
    return _Pending(notification, body, headers, f"q.tenant.{tenant}", 0.0)


ORDER = {"order_id": "A-1", "customer_email": "customer@example.com", "currency": "USD"}


@pytest.mark.parametrize("frame_max", [131072, 4096])
@pytest.mark.parametrize("priority", [0, 1])
def test_a_task_message_is_framed_byte_for_byte_as_py_amqp_frames_it(frame_max, priority):
    frames = _Frames(7, frame_max)
    for pending in (
        _pending(ORDER),
        _pending(ORDER, tenant="globex-café ünïcode"),
        _pending({**ORDER, "note": "x" * 20_000}),  # several body frames at 4096
        _pending(ORDER, attempt=3, ignore_result=True),
    ):
        pending.priority = priority
        assert frames.encode(pending) == _by_py_amqp(pending, 7, frame_max)
        assert frames.encode(pending) == _by_py_amqp(pending, 7, frame_max)  # from the cache


def test_a_header_whose_value_changes_is_encoded_again_whatever_its_type():
    frames = _Frames(1, 131072)
    pending = _pending(ORDER)
    # Values equal in Python but encoded differently on the wire (int and bool,
    # a list of either, a tuple and a list) must not be taken for each other.
    for value in (1, True, 0, False, [1], [True], (1,), {"a": 1}, {"a": True}, None, 2.5, "1"):
        pending.headers["x-extra"] = value
        assert frames.encode(pending) == _by_py_amqp(pending, 1, 131072), value
    pending.headers["retries"] = 4
    pending.headers["eta"] = "2026-01-01T00:00:00+00:00"
    assert frames.encode(pending) == _by_py_amqp(pending, 1, 131072)


def test_a_queue_name_too_long_for_amqp_is_refused_before_anything_is_written():
    pending = _pending(ORDER)
    pending.queue = "q" * 256
    with pytest.raises(ValueError, match="255 bytes"):
        _Frames(1, 131072).encode(pending)
