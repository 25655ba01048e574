"""assert_sent and assert_not_sent, used directly."""

from __future__ import annotations

from typing import Any

import pytest

from tenant_notify.testing import assert_not_sent, assert_sent, make_notifier


@pytest.fixture
def notify(tenants: dict[str, Any]) -> Any:
    with make_notifier(tenants=tenants) as notifier:
        notifier.send_welcome_email(
            user_email="jane@example.com", user_name="Jane", tenant_id="acme"
        )
        notifier.send_sms(to_phone="+15551234567", body="Shipped", tenant_id="acme")
        yield notifier


def test_assert_sent_returns_the_one_match(notify: Any) -> None:
    email = assert_sent(notify.outbox, kind="welcome", to="JANE@example.com", tenant_id="acme")
    assert email.subject == "Welcome to Acme Shop"
    sms = assert_sent(notify.outbox, channel="sms")
    assert sms.body == "Shipped"


def test_assert_sent_lists_the_outbox_when_nothing_matches(notify: Any) -> None:
    with pytest.raises(AssertionError) as info:
        assert_sent(notify.outbox, kind="welcome", tenant_id="globex")
    assert str(info.value) == (
        "expected one message matching kind='welcome', tenant_id='globex', found none; "
        "the outbox 'default' holds 2 message(s):\n"
        "  1. email 'welcome' to jane@example.com for tenant 'acme': "
        "subject 'Welcome to Acme Shop'\n"
        "  2. sms 'sms' to +15551234567 for tenant 'acme': 'Shipped'"
    )


def test_assert_sent_refuses_several_matches(notify: Any) -> None:
    with pytest.raises(AssertionError, match="found 2;"):
        assert_sent(notify.outbox, tenant_id="acme")


def test_assert_sent_on_an_empty_outbox(notify: Any) -> None:
    notify.outbox.clear()
    with pytest.raises(AssertionError, match="the outbox 'default' is empty"):
        assert_sent(notify.outbox)


def test_assert_not_sent(notify: Any) -> None:
    assert_not_sent(notify.outbox, tenant_id="globex")
    assert_not_sent(notify.outbox, kind="order_confirmation")
    with pytest.raises(AssertionError, match="expected no message matching channel='sms'"):
        assert_not_sent(notify.outbox, channel="sms")
    with pytest.raises(AssertionError, match="matching any message, found 2"):
        assert_not_sent(notify.outbox)
