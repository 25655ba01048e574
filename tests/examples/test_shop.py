"""The shop example (examples/shop), driven over HTTP with the pytest plugin's fixtures."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tenant_notify.models import DeliveryResult, Message
from tenant_notify.testing import (
    Outbox,
    ScriptedProvider,
    TestNotifier,
    assert_not_sent,
    assert_sent,
)

from .conftest import SHOP_DIR


def _load_shop() -> ModuleType:
    # By path, under a name of its own: examples/shop is not a package.
    spec = importlib.util.spec_from_file_location("tenant_notify_shop_example", SHOP_DIR / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


shop_app = _load_shop()

ACME_ADMIN = {"X-Tenant": "acme", "Authorization": "Bearer acme-admin-token"}
GLOBEX_ADMIN = {"X-Tenant": "globex", "Authorization": "Bearer globex-admin-token"}


@pytest.fixture
def make_shop(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(notifier: TestNotifier | None = None) -> TestClient:
        app = shop_app.create_app(notifier, database_url=f"sqlite:///{tmp_path}/shop.db")
        client = TestClient(app)
        client.__enter__()  # runs the lifespan
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def shop(make_shop: Callable[..., TestClient], tenant_notifier: TestNotifier) -> TestClient:
    return make_shop(tenant_notifier)


def register(shop: TestClient, tenant: str, email: str, name: str = "Jane") -> dict[str, Any]:
    response = shop.post(
        "/api/v1/users", json={"email": email, "name": name}, headers={"X-Tenant": tenant}
    )
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def as_user(tenant: str, user: dict[str, Any]) -> dict[str, str]:
    return {"X-Tenant": tenant, "Authorization": f"Bearer {user['token']}"}


def test_registering_sends_the_welcome_email_for_that_tenant(
    shop: TestClient, notify_outbox: Outbox
) -> None:
    register(shop, "acme", "jane@example.com", "Jane")

    email = assert_sent(notify_outbox, kind="welcome", to="jane@example.com", tenant_id="acme")
    assert "orders@acme.test" in str(email.from_addr)
    assert "Acme Shop" in str(email.from_addr)
    assert_not_sent(notify_outbox, tenant_id="globex")


def test_the_other_tenant_welcomes_with_its_own_identity(
    shop: TestClient, notify_outbox: Outbox
) -> None:
    register(shop, "globex", "jane@example.com")

    email = assert_sent(notify_outbox, kind="welcome", tenant_id="globex")
    assert "hello@globex.test" in str(email.from_addr)
    assert_not_sent(notify_outbox, tenant_id="acme")


def test_a_duplicate_registration_rolls_back_and_sends_nothing(
    shop: TestClient, notify_outbox: Outbox
) -> None:
    register(shop, "acme", "jane@example.com")
    notify_outbox.clear()

    response = shop.post(
        "/api/v1/users",
        json={"email": "jane@example.com", "name": "Jane again"},
        headers={"X-Tenant": "acme"},
    )

    assert response.status_code == 409
    assert_not_sent(notify_outbox)


def test_an_order_sends_the_order_confirmation(shop: TestClient, notify_outbox: Outbox) -> None:
    user = register(shop, "acme", "jane@example.com")

    response = shop.post(
        "/api/v1/orders",
        json={"lines": [{"sku": "mug", "quantity": 2}, {"sku": "poster", "quantity": 1}]},
        headers=as_user("acme", user),
    )

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["currency"] == "USD"
    assert order["total"] == "49.00"
    email = assert_sent(
        notify_outbox, kind="order_confirmation", to="jane@example.com", tenant_id="acme"
    )
    assert str(order["id"]) in email.subject
    assert "Poster" in email.text
    assert "orders@acme.test" in str(email.from_addr)


def test_an_order_rolled_back_for_lack_of_stock_sends_nothing(
    shop: TestClient, notify_outbox: Outbox
) -> None:
    user = register(shop, "acme", "jane@example.com")
    headers = as_user("acme", user)

    # Two posters, one in stock: the order and its lines are inserted and the
    # confirmation requested before the stock check fails and rolls it all back.
    response = shop.post(
        "/api/v1/orders",
        json={"lines": [{"sku": "mug", "quantity": 1}, {"sku": "poster", "quantity": 2}]},
        headers=headers,
    )

    assert response.status_code == 409
    assert "out of stock" in response.json()["detail"]
    assert_not_sent(notify_outbox, kind="order_confirmation")

    # Nothing of it was kept: all ten mugs and the poster are still there.
    response = shop.post(
        "/api/v1/orders",
        json={"lines": [{"sku": "mug", "quantity": 10}, {"sku": "poster", "quantity": 1}]},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    email = assert_sent(notify_outbox, kind="order_confirmation")
    assert str(response.json()["id"]) in email.subject


def test_orders_need_a_user_of_that_tenant(shop: TestClient, notify_outbox: Outbox) -> None:
    user = register(shop, "acme", "jane@example.com")
    notify_outbox.clear()
    order = {"lines": [{"sku": "mug", "quantity": 1}]}

    assert shop.post("/api/v1/orders", json=order, headers={"X-Tenant": "acme"}).status_code == 401
    assert (
        shop.post("/api/v1/orders", json=order, headers=as_user("globex", user)).status_code == 401
    )
    assert_not_sent(notify_outbox)


def test_the_test_email_is_for_admins_and_its_status_for_its_tenant(
    shop: TestClient, notify_outbox: Outbox
) -> None:
    user = register(shop, "acme", "jane@example.com")
    notify_outbox.clear()
    body = {"to_email": "ops@example.com", "subject": "Test", "body": "It works."}

    denied = shop.post("/api/v1/notifications/test/email", json=body, headers=as_user("acme", user))
    assert denied.status_code == 403
    anonymous = shop.post(
        "/api/v1/notifications/test/email", json=body, headers={"X-Tenant": "acme"}
    )
    assert anonymous.status_code == 401
    assert_not_sent(notify_outbox)

    accepted = shop.post("/api/v1/notifications/test/email", json=body, headers=ACME_ADMIN)
    assert accepted.status_code == 202, accepted.text
    task_id = accepted.json()["task_id"]
    email = assert_sent(notify_outbox, to="ops@example.com", tenant_id="acme")
    assert email.subject == "Test"

    status = shop.get(f"/api/v1/notifications/tasks/{task_id}", headers=ACME_ADMIN)
    assert status.status_code == 200
    assert status.json()["state"] == "sent"
    assert status.json()["attempts"] == 1
    # Any logged-in user of the tenant may read it; another tenant's admin may not.
    mine = shop.get(f"/api/v1/notifications/tasks/{task_id}", headers=as_user("acme", user))
    assert mine.status_code == 200
    theirs = shop.get(f"/api/v1/notifications/tasks/{task_id}", headers=GLOBEX_ADMIN)
    assert theirs.status_code == 404
    unknown = shop.get("/api/v1/notifications/tasks/no-such-task", headers=GLOBEX_ADMIN)
    assert unknown.status_code == 404
    assert theirs.json() == unknown.json()


def test_an_unknown_tenant_is_refused(shop: TestClient) -> None:
    response = shop.post(
        "/api/v1/users", json={"email": "a@example.com", "name": "A"}, headers={"X-Tenant": "nope"}
    )
    assert response.status_code == 404


class _HeldProvider(ScriptedProvider):
    """Delivers only once released: a slow mail server."""

    def __init__(self, outbox: str) -> None:
        super().__init__(outbox=outbox)
        self.release = threading.Event()

    def _run(self, message: Message) -> DeliveryResult:
        assert self.release.wait(timeout=10)
        return super()._run(message)


def test_sending_does_not_hold_up_the_request(
    make_shop: Callable[..., TestClient],
    notify_factory: Callable[..., TestNotifier],
    notify_outbox: Outbox,
) -> None:
    provider = _HeldProvider(outbox=notify_outbox.name)
    shop = make_shop(notify_factory(provider=provider, transport="inprocess"))

    # The mail server has not answered yet, and the registration is already done.
    user = register(shop, "acme", "jane@example.com")
    assert_not_sent(notify_outbox)

    assert shop.get("/api/v1/orders", headers=as_user("acme", user)).status_code == 405

    provider.release.set()
    notify_outbox.wait_for(1, timeout=10)
    assert_sent(notify_outbox, kind="welcome", to="jane@example.com", tenant_id="acme")


def test_the_shop_reads_its_settings_from_notify_toml_and_the_environment(
    make_shop: Callable[..., TestClient],
    notify_outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a deployment would: the shop's own notify.toml, with variables on top.
    monkeypatch.setenv("TENANT_NOTIFY_CONFIG_FILE", str(SHOP_DIR / "notify.toml"))
    monkeypatch.setenv("TENANT_NOTIFY_EMAIL", "memory")
    monkeypatch.setenv("TENANT_NOTIFY_TRANSPORT", "eager")
    shop = make_shop()

    register(shop, "globex", "jan@example.com", "Jan")

    email = assert_sent(notify_outbox, kind="welcome", to="jan@example.com", tenant_id="globex")
    assert "hello@globex.test" in str(email.from_addr)
