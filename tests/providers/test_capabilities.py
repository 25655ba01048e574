"""Declared capabilities: a send asking for what the tenant's provider lacks is refused at
the call (nothing queued), and failover only goes to providers that can send the message.
Real parts: aiosmtpd on loopback, the SendGrid fake."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from tenant_notify import (
    Attachment,
    EmailOptions,
    Notifier,
    UnsupportedFeatureError,
    ValidationError,
)
from tenant_notify.models import Channel, DeliveryState, Feature, Notification
from tenant_notify.providers.base import Capabilities
from tenant_notify.providers.memory import MemoryProvider
from tenant_notify.testing import ScriptedProvider, get_outbox, make_notifier
from tests.smtp_server import LoopbackSMTPServer

KEY = "SG.platform.a2V5"
TENANTS = {
    "acme": {"name": "Acme Shop", "email_from": "orders@acme.test", "sms_from": "+15005550006"}
}
PDF = Attachment(
    filename="invoice.pdf", content=b"%PDF-1.4 invoice", content_type="application/pdf"
)


class TextOnlyProvider(MemoryProvider):
    """A memory provider that declares nothing beyond subject and body."""

    name: ClassVar[str] = "textonly"
    capabilities: ClassVar[Capabilities] = Capabilities()


class SmallProvider(MemoryProvider):
    name: ClassVar[str] = "small"
    capabilities: ClassVar[Capabilities] = Capabilities(
        features=frozenset(Feature), max_message_bytes=1000, max_tags=1
    )


def smtp_settings(server: LoopbackSMTPServer, transport: str = "inprocess") -> dict[str, Any]:
    return {
        "transport": transport,
        "email": {"provider": "smtp", "host": server.host, "port": server.port, "timeout": 5},
        "tenants": TENANTS,
    }


@pytest.mark.parametrize(
    ("options", "feature"),
    [({"tags": ["spring"]}, "tags"), ({"metadata": {"order": "1"}}, "metadata")],
)
def test_smtp_refuses_tags_and_metadata_at_the_call_and_queues_nothing(options, feature) -> None:
    with LoopbackSMTPServer() as server, Notifier.from_settings(smtp_settings(server)) as notify:
        with pytest.raises(UnsupportedFeatureError) as info:
            notify.send_email(
                to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme", **options
            )
        assert len(notify.status_store) == 0
        notify.close()
        assert server.messages == [] and server.connections == 0
    err = info.value
    assert isinstance(err, ValidationError)
    assert (err.feature, err.provider, err.tenant_id) == (feature, "smtp", "acme")
    assert "smtp" in str(err) and feature in str(err)


def test_what_smtp_declares_it_sends(tmp_path) -> None:
    logo = Attachment(filename="logo.png", content=b"\x89PNG", inline=True, content_id="logo")
    with LoopbackSMTPServer() as server:
        with Notifier.from_settings(smtp_settings(server, "eager")) as notify:
            status = notify.send_email(
                to_email="jane@example.com",
                to_name="Jane Doe",
                subject="Hi",
                body="Hello",
                html_body='<p>Hi <img src="cid:logo"></p>',
                tenant_id="acme",
                cc=["carl@example.com"],
                bcc="audit@example.com",
                headers={"X-Campaign": "spring"},
                attachments=[PDF, logo],
            ).wait(5)
        assert status.state is DeliveryState.SENT
        [received] = server.wait_for(1)
    assert set(received.rcpt_tos) == {"jane@example.com", "carl@example.com", "audit@example.com"}
    parsed = received.message
    assert parsed["To"] == "Jane Doe <jane@example.com>"
    assert parsed["Cc"] == "carl@example.com"
    assert parsed["Bcc"] is None and b"audit@example.com" not in received.raw
    assert parsed["X-Campaign"] == "spring"
    names = {p.get_filename(): p for p in parsed.walk() if p.get_filename()}
    assert names["invoice.pdf"].get_content() == PDF.content
    assert names["logo.png"]["Content-ID"] == "<logo>"


def test_limits_are_refused_with_the_limit_named() -> None:
    provider = SmallProvider(outbox="small")
    with make_notifier(tenants=TENANTS, provider=provider) as notify:
        with pytest.raises(UnsupportedFeatureError, match="at most 1 tags") as info:
            notify.send_email(
                to_email="j@example.com", subject="s", body="b", tenant_id="acme", tags=["a", "b"]
            )
        assert info.value.feature == "tags"
        big = Attachment(filename="big.bin", content=bytes(800))
        with pytest.raises(UnsupportedFeatureError, match="1000 bytes") as info:
            notify.send_email(
                to_email="j@example.com", subject="s", body="b", tenant_id="acme", attachments=[big]
            )
        assert info.value.feature == "size"
        assert len(notify.status_store) == 0 and notify.outbox.messages == []


def test_email_options_on_an_sms_are_refused() -> None:
    with make_notifier(tenants=TENANTS) as notify, pytest.raises(ValidationError, match="email"):
        notify.send(
            "sms",
            tenant_id="acme",
            to="+15005550006",
            channel="sms",
            context={"body": "x"},
            cc="c@example.com",
        )


def test_order_confirmation_takes_an_invoice_and_the_name() -> None:
    with make_notifier(tenants=TENANTS) as notify:
        notify.send_order_confirmation(
            order_id="1042",
            customer_email="jane@example.com",
            customer_name="Jane Doe",
            order_total="12.50",
            currency="EUR",
            tenant_id="acme",
            attachments=[PDF],
        )
        [email] = notify.outbox.emails
    assert email.attachments == (PDF,)
    assert str(email.to[0]) == "Jane Doe <jane@example.com>"


def test_failover_skips_providers_that_cannot_send_the_message() -> None:
    primary = ScriptedProvider(then="transient", outbox="primary")
    settings = {
        "transport": "eager",
        "email": {
            "provider": primary,
            "fallback": [
                {"provider": f"{__name__}:TextOnlyProvider", "outbox": "textonly"},
                {"provider": "memory", "outbox": "full"},
            ],
        },
        "tenants": TENANTS,
        "retry": {"max_attempts": 1},
    }
    with Notifier.from_settings(settings) as notify:
        with_pdf = notify.send_email(
            to_email="j@example.com", subject="s", body="b", tenant_id="acme", attachments=[PDF]
        ).wait(1)
        plain = notify.send_email(
            to_email="k@example.com", subject="s", body="b", tenant_id="acme"
        ).wait(1)
    assert with_pdf.provider == "memory"
    assert [m.attachments for m in get_outbox("full").emails] == [(PDF,)]
    assert plain.provider == "textonly", "a message the text-only provider can send goes to it"


def test_a_worker_whose_provider_cannot_send_it_fails_the_delivery_instead_of_dropping_parts() -> (
    None
):
    # Checked at the call against one provider; by the time a worker delivers it,
    # the tenant's settings name SMTP: it fails, rather than going out without its tags.
    options = EmailOptions.build(tags=["spring"])
    notification = Notification(
        id="n-1",
        tenant_id="acme",
        kind="email",
        channel=Channel.EMAIL,
        to="jane@example.com",
        context={"subject": "s", "body": "b"},
        options=options,
    )
    with LoopbackSMTPServer() as server:
        with Notifier.from_settings(smtp_settings(server, "eager")) as notify:
            outcome = notify.dispatcher.deliver(notification)
        assert server.messages == []
    assert outcome.status is not None
    assert outcome.status.state is DeliveryState.FAILED
    assert outcome.status.error_type == "UnsupportedFeatureError"
    assert outcome.retry_in is None
