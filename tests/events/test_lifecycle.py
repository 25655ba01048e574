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
            {"tenants": {"a": {"name": "A", "callbacks": {"url": "https://x.example/h",
                                                           "secret": "whsec_!!!"}}}}
        )
    assert "whsec_ followed by a base64 key" in str(caught.value)
    assert "!!!" not in str(caught.value)
