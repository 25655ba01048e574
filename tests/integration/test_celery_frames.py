"""A task message the publisher frames itself arrives at RabbitMQ as it was published.

(tests/transports/test_celery_frames.py compares the frames with py-amqp's, byte for byte.)
"""

from __future__ import annotations

import uuid

import kombu
import pytest

from tenant_notify.config import CelerySettings
from tenant_notify.transports.celery.message import read_notification
from tenant_notify.transports.celery.publisher import Publisher
from tests.transports.test_celery_frames import ORDER, _pending

from .conftest import AMQP_URL

pytestmark = pytest.mark.integration


def test_rabbitmq_delivers_a_framed_message_as_published(services):
    queue = f"tn_frames_{uuid.uuid4().hex[:8]}"
    publisher = Publisher(CelerySettings(broker_url=AMQP_URL, queue=queue))
    pending = _pending({**ORDER, "note": "ü" * 200_000})  # several frames at RabbitMQ's size
    try:
        publisher.publish(pending.notification, wait=True)
        link = publisher._links[0]
        assert link.frames is not None, "the framed path was not the one taken"
        with kombu.Connection(AMQP_URL) as conn:
            message = conn.SimpleQueue(queue).get(timeout=10)
            try:
                assert message.headers["id"] == pending.notification.id
                assert message.headers["tenant_id"] == "acme"
                assert message.properties["correlation_id"] == pending.notification.id
                assert message.properties["delivery_mode"] == 2
                assert message.content_type == "application/json"
                assert read_notification(message.body) == pending.notification
            finally:
                message.ack()
    finally:
        publisher.close(timeout=5)
        with kombu.Connection(AMQP_URL) as conn:
            conn.channel().queue_delete(queue)
            conn.channel().exchange_delete(queue)


def test_a_channel_the_broker_closes_is_read_by_py_amqp_and_the_send_goes_out_again(services):
    # The exchange deleted behind the publisher's back: RabbitMQ answers the next
    # publish with channel.close (404) among the confirms, which the publisher's
    # own reading hands to py-amqp; the send is written again on a new
    # connection (which declares the exchange again) and confirmed there, with
    # the message that met the 404 (never confirmed).
    queue = f"tn_frames_{uuid.uuid4().hex[:8]}"
    publisher = Publisher(CelerySettings(broker_url=AMQP_URL, queue=queue, publish_timeout=5))
    first, second, third = (_pending(ORDER) for _ in range(3))
    try:
        publisher.publish(first.notification, wait=True)
        with kombu.Connection(AMQP_URL) as conn:
            conn.channel().exchange_delete(queue)
        publisher.publish(second.notification, wait=False)  # into the void: 404
        publisher.publish(third.notification, wait=True)
        assert publisher.flush(10)
        with kombu.Connection(AMQP_URL) as conn:
            simple = conn.SimpleQueue(queue)
            ids = []
            while True:
                try:
                    message = simple.get(timeout=1)
                except simple.Empty:
                    break
                ids.append(message.headers["id"])
                message.ack()
        # The one written into the void was unconfirmed: it went out again too.
        assert sorted(ids) == sorted(p.notification.id for p in (first, second, third))
    finally:
        publisher.close(timeout=5)
        with kombu.Connection(AMQP_URL) as conn:
            conn.channel().queue_delete(queue)
            conn.channel().exchange_delete(queue)
