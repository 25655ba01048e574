"""In-process scheduling: deliveries at once, tenants in turn, urgent kinds first.

Against a loopback Postmark API that answers after a delay: what the server
sees (requests answered at the same moment, order of arrival) is what is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import DeliveryState, Notifier
from tests.http_fakes import FakeProviderAPI

TOKEN = "pm-server-token"
TENANTS = {
    "acme": {"name": "Acme", "email_from": "orders@acme.test"},
    "globex": {"name": "Globex", "email_from": "hello@globex.test"},
}


@pytest.fixture
def api() -> Iterator[FakeProviderAPI]:
    with FakeProviderAPI() as server:
        server.postmark_tokens.add(TOKEN)
        yield server


def notifier(api: FakeProviderAPI, workers: int, **more: Any) -> Notifier:
    return Notifier.from_settings(
        {
            "transport": {"backend": "inprocess", "workers": workers},
            "email": {"provider": "postmark", "server_token": TOKEN, "base_url": api.url},
            "tenants": TENANTS,
            **more,
        }
    )


def send(notify: Notifier, tenant: str, count: int, tag: str) -> list[Any]:
    return [
        notify.send_email(to_email=f"{tag}{i}@example.com", subject="s", body="b", tenant_id=tenant)
        for i in range(count)
    ]


def sender(request: Any) -> str:
    return "acme" if "acme.test" in request.json["From"] else "globex"


def test_n_workers_deliver_n_at_once_on_as_many_connections(api):
    api.hold_until = 24  # no reply until 24 requests are open at once
    # More than the HTTP provider's old fixed pool of 20: the pool follows the workers.
    with notifier(api, workers=24) as notify:
        receipts = send(notify, "acme", 72, "u")
        assert all(r.wait(60).state is DeliveryState.SENT for r in receipts)
    assert api.max_in_flight == 24
    assert api.connections <= 24


def test_a_tenant_queued_behind_a_backlog_is_served_in_turn(api):
    api.latency = 0.01
    with notifier(api, workers=2) as notify:
        backlog = send(notify, "acme", 150, "a")
        late = send(notify, "globex", 10, "b")
        assert all(r.wait(60).state is DeliveryState.SENT for r in backlog + late)
    order = [sender(request) for request in api.requests]
    last_b = max(i for i, who in enumerate(order) if who == "globex")
    first_b = order.index("globex")
    # Once B has notifications waiting it gets every other delivery: its ten
    # arrive within about twenty deliveries, long before A's backlog is done.
    assert last_b - first_b < 2 * len(late) + 4
    assert order[last_b + 1 :].count("acme") > 50


def test_urgent_kinds_overtake_their_own_tenants_bulk(api):
    api.latency = 0.01
    kinds = {"welcome": {"urgent": True}}
    with notifier(api, workers=1, kinds=kinds) as notify:
        bulk = send(notify, "acme", 60, "a")
        urgent = notify.send_welcome_email(
            user_email="new@example.com", user_name="New", tenant_id="acme"
        )
        assert urgent.wait(30).state is DeliveryState.SENT
        assert all(r.wait(60).state is DeliveryState.SENT for r in bulk)
    arrivals = [request.json["To"] for request in api.requests]
    position = next(i for i, to in enumerate(arrivals) if "new@example.com" in to)
    assert position < 10  # not 61st: ahead of the bulk still waiting when it came


def test_backlog_and_waiting_time_by_tenant_in_prometheus(api):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    api.hold_until = 2  # one worker: its first request waits at the server until released
    settings = {
        "transport": {"backend": "inprocess", "workers": 1},
        "email": {"provider": "postmark", "server_token": TOKEN, "base_url": api.url},
        "tenants": TENANTS,
    }
    with Notifier.from_settings(settings, metrics=registry) as notify:
        receipts = send(notify, "acme", 5, "a") + send(notify, "globex", 3, "b")
        # One worker, held at the server: the rest is waiting, by tenant.
        acme = registry.get_sample_value("tenant_notify_backlog", {"tenant_id": "acme"})
        globex = registry.get_sample_value("tenant_notify_backlog", {"tenant_id": "globex"})
        assert (acme, globex) in {(4.0, 3.0), (5.0, 3.0)}
        api.release()
        assert all(r.wait(60).state is DeliveryState.SENT for r in receipts)
    waited = registry.get_sample_value(
        "tenant_notify_queue_wait_seconds_count", {"tenant_id": "acme"}
    )
    assert waited == 5.0
    assert registry.get_sample_value("tenant_notify_backlog", {"tenant_id": "acme"}) is None
