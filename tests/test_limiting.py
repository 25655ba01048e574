"""Per-tenant limits ([limits], [tenants.<id>.limits]) in one process: memory counting."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tenant_notify import DeliveryState, RateLimitedError
from tenant_notify.errors import ConfigurationError, NotifyError
from tenant_notify.limiting import LimitSettings, TenantLimits
from tenant_notify.models import Channel
from tenant_notify.tenants import Tenant
from tenant_notify.testing import make_notifier


def send(notify, n: int, tenant: str = "acme", channel: str = "email"):
    receipts = []
    for i in range(n):
        if channel == "sms":
            receipts.append(
                notify.send_sms(to_phone="+14155550100", body=f"b{i}", tenant_id=tenant)
            )
        else:
            receipts.append(
                notify.send_email(
                    to_email=f"u{i}@example.com", subject=f"s{i}", body="b", tenant_id=tenant
                )
            )
    return receipts


def test_over_email_daily_raises_at_the_call_and_queues_nothing(tenants):
    with make_notifier(
        tenants=tenants, transport="inprocess", limits={"email_daily": 3, "on_limit": "raise"}
    ) as notify:
        receipts = send(notify, 3)
        with pytest.raises(RateLimitedError) as caught:
            send(notify, 1)
        for receipt in receipts:
            assert receipt.wait(5).state is DeliveryState.SENT
        deadline = time.monotonic() + 10
        while notify.transport.pending:  # the workers finish their bookkeeping
            assert time.monotonic() < deadline
            time.sleep(0.01)
    err = caught.value
    assert isinstance(err, NotifyError)
    assert (err.limit, err.channel, err.tenant_id) == ("email_daily", "email", "acme")
    # Until the next UTC midnight.
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    assert abs(err.retry_after - (midnight - now).total_seconds()) < 60
    assert len(notify.outbox) == 3


def test_a_refused_send_leaves_no_status_behind(tenants):
    with make_notifier(tenants=tenants, limits={"email_daily": 1}) as notify:
        send(notify, 1)
        before = len(notify.status_store)
        with pytest.raises(RateLimitedError):
            send(notify, 1)
        assert len(notify.status_store) == before


def test_limits_are_per_tenant_and_per_channel(tenants):
    tenants["acme"]["sms_from"] = "+14155550123"
    tenants["globex"]["sms_from"] = "+14155550124"
    with make_notifier(tenants=tenants, limits={"email_daily": 2, "sms_daily": 1}) as notify:
        send(notify, 2, "acme")
        send(notify, 2, "globex")  # its own count
        send(notify, 1, "acme", "sms")  # its own channel
        with pytest.raises(RateLimitedError, match="email_daily"):
            send(notify, 1, "acme")
        with pytest.raises(RateLimitedError) as caught:
            send(notify, 1, "acme", "sms")
        assert caught.value.limit == "sms_daily"


def test_a_tenant_table_overrides_the_global_one_key_by_key(tenants):
    tenants["acme"]["limits"] = {"email_daily": 5}
    with make_notifier(tenants=tenants, limits={"email": "2/hour", "email_daily": 1}) as notify:
        send(notify, 1, "globex")
        with pytest.raises(RateLimitedError, match="email_daily"):
            send(notify, 1, "globex")
        # acme: its own cap of 5, the global rate of 2 an hour still holds.
        send(notify, 2, "acme")
        with pytest.raises(RateLimitedError) as caught:
            send(notify, 1, "acme")
    assert caught.value.limit == "email"
    assert 3000 < caught.value.retry_after <= 3600


def test_rate_refusal_says_when_the_next_send_passes(tenants):
    with make_notifier(tenants=tenants, limits={"email": "2/second"}) as notify:
        send(notify, 2)
        with pytest.raises(RateLimitedError) as caught:
            send(notify, 1)
        assert 0 < caught.value.retry_after <= 1.0
        deadline = time.monotonic() + 10
        while True:  # the window moves on; the limit lets a send through again
            try:
                send(notify, 1)
                break
            except RateLimitedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_delay_queues_and_delivers_at_the_rate_without_failing(tenants):
    with make_notifier(
        tenants=tenants,
        transport="inprocess",
        limits={"email": "3/second", "on_limit": "delay"},
    ) as notify:
        receipts = send(notify, 9)  # nothing raised: all queued
        statuses = [receipt.wait(30) for receipt in receipts]
    assert [s.state for s in statuses] == [DeliveryState.SENT] * 9
    # A deferral is no attempt: each went out on its first.
    assert {s.attempts for s in statuses} == {1}
    sent = sorted(s.updated_at.timestamp() for s in statuses)
    # Never more than 3 within any one second.
    for i in range(len(sent) - 3):
        assert sent[i + 3] - sent[i] >= 0.9, [round(t - sent[0], 3) for t in sent]
    assert sent[-1] - sent[0] >= 1.8


def test_delay_past_a_daily_cap_waits_instead_of_failing(tenants):
    with make_notifier(
        tenants=tenants,
        transport="inprocess",
        limits={"email_daily": 2, "on_limit": "delay"},
    ) as notify:
        receipts = send(notify, 3)
        # Any two of the three (the workers take them in parallel) go out; the
        # third waits for the cap, queued, in the transport's hands.
        deadline = time.monotonic() + 10
        while True:
            states = {r.id: notify.status(r.id).state for r in receipts}
            settled = sorted(states.values()) == sorted(
                [DeliveryState.SENT, DeliveryState.SENT, DeliveryState.QUEUED]
            )
            if (settled and notify.transport.pending == 1) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert sorted(states.values()) == sorted(
            [DeliveryState.SENT, DeliveryState.SENT, DeliveryState.QUEUED]
        )
        assert notify.transport.pending == 1
        [waiting] = [i for i, state in states.items() if state is DeliveryState.QUEUED]
        notify.close(timeout=0.5)
    # Closed before the next UTC day: settled as failed, never dropped.
    assert notify.status(waiting).state is DeliveryState.FAILED


def test_bad_rates_fail_when_the_notifier_is_built(tenants):
    with pytest.raises(ConfigurationError) as caught:
        make_notifier(tenants=tenants, limits={"email": "5/fortnight"})
    assert caught.value.key == "limits.email"
    tenants["acme"]["limits"] = {"sms_daily": -1}
    with pytest.raises(ConfigurationError) as caught:
        make_notifier(tenants=tenants)
    assert caught.value.key == "tenants.acme.limits.sms_daily"
    with pytest.raises(ConfigurationError) as caught:
        make_notifier(tenants=tenants | {"acme": {"name": "A", "limits": {"on_limit": "drop"}}})
    assert caught.value.key == "tenants.acme.limits.on_limit"


def test_tenant_limits_report_usage():
    limits = TenantLimits(LimitSettings(email="10/minute", email_daily=100))
    tenant = Tenant(id="acme", name="Acme")
    for _ in range(4):
        limits.check_call(tenant, Channel.EMAIL)
    usage = limits.usage(tenant, Channel.EMAIL)
    assert usage == {
        "on_limit": "raise",
        "rate": "10/minute",
        "rate_remaining": 6,
        "daily": 100,
        "daily_used": 4,
    }


def test_refusals_and_delays_are_counted_by_tenant_channel_and_limit(tenants):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    tenants["globex"]["limits"] = {"on_limit": "delay"}
    with make_notifier(
        tenants=tenants, transport="inprocess", metrics=registry, limits={"email_daily": 1}
    ) as notify:
        send(notify, 1, "acme")
        with pytest.raises(RateLimitedError):
            send(notify, 1, "acme")
        receipts = send(notify, 2, "globex")
        assert receipts[0].wait(10).state is DeliveryState.SENT
        deadline = time.monotonic() + 10
        labels = {"tenant_id": "globex", "channel": "email", "limit": "email_daily"}
        while not registry.get_sample_value(
            "tenant_notify_rate_limited_total", {**labels, "action": "delayed"}
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        notify.close(timeout=0.2)
    raised = {"tenant_id": "acme", "channel": "email", "limit": "email_daily", "action": "raised"}
    assert registry.get_sample_value("tenant_notify_rate_limited_total", raised) == 1


def test_the_cli_lists_each_limited_tenant_channel(tmp_path, capsys):
    from tenant_notify.cli import main

    config = tmp_path / "notify.toml"
    config.write_text(
        'transport = "eager"\nemail = "console"\n[limits]\nemail = "100/minute"\n'
        '[tenants.acme]\nname = "Acme"\nemail_from = "orders@acme.test"\n'
        '[tenants.globex]\nname = "Globex"\nemail_from = "hello@globex.test"\n'
        '[tenants.globex.limits]\nemail_daily = 5\non_limit = "delay"\n',
        encoding="utf-8",
    )
    assert main(["limits", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    assert ["acme", "email", "raise", "100/minute", "100", "-", "-"] in rows
    assert ["globex", "email", "delay", "100/minute", "100", "5", "0"] in rows
    assert "2 limited tenant channel(s)" in out
    assert "0 paused provider account(s)" in out
    assert main(["limits", "globex", "--config", str(config)]) == 0
    assert "1 limited tenant channel(s)" in capsys.readouterr().out
