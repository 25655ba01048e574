"""The worker's own read of a delivery's frames, checked against py-amqp's decoder.

`read_delivery` reads a `basic.deliver` frame and its content header only as far as
the worker needs (the tags, the content type, five headers). Every case here decodes
the same bytes with py-amqp too: what the narrow read returns must be exactly what
py-amqp gives for those fields, and where it cannot be sure it must say None (the
worker then hands the frames to py-amqp), never something else.
"""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal
from typing import Any

import pytest
from amqp.basic_message import Message as AmqpMessage
from amqp.serialization import dumps, loads

from tenant_notify.models import Channel, Notification
from tenant_notify.transports.celery._delivery import WANTED, AckFrames, Received, read_delivery
from tenant_notify.transports.celery.message import build_message


def method_payload(consumer_tag: str, delivery_tag: int) -> bytes:
    args = dumps("sLbss", [consumer_tag, delivery_tag, False, "ex", "rk"])
    return struct.pack(">HH", 60, 60) + args


def header_payload(body: bytes, **properties: Any) -> bytes:
    message = AmqpMessage(body, **properties)
    return struct.pack(">HHQ", 60, 0, len(body)) + message._serialize_properties()


def py_amqp(method: bytes, header: bytes) -> tuple[Any, ...]:
    """What py-amqp reads from the same payloads, cut to the fields the worker uses."""
    consumer_tag, delivery_tag, _, _, _ = loads("sLbss", method, 4)[0]
    message = AmqpMessage()
    message.inbound_header(header)
    headers = message.properties.get("application_headers") or {}
    wanted = {name: headers[name] for name in WANTED.values() if name in headers}
    properties = message.properties
    content = properties.get("content_type"), properties.get("content_encoding")
    return consumer_tag, delivery_tag, *content, wanted


def check(method: bytes, header: bytes) -> tuple[Any, ...]:
    got = read_delivery(method, header)
    assert got is not None
    assert got == py_amqp(method, header)
    return got


def notification() -> Notification:
    return Notification(
        id="n-1",
        tenant_id="acme",
        kind="order_confirmation",
        channel=Channel.EMAIL,
        to="customer@example.com",
        context={"order_id": "A-1"},
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"attempt": 4},
        {"attempt": 2, "eta": dt.datetime(2026, 12, 1, 12, 30, tzinfo=dt.UTC)},
        {"ignore_result": True, "origin": "123@host"},
    ],
)
def test_the_library_s_task_messages_read_as_py_amqp_reads_them(kwargs: dict[str, Any]) -> None:
    body, headers = build_message(notification(), **kwargs)
    header = header_payload(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=headers,
        delivery_mode=2,
        priority=1,
        correlation_id="n-1",
        reply_to="",
    )
    tag, delivery_tag, content_type, encoding, got = check(method_payload("ctag-1", 7), header)
    assert (tag, delivery_tag, content_type) == ("ctag-1", 7, "application/json")
    assert encoding == "utf-8"
    assert got["task"] == "tenant_notify.deliver" and got["tenant_id"] == "acme"
    assert got["retries"] == kwargs.get("attempt", 1) - 1


def test_celery_s_own_protocol_2_headers_and_unicode_read_alike() -> None:
    headers = {
        "lang": "py",
        "task": "tenant_notify.deliver",
        "id": "ñ-ø-1",
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, 30],
        "root_id": "ñ-ø-1",
        "parent_id": None,
        "argsrepr": "('a', {'b': 1})",
        "kwargsrepr": "{}",
        "origin": "gen1@host",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {"a": [1, 2, {"x": "y"}]},
        "tenant_id": "Café-Ünïcode",
        "when": dt.datetime(2026, 1, 2, 3, 4, 5),
        "amount": Decimal("1.25"),
        "ratio": 0.5,
        "big": 2**40,
        "raw": b"\x00\xff",
    }
    body = b'[[{"id": "x"}], {}, {}]'
    header = header_payload(body, content_type="application/json", application_headers=headers)
    got = check(method_payload("amq.ctag-Ü", 2**40), header)
    assert got[4]["tenant_id"] == "Café-Ünïcode" and got[1] == 2**40


def entry(key: bytes, kind: bytes, value: bytes) -> bytes:
    return bytes([len(key)]) + key + kind + value


def with_table(*entries: bytes, flags: int = 0xA000) -> bytes:
    table = b"".join(entries)
    props = b"\x10application/json" + struct.pack(">I", len(table)) + table
    return struct.pack(">HHQH", 60, 0, 5, flags) + props


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (b"b", b"\xff"),
        (b"B", b"\xff"),
        (b"s", b"\xff\xfe"),
        (b"U", b"\xff\xfe"),
        (b"u", b"\xff\xfe"),
        (b"I", b"\xff\xff\xff\xfe"),
        (b"i", b"\xff\xff\xff\xfe"),
        (b"L", b"\xff" * 8),
        (b"l", b"\xff" * 8),
        (b"f", struct.pack(">f", 1.5)),
        (b"d", struct.pack(">d", 1.5)),
        (b"D", b"\x02" + struct.pack(">i", 125)),
        (b"T", struct.pack(">Q", 1_700_000_000)),
        (b"t", b"\x01"),
        (b"V", b""),
        (b"x", struct.pack(">I", 3) + b"\x00\x01\x02"),
        (b"S", struct.pack(">I", 3) + b"abc"),
        (b"A", struct.pack(">I", 2) + b"V" + b"V"),
        (b"F", struct.pack(">I", 3) + b"\x01kV"),
    ],
)
def test_every_table_type_is_skipped_and_the_wanted_ones_read(kind: bytes, value: bytes) -> None:
    header = with_table(
        entry(b"other", kind, value),
        entry(b"task", b"S", struct.pack(">I", 4) + b"done"),
        entry(b"after", kind, value),
    )
    got = check(method_payload("c", 1), header)
    assert got[4] == {"task": "done"}
    if kind in b"bBsUuIiLlV":  # a wanted header may be an integer or void
        check(method_payload("c", 1), with_table(entry(b"retries", kind, value)))


@pytest.mark.parametrize(
    "header",
    [
        # A wanted header of a type the worker does not read (bytes, a table, a bool).
        with_table(entry(b"id", b"x", struct.pack(">I", 1) + b"a")),
        with_table(entry(b"tenant_id", b"F", struct.pack(">I", 0))),
        with_table(entry(b"retries", b"t", b"\x01")),
        # Text that is not UTF-8 (py-amqp leaves it as bytes).
        with_table(entry(b"task", b"S", struct.pack(">I", 2) + b"\xff\xfe")),
        # A type the spec does not have (py-amqp raises).
        with_table(entry(b"other", b"Z", b"")),
        # A table longer than the frame; one whose last entry overruns it.
        with_table(entry(b"task", b"S", struct.pack(">I", 40) + b"done")),
        struct.pack(">HHQH", 60, 0, 5, 0x2000) + struct.pack(">I", 99) + b"\x01a",
        # More property flags than one word; another class's header.
        struct.pack(">HHQH", 60, 0, 5, 0x8001) + b"\x00",
        struct.pack(">HHQH", 50, 0, 5, 0x8000) + b"\x00",
        # Cut short.
        b"\x00\x3c\x00",
    ],
)
def test_what_it_cannot_read_exactly_it_leaves_to_py_amqp(header: bytes) -> None:
    assert read_delivery(method_payload("c", 1), header) is None


def test_a_method_other_than_deliver_is_not_read() -> None:
    header = header_payload(b"{}", content_type="application/json")
    get_ok = struct.pack(">HH", 60, 71) + dumps("Lbssl", [1, False, "", "q", 0])
    assert read_delivery(get_ok, header) is None
    assert read_delivery(method_payload("c", 3)[:9], header) is None  # tag cut short


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class Connection:
    def __init__(self) -> None:
        self.transport = Transport()
        self.bytes_sent = 0


def test_ack_and_reject_frames_are_py_amqp_s_and_held_ones_go_out_together_in_order() -> None:
    from amqp import spec

    conn = Connection()
    frames = AckFrames(conn, channel_id=3)
    Received(9, {}, b"", frames).ack()
    frames.hold()
    Received(10, {}, b"", frames).reject(requeue=True)
    Received(12, {}, b"", frames).ack(multiple=True)
    assert len(conn.transport.writes) == 1
    frames.release()
    frames.release()  # nothing held: nothing written
    assert len(conn.transport.writes) == 2 and conn.bytes_sent == 3
    out = b"".join(conn.transport.writes)
    seen = []
    while out:
        kind, channel, size = struct.unpack_from(">BHI", out)
        payload, end = out[7 : 7 + size], out[7 + size]
        assert (kind, channel, end) == (1, 3, 0xCE)
        sig = struct.unpack_from(">HH", payload)
        seen.append((sig, *loads("Lb", payload, 4)[0]))
        out = out[8 + size :]
    assert seen == [
        (spec.Basic.Ack, 9, False),
        (spec.Basic.Reject, 10, True),
        (spec.Basic.Ack, 12, True),
    ]


def settling_consumer(conn: Connection) -> Any:
    """A Consumer with only what ``_settle`` uses (its broker connection's frames)."""
    import collections
    import threading

    from tenant_notify.log import get_logger
    from tenant_notify.transports.celery.consumer import Consumer, _Acks

    consumer = Consumer.__new__(Consumer)
    consumer._done = collections.deque()
    consumer._lock = threading.Lock()
    consumer._in_flight = 0
    consumer._generation = 1
    consumer._acks = _Acks()
    consumer._frames = AckFrames(conn, channel_id=1)
    consumer._holding = False
    consumer._log = get_logger()
    consumer.acks_sent = consumer.acks_covered = 0
    return consumer


def finished(consumer: Any, tag: int, *, requeue: bool) -> None:
    from tenant_notify.transports.celery.consumer import _Item

    message = Received(tag, {}, b"", consumer._frames)
    consumer._acks.received(tag)
    consumer._in_flight += 1
    item = _Item(message, 1, {}, "acme", "acme", "n", 1, 0.0)
    consumer._done.append((item, requeue))


@pytest.mark.parametrize("acked", [(), (2,)])
def test_a_settling_writes_its_frames_even_when_it_only_hands_back(acked: tuple[int, ...]) -> None:
    # A Redis outage fails every delivery: a settling of rejections alone must still
    # write them (held back, the messages stayed in the worker until an acknowledgement).
    conn = Connection()
    consumer = settling_consumer(conn)
    finished(consumer, 1, requeue=True)
    for tag in acked:
        finished(consumer, tag, requeue=False)
    consumer._settle()
    assert len(conn.transport.writes) == 1 and consumer._in_flight == 0
    assert not consumer._holding
    sigs = []
    out = conn.transport.writes[0]
    while out:
        size = struct.unpack_from(">I", out, 3)[0]
        sigs.append(struct.unpack_from(">HH", out, 7))
        out = out[8 + size :]
    assert sigs == [(60, 90)] + [(60, 80)] * len(acked)
