"""Lifecycle callbacks: signed per Standard Webhooks, retried, dead-lettered.

Every callback is checked by the receiver with the ``standardwebhooks`` package's
own verifier (tests/events/receiver.py); a request that does not verify is
answered 400 and fails the test.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import Channel, DeliveryState, DeliveryStatus, Notifier
from tenant_notify.config import load_settings
from tenant_notify.events.lifecycle import LifecycleEvents
from tenant_notify.tenants import StaticTenantResolver
from tests.events.receiver import SECRET, CallbackReceiver


def settings_for(url: str, **callbacks: Any) -> Any:
    return load_settings(
        {
            "tenants": {
                "acme": {
                    "name": "Acme Shop",
                    "email_from": "orders@acme.test",
                    "callbacks": {"url": url, "secret": SECRET},
                },
                "globex": {"name": "Globex", "email_from": "hello@globex.test"},
            },
            "events": {
                "callbacks": {"initial_delay": 0.05, "max_delay": 0.2, **callbacks},
            },
        }
    )


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as r:
        yield r


def lifecycle(settings: Any) -> LifecycleEvents:
    observer = LifecycleEvents.from_settings(settings, StaticTenantResolver(settings.tenants))
    assert observer is not None
    return observer


def status(state: DeliveryState, *, tenant: str = "acme", attempts: int = 1, **kw: Any) -> Any:
    base = DeliveryStatus(id="n-1", tenant_id=tenant, kind="welcome", channel=Channel.EMAIL)
    return base.evolve(state=state, attempts=attempts, **kw)


def test_each_transition_is_one_verified_callback(receiver: CallbackReceiver) -> None:
    observer = lifecycle(settings_for(receiver.url))
    observer.status_changed(status(DeliveryState.QUEUED, attempts=0))
    observer.status_changed(status(DeliveryState.SENDING))  # not in the default states
    observer.status_changed(status(DeliveryState.SENT, provider="smtp"))
    callbacks = receiver.wait_for(2)
    observer.close()
    assert all(c.verified for c in callbacks), [c.error for c in callbacks]
    assert sorted(c.type for c in callbacks) == ["notification.queued", "notification.sent"]
    sent = next(c for c in callbacks if c.type == "notification.sent")
    assert sent.payload["data"]["notification_id"] == "n-1"
    assert sent.payload["data"]["provider"] == "smtp"
    assert sent.headers["content-type"] == "application/json"
    assert len({c.headers["webhook-id"] for c in callbacks}) == 2
    assert len(receiver.requests) == 2


def test_a_receiver_answering_503_twice_gets_it_on_the_third_attempt(
    receiver: CallbackReceiver,
) -> None:
    receiver.fail_next(503, times=2)
    observer = lifecycle(settings_for(receiver.url))
    observer.status_changed(status(DeliveryState.SENT))
    attempts = receiver.wait_for(3)
    assert observer.drain(5)
    observer.close()
    assert [a.answered for a in attempts] == [503, 503, 204]
    assert all(a.verified for a in attempts)
    # One callback: the same id every time, so the receiver can drop repeats.
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert attempts[0].body == attempts[2].body
    assert attempts[2].at - attempts[0].at >= 0.05 * 0.8 + 0.1 * 0.8  # backed off
    assert list(observer.dead_letters) == []


def test_429_waits_as_long_as_retry_after_says(receiver: CallbackReceiver) -> None:
    receiver.fail_next(429, times=1, **{"Retry-After": "1"})
    observer = lifecycle(settings_for(receiver.url, max_delay=2))
    observer.status_changed(status(DeliveryState.SENT))
    first, second = receiver.wait_for(2, timeout=10)
    observer.close()
    assert second.at - first.at >= 0.95
    assert second.answered == 204


def test_a_refusing_receiver_gets_it_once_and_it_is_dead_lettered(
    receiver: CallbackReceiver,
) -> None:
    receiver.fail_next(410)
    observer = lifecycle(settings_for(receiver.url))
    observer.status_changed(status(DeliveryState.FAILED, error="550 <jane@example.com> unknown"))
    receiver.wait_for(1)
    assert observer.drain(5)
    observer.close()
    [dead] = observer.dead_letters
    assert (dead.tenant_id, dead.type, dead.attempts, dead.error) == (
        "acme",
        "notification.failed",
        1,
        "HTTP 410",
    )
    # The status's error quoted an address: the callback carries it masked.
    data = json.loads(dead.body)["data"]
    assert data["error"] == "550 <j***@example.com> unknown"
    assert len(receiver.requests) == 1


def test_an_unreachable_receiver_is_retried_then_dead_lettered() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    observer = lifecycle(settings_for(f"http://127.0.0.1:{port}/hook?token=s3cr3t", max_attempts=3))
    observer.status_changed(status(DeliveryState.SENT))
    deadline = time.monotonic() + 10
    while not observer.dead_letters and time.monotonic() < deadline:
        time.sleep(0.02)
    observer.close()
    [dead] = observer.dead_letters
    assert dead.attempts == 3
    assert "ConnectError" in dead.error
    assert dead.url == f"http://127.0.0.1:{port}/hook"  # the query may hold a token


def test_tenants_without_a_url_and_states_not_asked_for_get_nothing(
    receiver: CallbackReceiver,
) -> None:
    observer = lifecycle(settings_for(receiver.url, states=["failed"]))
    observer.status_changed(status(DeliveryState.SENT))
    observer.status_changed(status(DeliveryState.FAILED, tenant="globex"))
    observer.status_changed(status(DeliveryState.FAILED))
    [only] = receiver.wait_for(1)
    assert observer.drain(5)
    observer.close()
    assert only.type == "notification.failed" and only.payload["data"]["tenant_id"] == "acme"
    assert len(receiver.requests) == 1


def test_no_callbacks_configured_means_no_observer() -> None:
    settings = load_settings({"tenants": {"a": {"name": "A", "email_from": "a@a.test"}}})
    assert LifecycleEvents.from_settings(settings, StaticTenantResolver(settings.tenants)) is None


def test_a_secret_that_is_not_whsec_base64_fails_at_build_without_showing_it() -> None:
    from tenant_notify.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        Notifier.from_settings(
            {
                "tenants": {
                    "a": {
                        "name": "A",
                        "callbacks": {"url": "https://x.example/h", "secret": "whsec_!!!"},
                    }
                }
            }
        )
    assert "whsec_ followed by a base64 key" in str(caught.value)
    assert "!!!" not in str(caught.value)


# --- through a Notifier: every status change it records --------------------------------


def notifier_with(url: str, **events: Any) -> Notifier:
    return Notifier.from_settings(
        {
            "transport": "eager",
            "email": {
                "provider": "tenant_notify.testing:ScriptedProvider",
                "script": ["transient"],
                "outbox": "lifecycle",
            },
            "retry": {"initial_delay": 0, "jitter": 0},
            "tenants": {
                "acme": {
                    "name": "Acme Shop",
                    "email_from": "orders@acme.test",
                    "callbacks": {"url": url, "secret": SECRET},
                }
            },
            "events": {"callbacks": {"initial_delay": 0.05}, **events},
        }
    )


def test_a_notification_calls_back_queued_retrying_and_sent(receiver: CallbackReceiver) -> None:
    with notifier_with(
        receiver.url, callbacks={"initial_delay": 0.05, "states": ["queued", "retrying", "sent"]}
    ) as notify:
        receipt = notify.send_welcome_email(
            user_email="jane@example.com", user_name="Jane", tenant_id="acme"
        )
        callbacks = receiver.wait_for(3)
    assert all(c.verified for c in callbacks), [c.error for c in callbacks]
    assert sorted(c.type for c in callbacks) == [
        "notification.queued",
        "notification.retrying",
        "notification.sent",
    ]
    assert {c.payload["data"]["notification_id"] for c in callbacks} == {receipt.id}
    assert "jane" not in b"".join(c.body for c in callbacks).decode()


def test_a_bounce_applied_from_a_provider_webhook_is_called_back(
    receiver: CallbackReceiver,
) -> None:
    from tenant_notify.webhooks import DeliveryEvent, apply_event

    with notifier_with(receiver.url) as notify:
        receipt = notify.send_welcome_email(
            user_email="jane@example.com", user_name="Jane", tenant_id="acme"
        )
        receiver.wait_for(2)  # queued, sent
        event = DeliveryEvent(
            provider="scripted",
            event="bounce",
            state=DeliveryState.BOUNCED,
            notification_id=receipt.id,
            reason="550 mailbox unavailable",
        )
        assert apply_event(notify, event).applied
        callbacks = receiver.wait_for(3)
    bounced = [c for c in callbacks if c.type == "notification.bounced"]
    assert len(bounced) == 1 and bounced[0].verified
    assert bounced[0].payload["data"]["error"] == "scripted bounce: 550 mailbox unavailable"


def test_the_failure_rate_alert_is_a_log_line_a_metric_and_a_callback(
    receiver: CallbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    settings = {
        "transport": "eager",
        "email": {
            "provider": "tenant_notify.testing:ScriptedProvider",
            "then": "permanent",
            "outbox": "lifecycle",
        },
        "tenants": {
            "acme": {
                "name": "Acme",
                "email_from": "orders@acme.test",
                "callbacks": {"url": receiver.url, "secret": SECRET, "states": ["sent"]},
            }
        },
        "events": {"alerts": {"enabled": True, "failure_rate": 0.5, "min_outcomes": 4}},
    }
    with Notifier.from_settings(settings, metrics=registry) as notify:
        for i in range(6):
            notify.send_email(to_email=f"c{i}@example.com", subject="s", body="b", tenant_id="acme")
        [alert] = receiver.wait_for(1)
    assert alert.verified and alert.type == "alert.failure_rate"
    data = alert.payload["data"]
    assert (data["tenant_id"], data["channel"], data["outcomes"], data["failed"]) == (
        "acme",
        "email",
        4,
        4,
    )
    assert (
        registry.get_sample_value(
            "tenant_notify_failure_rate_alerts_total", {"tenant_id": "acme", "channel": "email"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "tenant_notify_failure_rate_alert_active", {"tenant_id": "acme", "channel": "email"}
        )
        == 1
    )
    assert "failure_rate_alert" in caplog.text
    assert len(receiver.requests) == 1  # once, not on every failure after the threshold


# --- on the broker: the lifecycle exchange and the callbacks' dead-letter queue -----------


@pytest.mark.integration
def test_lifecycle_events_go_to_the_exchange_with_state_routing_keys(
    services: None, receiver: CallbackReceiver
) -> None:
    import uuid

    import kombu

    from tests.integration.conftest import AMQP_URL

    run = uuid.uuid4().hex[:10]
    exchange_name, queue_name = f"tn_lc_{run}", f"tn_lc_{run}.sink"
    with kombu.Connection(AMQP_URL) as conn:
        exchange = kombu.Exchange(exchange_name, type="topic", durable=True)
        queue = kombu.Queue(queue_name, exchange, routing_key="notification.*", auto_delete=True)(
            conn.channel()
        )
        queue.declare()
        try:
            with notifier_with(
                receiver.url, broker_url=AMQP_URL, lifecycle_exchange=exchange_name
            ) as notify:
                receipt = notify.send_welcome_email(
                    user_email="jane@example.com", user_name="Jane", tenant_id="acme"
                )
                receiver.wait_for(2)  # queued, sent (retrying is not in the default states)
            deadline = time.monotonic() + 10
            got: list[Any] = []
            while len(got) < 2 and time.monotonic() < deadline:
                message = queue.get(no_ack=True)
                if message is None:
                    time.sleep(0.05)
                else:
                    got.append(message)
        finally:
            conn.channel().exchange_delete(exchange_name)
    keys = sorted(m.delivery_info["routing_key"] for m in got)
    assert keys == ["notification.queued", "notification.sent"]
    sent = json.loads(next(m.body for m in got if m.delivery_info["routing_key"].endswith("sent")))
    assert sent["type"] == "tenant_notify.notification.sent"
    assert sent["tenantid"] == "acme" and sent["data"]["notification_id"] == receipt.id
    # The same id as the callback's webhook-id: one event, two ways out.
    assert sent["id"] in {c.headers["webhook-id"] for c in receiver.requests}


@pytest.mark.integration
def test_a_dead_callback_goes_to_the_dead_letter_queue_with_its_reason(
    services: None, receiver: CallbackReceiver
) -> None:
    import uuid

    import kombu

    from tests.integration.conftest import AMQP_URL

    dead_queue = f"tn_lc_{uuid.uuid4().hex[:10]}.callbacks.dead"
    receiver.fail_next(400, times=5)
    try:
        with notifier_with(
            receiver.url, broker_url=AMQP_URL, callbacks={"dead_letter_queue": dead_queue}
        ) as notify:
            notify.send_welcome_email(
                user_email="jane@example.com", user_name="Jane", tenant_id="acme"
            )
            receiver.wait_for(2)
            assert notify.dispatcher.observer.drain(5)  # type: ignore[attr-defined]
        with kombu.Connection(AMQP_URL) as conn:
            queue = kombu.Queue(dead_queue, durable=True)(conn.channel())
            letters = [queue.get(no_ack=True) for _ in range(2)]
    finally:
        with kombu.Connection(AMQP_URL) as conn:
            conn.channel().queue_delete(dead_queue)
    assert all(letter is not None for letter in letters)
    reasons = {letter.headers["x-tenant-notify-reason"] for letter in letters}
    assert reasons == {"HTTP 400"}
    types = sorted(json.loads(letter.body)["type"] for letter in letters)
    assert types == ["notification.queued", "notification.sent"]
    assert {letter.headers["x-tenant-notify-tenant"] for letter in letters} == {"acme"}
