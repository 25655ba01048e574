"""The event consumer against the real RabbitMQ, fed by a plain kombu publisher.

The evidence is what the loopback SMTP server received and what lands in the
dead-letter queue: one email per event with the tenant's identity, however often
the event is published or redelivered; a bad event in the dead-letter queue
with its reason, no recipient in clear.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tenant_notify import Notifier
from tenant_notify.events import DEAD_ERROR_HEADER, DEAD_REASON_HEADER
from tenant_notify.events.publisher import UnroutableError
from tests.events.conftest import (
    ORDER_CREATED,
    SIGNED_UP,
    DeadLetters,
    Publisher,
    RunningConsumer,
    cloudevent,
    order_data,
)
from tests.integration.conftest import ROOT, Worker
from tests.smtp_server import LoopbackSMTPServer

pytestmark = pytest.mark.integration

TENANTS = {
    "acme": {"name": "Acme Shop", "email_from": "Acme Shop <orders@acme.test>"},
    "globex": {"name": "Globex Café", "email_from": "hello@globex.test", "locale": "de"},
}


def eager_settings(events: dict[str, Any], smtp_port: int) -> dict[str, Any]:
    return {
        "transport": "eager",
        "email": {"provider": "smtp", "host": "127.0.0.1", "port": smtp_port, "timeout": 5},
        "tenants": TENANTS,
        "events": events,
    }


@pytest.fixture
def notify(events_run: dict[str, Any], server: LoopbackSMTPServer) -> Iterator[Notifier]:
    with Notifier.from_settings(eager_settings(events_run, server.port)) as notifier:
        yield notifier


@pytest.fixture
def publisher(events_run: dict[str, Any]) -> Iterator[Publisher]:
    p = Publisher(events_run["exchange"])
    yield p
    p.close()


@pytest.fixture
def dead(events_run: dict[str, Any]) -> Iterator[DeadLetters]:
    d = DeadLetters(events_run["dead_letter_queue"])
    yield d
    d.close()


def settle(server: LoopbackSMTPServer, count: int) -> list[Any]:
    """Wait for ``count`` messages, then a little longer: no more may follow."""
    server.wait_for(count, timeout=15)
    time.sleep(0.5)
    return server.messages


def test_an_order_created_event_sends_one_confirmation_with_the_tenants_identity(
    notify: Notifier, publisher: Publisher, server: LoopbackSMTPServer
) -> None:
    with RunningConsumer(notify) as running:
        publisher.publish(cloudevent(id="order-created-1"))
        running.wait_for(1)
        [received] = settle(server, 1)
    message = received.message
    assert received.rcpt_tos == ("jane@example.com",)
    assert message["From"] == "Acme Shop <orders@acme.test>"
    assert message["Subject"] == "Order confirmation A-1001 \N{EN DASH} Acme Shop"
    body = message.get_body(("plain",)).get_content()
    assert "Hello Jane Doe," in body
    assert "59.90" in body
    assert running.consumer.stats.acked == 1


def test_an_event_published_three_times_sends_one_email(
    notify: Notifier, publisher: Publisher, server: LoopbackSMTPServer
) -> None:
    event = cloudevent(id="order-created-thrice")
    with RunningConsumer(notify) as running:
        for _ in range(3):
            publisher.publish(event)
        running.wait_for(3)
        messages = settle(server, 1)
    assert len(messages) == 1
    assert running.consumer.stats.acked == 3
    assert running.consumer.stats.duplicates == 2


def test_the_same_id_from_another_source_is_another_event(
    notify: Notifier, publisher: Publisher, server: LoopbackSMTPServer
) -> None:
    with RunningConsumer(notify) as running:
        publisher.publish(cloudevent(id="1", source="/shop/eu"))
        publisher.publish(cloudevent(id="1", source="/shop/us", data=order_data(order_id="U-1")))
        running.wait_for(2)
        messages = settle(server, 2)
    assert sorted(m.message["Subject"].split()[2] for m in messages) == ["A-1001", "U-1"]


def test_each_event_goes_to_its_own_tenant(
    notify: Notifier, publisher: Publisher, server: LoopbackSMTPServer
) -> None:
    with RunningConsumer(notify) as running:
        publisher.publish(
            cloudevent(SIGNED_UP, {"email": "max@example.com", "name": "Max"}, tenant="globex")
        )
        running.wait_for(1)
        [received] = settle(server, 1)
    assert received.message["From"] == "Globex Café <hello@globex.test>"
    assert received.rcpt_tos == ("max@example.com",)


def test_a_schema_invalid_event_is_dead_lettered_with_its_reason(
    notify: Notifier, publisher: Publisher, dead: DeadLetters, server: LoopbackSMTPServer
) -> None:
    event = cloudevent(id="bad-total", data=order_data(total=-5))
    with RunningConsumer(notify) as running:
        publisher.publish(event)
        running.wait_for(1)
        letter = dead.get()
    assert letter.headers[DEAD_REASON_HEADER] == "schema"
    assert "data.total" in letter.headers[DEAD_ERROR_HEADER]
    assert "minimum" in letter.headers[DEAD_ERROR_HEADER]
    assert letter.headers["x-tenant-notify-routing-key"] == ORDER_CREATED
    # The event itself is kept as it was, for a replay once the producer is fixed.
    assert letter.body.encode() == Publisher.body_of(event)
    assert running.consumer.stats.dead_lettered == 1
    assert server.messages == []


def test_a_dead_letter_header_shows_no_recipient_in_clear(
    notify: Notifier, publisher: Publisher, dead: DeadLetters, server: LoopbackSMTPServer
) -> None:
    # Passes the schema's format check ("@" in it), refused by the Notifier.
    event = cloudevent(id="bad-address", data=order_data(customer_email="jane doe@exa mple.com"))
    with RunningConsumer(notify) as running:
        publisher.publish(event)
        running.wait_for(1)
        letter = dead.get()
    assert letter.headers[DEAD_REASON_HEADER] == "rejected"
    headers = repr(letter.headers)
    assert "InvalidRecipientError" in headers
    assert "jane doe@" not in headers and "jane" not in headers
    assert server.messages == []


def test_a_mapped_event_for_an_unknown_tenant_is_dead_lettered(
    notify: Notifier, publisher: Publisher, dead: DeadLetters, server: LoopbackSMTPServer
) -> None:
    with RunningConsumer(notify) as running:
        publisher.publish(cloudevent(id="no-such-tenant", tenant="initrode"))
        running.wait_for(1)
        letter = dead.get()
    assert letter.headers[DEAD_REASON_HEADER] == "unknown_tenant"
    assert "initrode" in letter.headers[DEAD_ERROR_HEADER]
    assert server.messages == []


def test_events_that_are_not_cloudevents_are_dead_lettered(
    notify: Notifier, publisher: Publisher, dead: DeadLetters
) -> None:
    no_id = cloudevent()
    del no_id["id"]
    with RunningConsumer(notify) as running:
        publisher.publish(b"{not json", routing_key=ORDER_CREATED)
        publisher.publish(no_id)
        publisher.publish(cloudevent(tenant=None))
        running.wait_for(3)
        letters = [dead.get() for _ in range(3)]
    errors = [(m.headers[DEAD_REASON_HEADER], m.headers[DEAD_ERROR_HEADER]) for m in letters]
    assert errors[0][0] == "invalid" and "not JSON" in errors[0][1]
    assert errors[1][0] == "invalid" and "id missing" in errors[1][1]
    assert errors[2][0] == "invalid" and "tenantid" in errors[2][1]


def test_an_unmapped_event_is_dead_lettered(
    events_run: dict[str, Any],
    server: LoopbackSMTPServer,
    publisher: Publisher,
    dead: DeadLetters,
) -> None:
    settings = eager_settings({**events_run, "routing_keys": ["com.example.#"]}, server.port)
    with Notifier.from_settings(settings) as notify, RunningConsumer(notify) as running:
        publisher.publish(cloudevent("com.example.order.refunded", {"order_id": "A-1"}))
        running.wait_for(1)
        letter = dead.get()
    assert letter.headers[DEAD_REASON_HEADER] == "unmapped"
    assert "com.example.order.refunded" in letter.headers[DEAD_ERROR_HEADER]


def test_only_the_rules_types_are_bound_by_default(
    notify: Notifier, publisher: Publisher, dead: DeadLetters, server: LoopbackSMTPServer
) -> None:
    with RunningConsumer(notify) as running:
        publisher.publish(cloudevent("com.example.order.refunded", {"order_id": "A-1"}))
        publisher.publish(cloudevent(id="after-the-unbound-one"))
        running.wait_for(1)
        settle(server, 1)
    assert running.consumer.stats.received == 1
    assert dead.empty()


# --- the Celery transport: Redis idempotency across consumer processes -------------------


def consumer_config(tmp: Path, settings: dict[str, Any], events: dict[str, Any]) -> Path:
    table = {**settings, "events": events}
    table["celery"] = {**settings["celery"], "publisher_confirms": "sync"}
    path = tmp / "consumer.yaml"
    path.write_text(yaml.safe_dump(table), encoding="utf-8")
    return path


def run_consumer(
    config: Path, *args: str, script: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    command = [sys.executable, script] if script else [sys.executable, "-m", "tenant_notify.cli"]
    return subprocess.run(
        [*command, "events", "consume", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_an_event_redelivered_after_the_consumer_is_killed_sends_once(
    settings: dict[str, Any],
    worker: Worker,
    smtp: LoopbackSMTPServer,
    events_run: dict[str, Any],
    publisher: Publisher,
    tmp_path: Path,
) -> None:
    smtp.clear()
    config = consumer_config(tmp_path, settings, events_run)
    event = cloudevent(id="killed-before-ack", data=order_data(order_id="K-1"))
    # Declare the queue (a consumer that stops at once), then publish the event
    # three times, as a producer retrying its own publish would.
    first = run_consumer(config, "--idle-timeout", "0")
    assert first.returncode == 0, first.stderr
    for _ in range(3):
        publisher.publish(event)

    # Dies by SIGKILL at its first acknowledgement: the notification is queued
    # on the Celery queue, the broker never hears that the event was handled.
    killed = run_consumer(config, script=str(Path(__file__).with_name("die_before_ack.py")))
    assert killed.returncode == -9, killed.stderr

    survivor = run_consumer(config, "--idle-timeout", "2")
    assert survivor.returncode == 0, survivor.stderr
    assert "3 event(s): 3 applied (3 notification(s), 3 seen before)" in survivor.stdout

    [received] = settle(smtp, 1)
    assert received.message["Subject"].startswith("Order confirmation K-1 ")
    assert received.message["From"] == "Acme Shop <orders@acme.test>"


def test_publish_event_on_celery_is_confirmed_and_consumed(
    settings: dict[str, Any],
    worker: Worker,
    smtp: LoopbackSMTPServer,
    events_run: dict[str, Any],
) -> None:
    smtp.clear()
    with Notifier.from_settings({**settings, "events": events_run}) as notify:
        with RunningConsumer(notify) as running:
            published = notify.publish_event(
                ORDER_CREATED, order_data(order_id="P-1"), tenant_id="acme", id="p-1"
            )
            again = notify.publish_event(
                ORDER_CREATED, order_data(order_id="P-1"), tenant_id="acme", id="p-1"
            )
            running.wait_for(2)
        with pytest.raises(UnroutableError, match="no queue is bound"):
            notify.publish_event("com.example.nobody.listens", {}, tenant_id="acme")
    assert published.published and published.receipts == ()
    assert (published.id, again.id) == ("p-1", "p-1")
    [received] = settle(smtp, 1)
    assert received.message["Subject"].startswith("Order confirmation P-1 ")


def test_the_consumer_declares_durable_queues_of_its_own_names(
    events_run: dict[str, Any], notify: Notifier
) -> None:
    import kombu

    with RunningConsumer(notify):
        pass
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
        channel = conn.channel()
        for name in (events_run["queue"], events_run["dead_letter_queue"]):
            # passive: fails unless it exists; durable=True must match its declaration
            kombu.Queue(name, durable=True)(channel).queue_declare(passive=True)
