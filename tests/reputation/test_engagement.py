"""Tracking in the provider's own terms, and its open and click events in the status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from tenant_notify import Notifier
from tenant_notify.errors import UnsupportedFeatureError
from tenant_notify.models import DeliveryState
from tests.http_fakes import FakeProviderAPI
from tests.reputation.support import router_client
from tests.webhooks.support import Signer

SG_KEY = "SG.test"
HTML = '<p>Your order: <a href="https://acme.test/o/1">view it</a></p>'


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.sendgrid_keys.add(SG_KEY)
    return fake_api


def make_notify(
    api: FakeProviderAPI, *, kinds: Any = None, metrics: Any = None, **acme: Any
) -> Notifier:
    return Notifier.from_settings(
        {
            "transport": "eager",
            "email": {"provider": "sendgrid", "api_key": SG_KEY, "base_url": api.url},
            "kinds": kinds or {},
            "tenants": {
                "acme": {"name": "Acme", "email_from": "orders@acme.test", **acme},
                "globex": {"name": "Globex", "email_from": "hello@globex.test"},
            },
        },
        metrics=metrics,
    )


def send(notify: Notifier, tenant: str = "acme") -> Any:
    return notify.send_email(
        to_email="jane@example.com", subject="Hi", body="Hello", html_body=HTML, tenant_id=tenant
    )


def tracking(api: FakeProviderAPI) -> dict[str, Any]:
    settings: dict[str, Any] = api.requests[-1].json["tracking_settings"]
    return settings


def test_sendgrid_tracks_in_its_own_terms_when_the_tenant_asks(api: FakeProviderAPI) -> None:
    with make_notify(api, track_opens=True, track_clicks=True) as notify:
        send(notify)
        assert tracking(api) == {
            "click_tracking": {"enable": True, "enable_text": False},
            "open_tracking": {"enable": True},
        }
        html = api.requests[-1].json["content"][1]["value"]
        assert html == HTML  # SendGrid rewrites it; the library adds nothing
        send(notify, tenant="globex")
        assert tracking(api) == {
            "click_tracking": {"enable": False, "enable_text": False},
            "open_tracking": {"enable": False},
        }


def test_a_kind_turns_click_tracking_off(api: FakeProviderAPI) -> None:
    kinds = {"email": {"track_clicks": False}}
    with make_notify(api, kinds=kinds, track_opens=True, track_clicks=True) as notify:
        send(notify)
    assert tracking(api)["click_tracking"]["enable"] is False
    assert tracking(api)["open_tracking"]["enable"] is True


def test_with_tracking_off_no_request_asks_for_it(api: FakeProviderAPI) -> None:
    with make_notify(api) as notify:
        for tenant in ("acme", "globex"):
            send(notify, tenant)
            notify.send_welcome_email(
                user_email="joe@example.com", user_name="Joe", tenant_id=tenant
            )
    assert len(api.requests) == 4
    for request in api.requests:
        settings = request.json["tracking_settings"]
        assert settings["click_tracking"]["enable"] is False
        assert settings["open_tracking"]["enable"] is False
        html = next(c["value"] for c in request.json["content"] if c["type"] == "text/html")
        assert "/notifications/track/" not in html


def test_tracking_the_library_cannot_do_is_refused_at_the_call() -> None:
    settings = {
        "transport": "eager",
        "email": {"provider": "smtp", "host": "127.0.0.1"},
        "tenants": {"acme": {"name": "Acme", "email_from": "o@acme.test", "track_opens": True}},
    }
    # SMTP tracks nothing itself, and without [links] the library cannot either.
    with Notifier.from_settings(settings) as notify, pytest.raises(UnsupportedFeatureError) as info:
        send(notify)
    assert info.value.feature == "track_opens" and info.value.tenant_id == "acme"


# --- engagement events -------------------------------------------------------------------


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def notify(api: FakeProviderAPI, registry: CollectorRegistry) -> Iterator[Notifier]:
    with make_notify(api, metrics=registry, track_opens=True, track_clicks=True) as notifier:
        yield notifier


@pytest.fixture
def client(notify: Notifier, signer: Signer) -> Iterator[TestClient]:
    with router_client(notify, {"sendgrid": signer.public_key}) as test_client:
        yield test_client


def test_sendgrid_open_and_click_events_show_up_as_engagement(
    api: FakeProviderAPI,
    notify: Notifier,
    client: TestClient,
    signer: Signer,
    registry: CollectorRegistry,
) -> None:
    receipt = send(notify)
    custom_args = api.requests[-1].json["custom_args"]
    now = int(time.time())
    events = [
        {"event": "delivered", "email": "jane@example.com", "timestamp": now, **custom_args},
        {"event": "open", "email": "jane@example.com", "timestamp": now + 5, **custom_args},
        {
            "event": "click",
            "email": "jane@example.com",
            "timestamp": now + 9,
            "url": "https://acme.test/o/1",
            **custom_args,
        },
        {"event": "open", "email": "jane@example.com", "timestamp": now + 60, **custom_args},
    ]
    body = json.dumps(events).encode()
    reply = client.post(
        "/api/notifications/webhooks/sendgrid/acme", content=body, headers=signer.headers(body)
    )
    assert reply.json() == {"events": 4, "applied": 4}

    status = notify.status(receipt.id)
    assert status.state is DeliveryState.DELIVERED  # engagement does not change the state
    engagement = status.engagement
    assert engagement is not None
    assert engagement.opens == 2
    assert engagement.first_opened_at is not None
    assert int(engagement.first_opened_at.timestamp()) == now + 5
    assert engagement.last_opened_at is not None
    assert int(engagement.last_opened_at.timestamp()) == now + 60
    [click] = engagement.clicks
    assert click.url == "https://acme.test/o/1" and int(click.at.timestamp()) == now + 9

    task = client.get(f"/api/notifications/tasks/{receipt.id}", headers={"X-Tenant": "acme"})
    assert task.json()["engagement"]["opens"] == 2
    labels = {"tenant_id": "acme", "kind": "email"}
    sample = "tenant_notify_engagement_events_total"
    assert registry.get_sample_value(sample, {**labels, "event": "opened"}) == 2.0
    assert registry.get_sample_value(sample, {**labels, "event": "clicked"}) == 1.0


def test_an_open_for_an_unknown_notification_records_nothing(
    notify: Notifier, client: TestClient, signer: Signer
) -> None:
    event = {"event": "open", "email": "x@example.com", "timestamp": int(time.time())}
    body = json.dumps([{**event, "notification_id": "nope", "tenant_id": "acme"}]).encode()
    reply = client.post(
        "/api/notifications/webhooks/sendgrid/acme", content=body, headers=signer.headers(body)
    )
    assert reply.json() == {"events": 1, "applied": 0}
