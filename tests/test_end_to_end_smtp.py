"""The whole pipeline into a real SMTP server on loopback, asserting on what it received."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tenant_notify import DeliveryState, Notifier
from tests.smtp_server import LoopbackSMTPServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer() as smtp:
        yield smtp


def smtp_settings(server: LoopbackSMTPServer, tenants: dict, **extra: object) -> dict:
    return {
        "transport": {"backend": "inprocess", "workers": 3},
        "email": {"provider": "smtp", "host": server.host, "port": server.port, "timeout": 5},
        "tenants": tenants,
        "retry": {"initial_delay": 0.05, "jitter": 0},
        **extra,
    }


def test_many_tenants_each_with_its_own_identity(server, tenants):
    with Notifier.from_settings(smtp_settings(server, tenants)) as notify:
        receipts = {}
        for i in range(60):
            tenant = ("acme", "globex")[i % 2]
            receipt = notify.send_order_confirmation(
                order_id=f"O-{i}",
                customer_email=f"customer{i}@example.com",
                order_total=Decimal("10.50") + i,
                currency="EUR",
                tenant_id=tenant,
                customer_name="Zoë Ünal",
            )
            receipts[receipt.id] = (tenant, i)
        statuses = {rid: notify.wait(rid, timeout=20) for rid in receipts}

    received = server.wait_for(60, timeout=20)
    assert len(received) == 60
    by_id = {}
    for message in received:
        assert all(byte < 128 for byte in message.raw), "the raw message must be 7-bit clean"
        parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
        by_id[parsed["X-Tenant-Notify-Id"]] = (message, parsed)
    assert set(by_id) == set(receipts), "each notification arrives exactly once"

    for rid, (tenant, i) in receipts.items():
        message, parsed = by_id[rid]
        assert list(message.rcpt_tos) == [f"customer{i}@example.com"]
        assert statuses[rid].state is DeliveryState.SENT
        assert statuses[rid].provider == "smtp"
        assert f"<{statuses[rid].provider_message_id}>" == parsed["Message-ID"]
        assert parsed.get_content_type() == "multipart/alternative"
        text = parsed.get_body(("plain",)).get_content()
        html = parsed.get_body(("html",)).get_content()
        assert "Zoë Ünal" in text and "Zoë Ünal" in html
        if tenant == "acme":
            assert message.mail_from == "orders@acme.test"
            assert str(parsed["From"]) == "Acme Shop <orders@acme.test>"
            assert f"O-{i}" in parsed["Subject"]
        else:
            assert message.mail_from == "hello@globex.test"
            assert str(parsed["From"]) == "Globex Café <hello@globex.test>"
            assert "Bestellung" in parsed["Subject"]
    # The workers kept their connections open instead of one per message.
    assert server.connections <= 3


def test_tenant_with_its_own_smtp_server(server, tenants):
    with LoopbackSMTPServer() as own:
        tenants["globex"]["email"] = {"host": own.host, "port": own.port}
        with Notifier.from_settings(smtp_settings(server, tenants)) as notify:
            notify.send_welcome_email(
                user_email="a@example.com", user_name="A", tenant_id="acme"
            ).wait(10)
            notify.send_welcome_email(
                user_email="b@example.com", user_name="B", tenant_id="globex"
            ).wait(10)
        assert [list(m.rcpt_tos) for m in server.messages] == [["a@example.com"]]
        assert [list(m.rcpt_tos) for m in own.messages] == [["b@example.com"]]


def test_4xx_is_retried_and_delivered_once(server, tenants):
    server.fail_next("DATA", "451 4.3.0 try again later")
    with Notifier.from_settings(smtp_settings(server, tenants)) as notify:
        receipt = notify.send_email(
            to_email="a@example.com", subject="Hi", body="b", tenant_id="acme"
        )
        status = receipt.wait(10)
    assert status.state is DeliveryState.SENT
    assert status.attempts == 2
    assert len(server.messages) == 1


def test_5xx_fails_with_the_servers_reason(server, tenants):
    server.reject_recipient("gone@example.com", "550 5.1.1 no such user")
    with Notifier.from_settings(smtp_settings(server, tenants)) as notify:
        status = notify.send_email(
            to_email="gone@example.com", subject="Hi", body="b", tenant_id="acme"
        ).wait(10)
    assert status.state is DeliveryState.FAILED
    assert status.attempts == 1
    assert "550" in status.error and "no such user" in status.error
    assert status.error_type == "PermanentDeliveryError"
    assert server.messages == []


def test_server_down_then_back(tenants):
    # A port with nothing listening: connection refused is transient, so the
    # notification waits in 'retrying' and goes out once the server is there.
    server = LoopbackSMTPServer().start()
    host, port = server.host, server.port
    server.stop()
    settings = smtp_settings(
        server,
        tenants,
        retry={"initial_delay": 0.2, "jitter": 0, "max_attempts": 20, "multiplier": 1},
    )
    settings["email"].update(host=host, port=port)
    with Notifier.from_settings(settings) as notify:
        receipt = notify.send_email(
            to_email="a@example.com", subject="Hi", body="b", tenant_id="acme"
        )
        deadline = time.monotonic() + 5
        while notify.status(receipt.id).state is not DeliveryState.RETRYING:
            assert time.monotonic() < deadline, "the refused connection must be retried"
            time.sleep(0.02)
        assert notify.status(receipt.id).error_type == "TransientDeliveryError"
        with LoopbackSMTPServer(port=port) as revived:
            status = receipt.wait(15)
            assert status.state is DeliveryState.SENT
            assert len(revived.messages) == 1
