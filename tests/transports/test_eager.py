"""The eager transport delivers (and retries) before the send returns."""

from __future__ import annotations

from tenant_notify import DeliveryState
from tenant_notify.dispatcher import Dispatcher
from tenant_notify.testing import ScriptedProvider, make_notifier
from tenant_notify.transports.eager import EagerTransport


def test_delivered_before_send_returns(tenants):
    with make_notifier(tenants=tenants) as notify:
        receipt = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="acme")
        assert notify.status(receipt.id).state is DeliveryState.SENT
        assert len(notify.outbox.sms) == 1


def test_retries_sleep_the_policy_delay(tenants):
    provider = ScriptedProvider(["transient", "transient"], retry_after=7)
    with make_notifier(
        tenants=tenants, provider=provider, retry={"initial_delay": 1, "multiplier": 2, "jitter": 0}
    ) as notify:
        sleeps: list[float] = []
        assert isinstance(notify.dispatcher, Dispatcher)
        notify.transport = EagerTransport(notify.dispatcher, sleep=sleeps.append)
        status = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="acme").wait(1)
    assert status.state is DeliveryState.SENT and status.attempts == 3
    assert sleeps == [7, 7]  # Retry-After is a floor over the 1s and 2s backoff
