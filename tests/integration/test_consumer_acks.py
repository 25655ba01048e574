"""`tenant-notify worker` acknowledges: one `multiple` frame covers exactly the finished run."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tenant_notify.transports.celery.consumer import _Acks
from tenant_notify.transports.celery.message import queue_for

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def received(*tags: int) -> _Acks:
    acks = _Acks()
    for tag in tags:
        acks.received(tag)
    return acks


def test_a_run_from_the_oldest_is_one_frame() -> None:
    acks = received(1, 2, 3, 4)
    assert acks.plan([2, 1, 3]) == (3, 3, [])
    assert acks.plan([4]) == (4, 1, [])


def test_finished_behind_one_in_hand_go_one_by_one_and_never_again() -> None:
    acks = received(1, 2, 3, 4, 5)
    assert acks.plan([2, 4]) == (None, 0, [2, 4])  # 1 is still in hand
    # 1 finishes: the run is 1 alone (2 was acknowledged already), then 3 is in hand.
    assert acks.plan([1]) == (1, 1, [])
    assert acks.plan([3]) == (3, 1, [])  # 4 acknowledged before: skipped
    assert acks.plan([5]) == (5, 1, [])


def test_a_rejected_message_ends_no_run_and_is_not_acknowledged() -> None:
    acks = received(1, 2, 3)
    acks.rejected(1)
    assert acks.plan([2, 3]) == (3, 2, [])


def _eight(conn: Any, name: str, body: Any, **options: Any) -> Any:
    """A queue ``name`` holding eight messages, ``body(i)`` each."""
    kombu = pytest.importorskip("kombu")
    queue = kombu.Queue(name, auto_delete=False, durable=False)(conn.channel())
    queue.declare()
    producer = conn.Producer()
    for i in range(8):
        producer.publish(body(i), routing_key=name, **options)
    return queue


def _take_all(queue: Any, value: Any) -> list[Any]:
    """``value`` of every message left in ``queue``, each acknowledged."""
    kombu = pytest.importorskip("kombu")
    back = []
    with kombu.Connection(AMQP) as again:
        simple = again.SimpleQueue(queue)
        while True:
            try:
                message = simple.get(timeout=1)
            except simple.Empty:
                break
            back.append(value(message))
            message.ack()
        simple.close()
    return back


@pytest.mark.integration
def test_the_broker_keeps_exactly_the_unfinished(services: None) -> None:
    """Out of order on a real channel: what is unacknowledged comes back, nothing else."""
    kombu = pytest.importorskip("kombu")
    name = f"test_acks_{uuid.uuid4().hex[:8]}"
    with kombu.Connection(AMQP) as conn:
        queue = _eight(conn, name, lambda i: {"i": i}, serializer="json")
        try:
            channel = conn.channel()
            got: list = []
            consumer = kombu.Consumer(channel, [queue], on_message=got.append)
            channel.basic_qos(0, 8, False)
            consumer.consume()
            while len(got) < 8:
                conn.drain_events(timeout=5)
            by_i = {m.decode()["i"]: m for m in got}
            acks = _Acks()
            for m in got:
                acks.received(m.delivery_tag)
            # 0-2 finish, 5 finishes, 3 is handed back; 4, 6, 7 stay in hand.
            by_i[3].reject(requeue=True)
            acks.rejected(by_i[3].delivery_tag)
            finished = {by_i[i].delivery_tag: by_i[i] for i in (0, 1, 2, 5)}
            run_end, covered, singles = acks.plan(finished)
            assert covered == 3 and singles == [by_i[5].delivery_tag]
            assert run_end is not None
            finished[run_end].ack(multiple=True)
            for tag in singles:
                finished[tag].ack()
            channel.close()  # what is unacknowledged goes back to the queue
            back = _take_all(queue, lambda message: message.payload["i"])
            assert sorted(back) == [3, 4, 6, 7]
        finally:
            with kombu.Connection(AMQP) as cleanup:
                cleanup.channel().queue_delete(name)


@pytest.mark.integration
def test_frames_read_in_bulk_arrive_whole_and_a_cut_one_is_py_amqp_s_to_finish(
    services: None,
) -> None:
    """The worker's reader (one recv a wake-up) against py-amqp on a real connection.

    Bodies larger than a frame (several body frames), many messages in one recv, and
    frames cut by the recv's size all come through whole and in order; a frame left
    cut short in the transport's read buffer is completed by py-amqp's own read (the
    internal the reader relies on: if py-amqp changes it, this fails).
    """
    import select

    from tenant_notify.transports.celery.consumer import _FrameReader

    kombu = pytest.importorskip("kombu")
    name = f"test_frames_{uuid.uuid4().hex[:8]}"
    sizes = [10, 70_000, 300_000, 5, *range(1_000, 40_000, 1_300)]
    bodies = [(f"{i:04d}".encode() * (size // 4 + 1))[:size] for i, size in enumerate(sizes)]
    got: list[bytes] = []
    with kombu.Connection(AMQP) as conn:
        channel = conn.channel()
        queue = kombu.Queue(name, auto_delete=False, durable=False)(channel)
        queue.declare()
        producer = conn.Producer()
        try:
            for body in bodies:
                producer.publish(body, routing_key=name, content_type="application/data")
            amqp = conn.connection
            reader = _FrameReader.for_connection(amqp, amqp.sock)
            assert reader is not None, "py-amqp's TCP transport changed: the reader is off"
            reader._CHUNK = 4_093  # cut frames (and their headers) everywhere
            consumer = kombu.Consumer(
                channel, queues=[queue], on_message=lambda m: got.append(m.body), no_ack=True
            )
            consumer.consume()
            while len(got) < len(bodies):
                assert select.select([amqp.sock], [], [], 10)[0], "no frame for 10 s"
                reader.read()
            assert got == bodies
            # A frame cut short waits in py-amqp's buffer; py-amqp's own read finishes it.
            producer.publish(b"last" * 5_000, routing_key=name, content_type="application/data")
            assert select.select([amqp.sock], [], [], 10)[0]
            reader._CHUNK = 11
            reader.read()
            assert len(got) == len(bodies) and amqp.transport._read_buffer
            conn.drain_events(timeout=10)
            while len(got) == len(bodies):
                conn.drain_events(timeout=10)
            assert got[-1] == b"last" * 5_000
        finally:
            channel.queue_delete(name)


def _delete(name: str) -> None:
    kombu = pytest.importorskip("kombu")
    with kombu.Connection(AMQP) as conn:
        conn.channel().queue_delete(name)
        conn.channel().exchange_delete(name)


def _publish_library_messages(queue: str, count: int) -> list[str]:
    """``count`` task messages framed by the library's publisher (its own framing):
    two tenants, retries, a body of several frames; returns their ids in order."""
    from tenant_notify.config import CelerySettings
    from tenant_notify.transports.celery.publisher import Publisher
    from tests.transports.test_celery_frames import ORDER, _pending

    publisher = Publisher(CelerySettings(broker_url=AMQP, queue=queue))
    ids = []
    try:
        for i in range(count):
            context = {**ORDER, "note": "ü" * (150_000 if i == 3 else i)}
            pending = _pending(context, tenant="acme" if i % 2 else "globex-café")
            publisher.publish(pending.notification, attempt=1 + i % 3, wait=True)
            ids.append(pending.notification.id)
    finally:
        publisher.close(timeout=5)
    return ids


@pytest.mark.integration
def test_the_library_s_messages_off_the_wire_read_as_py_amqp_and_kombu_read_them(
    services: None,
) -> None:
    """The worker's narrow read of each delivery, on the frames RabbitMQ sends (cut by a
    small recv anywhere), against py-amqp and kombu reading the same frames: every
    other delivery is declined, so py-amqp reads it as it would have."""
    import select

    from tenant_notify.transports.celery._delivery import WANTED, read_delivery
    from tenant_notify.transports.celery.consumer import _FrameReader

    kombu = pytest.importorskip("kombu")
    name = f"test_deliveries_{uuid.uuid4().hex[:8]}"
    ids = _publish_library_messages(name, 12)
    read: list[tuple[bytes, bytes, bytes]] = []
    declined: list[bytes] = []
    got: list[Any] = []
    with kombu.Connection(AMQP) as conn:
        channel = conn.channel()
        try:

            def on_delivery(method: bytes, header: bytes, body: bytes) -> bool:
                if len(read) % 2:
                    declined.append(method)
                    read.append((method, header, body))
                    return False
                read.append((method, header, body))
                return True

            amqp = conn.connection
            queue = queue_for(name)(channel)
            consumer = kombu.Consumer(channel, queues=[queue], on_message=got.append)
            channel.basic_qos(0, 100, False)
            consumer.consume()
            reader = _FrameReader.for_connection(amqp, amqp.sock, channel.channel_id, on_delivery)
            assert reader is not None
            reader._CHUNK = 997
            received_before = amqp.bytes_recv
            while len(read) < len(ids):
                assert select.select([amqp.sock], [], [], 10)[0], "no frame for 10 s"
                reader.read()
            # Every delivery read here counted for py-amqp's heartbeat check too.
            assert amqp.bytes_recv > received_before + 2 * (len(ids) // 2)
            assert len(got) == len(ids) // 2  # the declined ones, through py-amqp and kombu
            by_tag = {m.delivery_tag: m for m in got}
            for method, header, body in read:
                narrow = read_delivery(method, header)
                assert narrow is not None
                consumer_tag, tag, content_type, encoding, headers = narrow
                assert consumer_tag in channel.callbacks
                assert (content_type, encoding) == ("application/json", "utf-8")
                assert headers["id"] == ids[tag - 1]
                if method in declined:
                    message = by_tag[tag]
                    assert message.body == body.decode()  # py-amqp decodes it
                    assert headers == {
                        key: value
                        for key, value in message.headers.items()
                        if key in WANTED.values()
                    }
        finally:
            conn.release()
            _delete(name)


@pytest.mark.integration
def test_a_delivery_cut_short_is_handed_to_py_amqp_before_py_amqp_reads(services: None) -> None:
    """A passive declare (the depths, every 5 s) or the shutdown has py-amqp read the
    socket while the reader holds the start of a delivery: handed over, py-amqp
    finishes it (without the hand-over py-amqp fails on the next frame, unexpected)."""
    import select

    from tenant_notify.transports.celery.consumer import _FrameReader

    kombu = pytest.importorskip("kombu")
    name = f"test_handover_{uuid.uuid4().hex[:8]}"
    ids = _publish_library_messages(name, 4)  # the fourth's body spans several frames
    got: list[Any] = []
    with kombu.Connection(AMQP) as conn:
        channel = conn.channel()
        try:
            amqp = conn.connection
            queue = queue_for(name)(channel)
            kombu.Consumer(channel, queues=[queue], on_message=got.append, no_ack=True).consume()
            seen: list[bytes] = []
            reader = _FrameReader.for_connection(
                amqp, amqp.sock, channel.channel_id, lambda m, h, b: bool(seen.append(b)) or True
            )
            assert reader is not None
            while len(seen) < 3:
                assert select.select([amqp.sock], [], [], 10)[0]
                reader.read()
            reader._CHUNK = 5_000  # the fourth's first frames only
            while reader._partial is None or reader._partial[1] is None:
                assert select.select([amqp.sock], [], [], 10)[0]
                reader.read()
            assert len(seen) == 3
            reader.hand_over()
            channel.queue_declare(name, passive=True)  # py-amqp reads the socket itself
            while not got:
                conn.drain_events(timeout=10)
            assert got[0].headers["id"] == ids[3] and len(got[0].body) > 150_000
        finally:
            conn.release()
            _delete(name)


_KILLED_CONSUMER = r"""
import sys, select, kombu
from tenant_notify.transports.celery._delivery import AckFrames, Received, read_delivery
from tenant_notify.transports.celery.consumer import _Acks, _FrameReader

name = sys.argv[1]
conn = kombu.Connection("amqp://guest:guest@127.0.0.1:5672//")
conn.connect()
channel = conn.channel()
amqp = conn.connection
frames = AckFrames(amqp, channel.channel_id)
got = []

def on_delivery(method, header, body):
    _, tag, _, _, headers = read_delivery(method, header)
    got.append((int(body), Received(tag, headers, body, frames)))
    return True

channel.basic_qos(0, 8, False)
queue = kombu.Queue(name, auto_delete=False, durable=False)(channel)
kombu.Consumer(channel, queues=[queue], on_message=lambda m: None).consume()
reader = _FrameReader.for_connection(amqp, amqp.sock, channel.channel_id, on_delivery)
while len(got) < 8:
    select.select([amqp.sock], [], [], 10)
    reader.read()
by_i = dict(got)
acks = _Acks()
for _, message in got:
    acks.received(message.delivery_tag)
# As the worker settles: 1 handed back, then 0, 2, 3 in one `multiple` frame (which
# covers 1's tag too: the rejection must reach the broker first) and 5 alone, all in
# one write; 4, 6, 7 stay in hand.
frames.hold()
by_i[1].reject(requeue=True)
acks.rejected(by_i[1].delivery_tag)
finished = {by_i[i].delivery_tag: by_i[i] for i in (0, 2, 3, 5)}
run_end, covered, singles = acks.plan(finished)
assert covered == 3 and singles == [by_i[5].delivery_tag], (covered, singles)
finished[run_end].ack(multiple=True)
for tag in singles:
    finished[tag].ack()
frames.release()
reader.hand_over()
channel.queue_declare(name, passive=True)  # a round trip: every frame before it is done
print("settled", flush=True)
select.select([], [], [])
"""


@pytest.mark.integration
def test_a_sigkilled_consumer_gets_back_exactly_what_it_had_not_acknowledged(
    services: None,
) -> None:
    """The acknowledgements of one settling, written together (a rejection, a
    ``multiple`` frame, a single), then the process SIGKILLed: RabbitMQ hands back
    exactly the unacknowledged (and the rejected one), nothing acknowledged."""
    import os
    import signal
    import subprocess
    import sys

    kombu = pytest.importorskip("kombu")
    name = f"test_killed_{uuid.uuid4().hex[:8]}"
    with kombu.Connection(AMQP) as conn:
        queue = _eight(conn, name, lambda i: str(i).encode(), content_type="application/json")
        try:
            child = subprocess.Popen(
                [sys.executable, "-c", _KILLED_CONSUMER, name],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None
                line = child.stdout.readline()
                assert line.strip() == "settled", child.stderr.read() if child.stderr else ""
            finally:
                os.kill(child.pid, signal.SIGKILL)
                child.communicate(timeout=10)  # reaped, its pipes closed
            back = _take_all(queue, lambda message: int(message.body))
            assert sorted(back) == [1, 4, 6, 7]
        finally:
            _delete(name)
