"""The publisher's own AMQP framing: the bytes py-amqp would write, the confirms it would read.

The publisher writes a task message as the frames of one ``basic.publish``
(tenant_notify.transports.celery.publisher._Frames) instead of going through
``prepare_message`` and ``basic_publish``; a broker must not be able to tell.
These tests encode the same messages both ways and compare every byte, (one round
trip through RabbitMQ is in tests/integration/test_celery_frames.py).
"""

from __future__ import annotations

import datetime as dt
import socket
import struct
import types
import uuid
from typing import Any

import pytest
from amqp import Message, spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from tenant_notify.config import CelerySettings
from tenant_notify.models import Channel, Notification
from tenant_notify.transports.celery.message import TASK_HEADER_KEYS, build_message
from tenant_notify.transports.celery.publisher import (
    Publisher,
    _Frames,
    _Link,
    _Pending,
    _TaskTable,
)


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
    body, headers = build_message(notification, **{"origin": "1@host", **options})
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


def test_the_task_headers_encoded_from_parts_are_the_table_py_amqp_writes():
    table = _TaskTable()
    frames = _Frames(3, 131072)
    for pending in (
        _pending(ORDER),
        _pending(ORDER, tenant="globex-café ünïcode"),
        _pending(ORDER, attempt=3, ignore_result=True),
        _pending(ORDER, attempt=3, ignore_result=True, origin="2@other-host"),
        _pending(ORDER),  # the parts of the first, kept
    ):
        assert tuple(pending.headers) == TASK_HEADER_KEYS
        pending.table = table.encode(pending.headers)
        assert pending.table is not None
        assert frames.encode(pending) == _by_py_amqp(pending, 3, 131072)
    # Headers that are not build_message's own alone go through the general encoder.
    pending = _pending(ORDER)
    pending.headers["x-dead-letter"] = "1"
    assert table.encode(pending.headers) is None
    eta = _pending(ORDER, eta=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert table.encode(eta.headers) is None


def test_the_publisher_encodes_its_own_headers_from_parts():
    # What publish() writes: the table from parts when it can, the general one else.
    publisher = Publisher(CelerySettings(broker_url="amqp://guest:guest@127.0.0.1:1//"))
    written: list[_Pending] = []
    publisher._send = lambda pending, deadline, wait: written.append(pending)  # type: ignore[method-assign]
    n = _pending(ORDER).notification
    publisher.publish(n)
    publisher.publish(n, countdown=30)
    publisher.publish(n, extra_headers={"x-replayed": 1})
    plain, delayed, extra = written
    assert plain.table is not None and delayed.table is None and extra.table is None
    for pending in written:
        assert _Frames(1, 131072).encode(pending) == _by_py_amqp(pending, 1, 131072)


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


# --- confirms read from the socket ----------------------------------------------------


def _confirm(method: int, tag: int, *, multiple: bool = False, channel: int = 1) -> bytes:
    payload = struct.pack(">HHQB", 60, method, tag, 1 if multiple else 0)
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


class _Transport:
    """What poll() reads through: py-amqp's TCPTransport's socket and read buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._read_buffer = b""


def _link(sock: socket.socket, handed: list[bytes]) -> _Link:
    publisher = Publisher(CelerySettings(broker_url="amqp://guest:guest@127.0.0.1:1//"))
    link = _Link(publisher)
    transport = _Transport(sock)

    def drain_events(timeout: float) -> None:
        # py-amqp's part: it takes the frames handed over (here: records them).
        handed.append(transport._read_buffer)
        transport._read_buffer = b""

    link.conn = types.SimpleNamespace(
        transport=types.SimpleNamespace(driver_type="amqp"),
        connection=types.SimpleNamespace(transport=transport),
        drain_events=drain_events,
    )
    link.channel = types.SimpleNamespace(channel_id=1)
    link.confirming = link.fast_read = True
    for tag in range(1, 11):
        link.unconfirmed[tag] = _pending(ORDER)
    link.next_tag = 11
    return link


def test_confirms_in_the_socket_are_settled_and_the_first_other_frame_goes_to_py_amqp():
    ours, broker = socket.socketpair()
    with ours, broker:
        handed: list[bytes] = []
        link = _link(ours, handed)
        refused = link.unconfirmed[5]
        close = struct.pack(">BHI", 1, 1, 4) + struct.pack(">HH", 20, 40) + b"\xce"
        broker.sendall(
            _confirm(80, 2)
            + _confirm(80, 4, multiple=True)  # 1, 3 and 4 (2 is already done)
            + _confirm(120, 5)  # refused: written again on a new connection
            + _confirm(80, 1, channel=2)  # another channel's: py-amqp's business
            + _confirm(80, 7)
            + close
        )
        link.poll()
        assert sorted(link.unconfirmed) == [6, 7, 8, 9, 10]
        assert link.redo == [refused]
        assert handed == [_confirm(80, 1, channel=2) + _confirm(80, 7) + close]
        # A confirm cut by the read: py-amqp reads the rest of the frame.
        broker.sendall(_confirm(80, 10, multiple=True)[:9])
        link.poll()
        assert handed[-1] == _confirm(80, 10, multiple=True)[:9]
        assert sorted(link.unconfirmed) == [6, 7, 8, 9, 10]


def test_a_multiple_confirm_covers_every_tag_up_to_it_once():
    ours, broker = socket.socketpair()
    with ours, broker:
        link = _link(ours, [])
        broker.sendall(_confirm(80, 3, multiple=True) + _confirm(80, 3, multiple=True))
        link.poll()
        assert sorted(link.unconfirmed) == list(range(4, 11))
        broker.sendall(_confirm(120, 6, multiple=True) + _confirm(80, 10, multiple=True))
        link.poll()
        assert link.unconfirmed == {}
        assert len(link.redo) == 3  # 4, 5 and 6, refused


def test_a_connection_the_broker_closed_is_noticed_before_the_next_write():
    ours, broker = socket.socketpair()
    with ours:
        link = _link(ours, [])
        broker.sendall(_confirm(80, 1))
        broker.close()
        # One read takes what there is (a short read ends it: no second system
        # call to learn there is no more); the close is the next read's.
        link.check()
        assert 1 not in link.unconfirmed  # what came before the close counts
        with pytest.raises(ConnectionError, match="closed"):
            link.check()


def test_the_check_before_a_write_reads_the_socket_once_without_blocking():
    ours, broker = socket.socketpair()
    with ours, broker:
        link = _link(ours, [])
        reads: list[int] = []
        real = ours.recv

        class Counted:  # the socket as the link sees it: every read counted
            def __getattr__(self, name: str) -> Any:
                return getattr(ours, name)

            def recv(self, size: int, flags: int = 0) -> bytes:
                reads.append(flags)
                return real(size, flags)

        link.conn.connection.transport.sock = Counted()
        link.check()  # nothing has come: one read that would block, and no wait
        assert reads == [socket.MSG_DONTWAIT] and len(link.unconfirmed) == 10
        broker.sendall(_confirm(80, 2) + _confirm(80, 5, multiple=True))
        link.check()
        assert len(reads) == 2  # the confirms, settled in the same read
        assert sorted(link.unconfirmed) == list(range(6, 11))
