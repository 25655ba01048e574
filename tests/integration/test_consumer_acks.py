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
