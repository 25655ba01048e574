"""The shop example (examples/shop) on the Celery transport, by configuration alone.

The same app as tests/examples/test_shop.py, given a notifier built from the
integration settings (celery transport, Redis stores) while a real worker process
delivers into the loopback SMTP server.
"""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tenant_notify import Notifier
from tests.examples.test_shop import _load_shop
from tests.integration.conftest import Worker
from tests.smtp_server import LoopbackSMTPServer

pytestmark = pytest.mark.integration


def received_for(smtp: LoopbackSMTPServer, address: str) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(m.raw, policy=email.policy.default)
        for m in smtp.messages
        if address in m.rcpt_tos
    ]


def test_the_shop_sends_after_commit_through_a_worker(
    worker: Worker, settings: dict[str, Any], smtp: LoopbackSMTPServer, tmp_path: Path
) -> None:
    shop = _load_shop()
    address = f"celery-shop-{tmp_path.name}@example.com"
    with Notifier.from_settings(settings) as notify:
        app = shop.create_app(notify, database_url=f"sqlite:///{tmp_path}/shop.db")
        with TestClient(app) as client:
            user = client.post(
                "/api/v1/users",
                json={"email": address, "name": "Cel"},
                headers={"X-Tenant": "acme"},
            )
            assert user.status_code == 201, user.text
            headers = {"X-Tenant": "acme", "Authorization": f"Bearer {user.json()['token']}"}
            order = client.post(
                "/api/v1/orders", headers=headers, json={"lines": [{"sku": "mug", "quantity": 1}]}
            )
            assert order.status_code == 201, order.text
            # Out of stock: rolled back, so its confirmation must never reach the worker.
            refused = client.post(
                "/api/v1/orders",
                headers=headers,
                json={"lines": [{"sku": "poster", "quantity": 5}]},
            )
            assert refused.status_code == 409

            smtp.wait_until(lambda: len(received_for(smtp, address)) >= 2, timeout=30)
            time.sleep(1.0)  # room for a wrongly sent third message to arrive
            subjects = sorted(m["Subject"] for m in received_for(smtp, address))
    assert len(subjects) == 2, subjects
    assert any(str(order.json()["id"]) in s for s in subjects)
    assert all("orders@acme.test" in m["From"] for m in received_for(smtp, address))
