"""`tenant-notify worker` acknowledges: one `multiple` frame covers exactly the finished run."""

from __future__ import annotations

import uuid

import pytest

from tenant_notify.transports.celery.consumer import _Acks

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


@pytest.mark.integration
def test_the_broker_keeps_exactly_the_unfinished(services: None) -> None:
    """Out of order on a real channel: what is unacknowledged comes back, nothing else."""
    kombu = pytest.importorskip("kombu")
    name = f"test_acks_{uuid.uuid4().hex[:8]}"
    with kombu.Connection(AMQP) as conn:
        queue = kombu.Queue(name, auto_delete=False, durable=False)(conn.channel())
        queue.declare()
        producer = conn.Producer()
        for i in range(8):
            producer.publish({"i": i}, routing_key=name, serializer="json")
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
            back = []
            with kombu.Connection(AMQP) as again:
                simple = again.SimpleQueue(queue)
                while True:
                    try:
                        message = simple.get(timeout=1)
                    except simple.Empty:
                        break
                    back.append(message.payload["i"])
                    message.ack()
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
