"""Fixtures for the event tests: rules and schemas, a plain kombu publisher, queues per run.

The broker tests talk to the real RabbitMQ on 127.0.0.1:5672 (and, for the
Celery transport, Redis and a real worker, from ``tests/integration``). Every run
declares its own exchange and queues (``tn_ev_<run id>...``) and deletes them at
the end; the broker's own configuration is never touched.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenant_notify import Notifier
from tenant_notify.events import EventConsumer
from tests.integration.conftest import (  # noqa: F401 - fixtures used by the tests here
    AMQP_URL,
    run_id,
    services,
    settings,
    smtp,
    worker,
)
from tests.smtp_server import LoopbackSMTPServer

SCHEMAS = Path(__file__).parent / "schemas"
ORDER_CREATED = "com.example.order.created"
SIGNED_UP = "com.example.user.signed_up"

RULES = [
    {
        "type": ORDER_CREATED,
        "kind": "order_confirmation",
        "to": "data.customer_email",
        "context": {
            "order_id": "data.order_id",
            "order_total": "data.total",
            "currency": "data.currency",
            "customer_name": "data.customer_name",
            "customer_email": "data.customer_email",
        },
    },
    {
        "type": SIGNED_UP,
        "kind": "welcome",
        "to": "data.email",
        "context": {"user_name": "data.name", "user_email": "data.email"},
    },
]


def order_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order_id": "A-1001",
        "customer_email": "jane@example.com",
        "customer_name": "Jane Doe",
        "total": 59.9,
        "currency": "EUR",
        "channel": "web",
    }
    data.update(overrides)
    return data


def cloudevent(
    type: str = ORDER_CREATED,
    data: Any = None,
    *,
    tenant: str | None = "acme",
    id: str | None = None,
    source: str = "/shop/orders",
    **attributes: Any,
) -> dict[str, Any]:
    """A structured-mode CloudEvent as a host service would write it by hand."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": id or uuid.uuid4().hex,
        "source": source,
        "type": type,
        "time": "2026-12-01T10:00:00Z",
        "datacontenttype": "application/json",
        "data": order_data() if data is None else data,
    }
    if tenant is not None:
        event["tenantid"] = tenant
    event.update(attributes)
    return event


def events_settings(run: str, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "broker_url": AMQP_URL,
        "exchange": f"tn_ev_{run}.domain_events",
        "queue": f"tn_ev_{run}.events",
        "dead_letter_queue": f"tn_ev_{run}.events.dead",
        "schemas_dir": str(SCHEMAS),
        "rules": RULES,
    }
    table.update(overrides)
    return table


class Publisher:
    """A host service's publisher: plain kombu, nothing from tenant-notify."""

    def __init__(self, exchange: str) -> None:
        import kombu

        self.conn = kombu.Connection(AMQP_URL, transport_options={"confirm_publish": True})
        self.exchange = kombu.Exchange(exchange, type="topic", durable=True)
        self.producer = kombu.Producer(self.conn.channel(), exchange=self.exchange)
        self.exchange(self.producer.channel).declare()

    @staticmethod
    def body_of(event: dict[str, Any] | bytes) -> bytes:
        return event if isinstance(event, bytes) else json.dumps(event).encode()

    def publish(self, event: dict[str, Any] | bytes, routing_key: str | None = None) -> None:
        body = self.body_of(event)
        key = routing_key or (event["type"] if isinstance(event, dict) else "x")
        self.producer.publish(
            body,
            routing_key=key,
            content_type="application/cloudevents+json",
            content_encoding="utf-8",
            delivery_mode=2,
        )

    def close(self) -> None:
        self.conn.release()


class DeadLetters:
    """Reads the dead-letter queue with plain kombu."""

    def __init__(self, queue: str) -> None:
        import kombu

        self.conn = kombu.Connection(AMQP_URL)
        self.queue = kombu.Queue(queue, durable=True)(self.conn.channel())

    def get(self, timeout: float = 10.0) -> Any:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.queue.get(no_ack=True)
            if message is not None:
                return message
            time.sleep(0.05)
        raise AssertionError(f"nothing in {self.queue.name} after {timeout}s")

    def empty(self) -> bool:
        return self.queue.get(no_ack=True) is None

    def close(self) -> None:
        self.conn.release()


def delete_broker_objects(events: dict[str, Any]) -> None:
    import kombu

    with kombu.Connection(AMQP_URL, connect_timeout=2) as conn:
        channel = conn.channel()
        for queue in (events["queue"], events["dead_letter_queue"]):
            with contextlib.suppress(Exception):
                channel.queue_delete(queue)
        with contextlib.suppress(Exception):
            conn.channel().exchange_delete(events["exchange"])


class RunningConsumer:
    """An EventConsumer on a thread of the test process."""

    def __init__(self, notifier: Notifier) -> None:
        self.consumer = EventConsumer(notifier)
        self.ready = threading.Event()
        self.thread = threading.Thread(
            target=self.consumer.run, kwargs={"on_ready": self.ready.set}, daemon=True
        )

    def __enter__(self) -> RunningConsumer:
        self.thread.start()
        assert self.ready.wait(15), "the consumer did not start"
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.consumer.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the consumer did not stop"

    def wait_for(self, received: int, timeout: float = 15.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self.consumer.stats.received < received:
            assert time.monotonic() < deadline, f"consumer stats: {self.consumer.stats}"
            time.sleep(0.02)


@pytest.fixture
def events_run(services: None) -> Iterator[dict[str, Any]]:  # noqa: F811
    table = events_settings(uuid.uuid4().hex[:10])
    yield table
    delete_broker_objects(table)


@pytest.fixture
def server(smtp: LoopbackSMTPServer) -> Iterator[LoopbackSMTPServer]:  # noqa: F811
    smtp.clear()
    yield smtp
    smtp.clear()
