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
