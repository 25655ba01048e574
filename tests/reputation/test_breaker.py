"""The sender-fault breaker: a burst of 5.7.26 refusals from one tenant's SMTP server
pauses that tenant's email, and nothing else."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tenant_notify import Notifier
from tenant_notify.config import BreakerSettings
from tenant_notify.errors import PermanentDeliveryError, TenantPausedError
from tenant_notify.log import capture_logs
from tenant_notify.models import Channel, DeliveryState
from tenant_notify.reputation import Breaker, MemoryReputationStore
from tenant_notify.testing import get_outbox
from tests.smtp_server import LoopbackSMTPServer

DMARC_FAIL = (
    "550 5.7.26 This mail is unauthenticated, which poses a security risk to the sender "
    "and Gmail users"
)
THRESHOLD = 3


@pytest.fixture
def servers() -> Iterator[tuple[LoopbackSMTPServer, LoopbackSMTPServer]]:
    with LoopbackSMTPServer() as acme, LoopbackSMTPServer() as others:
        yield acme, others


def smtp(server: LoopbackSMTPServer) -> dict[str, Any]:
    return {"provider": "smtp", "host": server.host, "port": server.port, "timeout": 5}


def make_notify(
    acme_server: LoopbackSMTPServer,
    others: LoopbackSMTPServer,
    *,
    cooldown: float = 600.0,
    **options: Any,
) -> Notifier:
    tenants = {
        "acme": {"name": "Acme", "email_from": "orders@acme.test", "sms_from": "+15005550006"},
        "globex": {"name": "Globex", "email_from": "hello@globex.test"},
        "initech": {"name": "Initech", "email_from": "noreply@initech.test"},
    }
    tenants["acme"]["email"] = smtp(acme_server)
    return Notifier.from_settings(
        {
            "transport": "eager",
            "email": smtp(others),
            "sms": {"provider": "memory", "outbox": "breaker"},
            "tenants": tenants,
            "breaker": {"threshold": THRESHOLD, "window": 60, "cooldown": cooldown},
            "retry": {"max_attempts": 1},
        },
        **options,
    )


def send(notify: Notifier, tenant: str, n: int) -> Any:
    return notify.send_email(
        to_email=f"customer{n}@example.com", subject=f"Order {n}", body="Thanks", tenant_id=tenant
    )


def test_a_burst_of_5_7_26_pauses_that_tenants_email_only(
    servers: tuple[LoopbackSMTPServer, LoopbackSMTPServer],
) -> None:
    acme_server, others = servers
    # Exactly THRESHOLD refusals: were anything sent after the pause, it would arrive.
    acme_server.fail_next("DATA", DMARC_FAIL, times=THRESHOLD)
    registry = CollectorRegistry()
    rounds = 10
    failed: list[Any] = []
    paused = 0
    refused: TenantPausedError | None = None
    with make_notify(acme_server, others, metrics=registry) as notify, capture_logs() as logs:
        for n in range(rounds):
            try:
                failed.append(send(notify, "acme", n))
            except TenantPausedError as err:
                paused += 1
                refused = err
            send(notify, "globex", n)
            send(notify, "initech", n)
            notify.send_sms(to_phone="+15551234567", body=f"SMS {n}", tenant_id="acme")

        assert len(failed) == THRESHOLD and paused == rounds - THRESHOLD
        assert (
            refused is not None
            and refused.channel == "email"
            and "5.7.26" in (refused.reason or "")
        )
        for receipt in failed:
            status = receipt.status()
            assert status.state is DeliveryState.FAILED
            assert status.error_type == PermanentDeliveryError.__name__
        assert [p.tenant_id for p in notify.breaker.pauses()] == ["acme"]

    # The other tenants' sends in the same run all arrived; acme's SMS went out.
    assert acme_server.messages == []
    arrived = [m.mail_from for m in others.messages]
    assert sorted(arrived) == sorted(["hello@globex.test", "noreply@initech.test"] * rounds)
    assert len(get_outbox("breaker").sms) == rounds

    [line] = [e for e in logs if e["event"] == "tenant_paused"]
    assert line["log_level"] == "error" and line["tenant_id"] == "acme"
    assert line["channel"] == "email" and "5.7.26" in line["error"]
    value = registry.get_sample_value(
        "tenant_notify_sender_pauses_total", {"tenant_id": "acme", "channel": "email"}
    )
    assert value == 1.0


def test_recipient_errors_do_not_trip_the_breaker_and_are_not_suppressed_as_sender_faults(
    servers: tuple[LoopbackSMTPServer, LoopbackSMTPServer],
) -> None:
    acme_server, others = servers
    acme_server.fail_next("DATA", "550 5.6.0 message content rejected", times=THRESHOLD + 2)
    with make_notify(acme_server, others) as notify:
        for n in range(THRESHOLD + 2):
            assert send(notify, "acme", n).status().state is DeliveryState.FAILED
        assert notify.breaker.pauses() == []
        send(notify, "acme", 99)
    assert len(acme_server.messages) == 1


def test_a_sender_fault_does_not_suppress_the_recipient(
    servers: tuple[LoopbackSMTPServer, LoopbackSMTPServer],
) -> None:
    acme_server, others = servers
    acme_server.fail_next("DATA", DMARC_FAIL)
    with make_notify(acme_server, others) as notify:
        send(notify, "acme", 1)
        assert notify.suppressions.list("acme") == []
        send(notify, "acme", 1)
    assert len(acme_server.messages) == 1


def test_resume_lifts_the_pause(servers: tuple[LoopbackSMTPServer, LoopbackSMTPServer]) -> None:
    acme_server, others = servers
    acme_server.fail_next("DATA", DMARC_FAIL, times=THRESHOLD)
    with make_notify(acme_server, others) as notify:
        for n in range(THRESHOLD):
            send(notify, "acme", n)
        with pytest.raises(TenantPausedError):
            send(notify, "acme", 10)
        assert notify.breaker.resume("acme") == [Channel.EMAIL]
        assert notify.breaker.resume("acme") == []
        send(notify, "acme", 11)
    assert len(acme_server.messages) == 1


def test_a_pause_ends_after_the_cooldown(
    servers: tuple[LoopbackSMTPServer, LoopbackSMTPServer],
) -> None:
    acme_server, others = servers
    acme_server.fail_next("DATA", DMARC_FAIL, times=THRESHOLD)
    with make_notify(acme_server, others, cooldown=0.3) as notify:
        for n in range(THRESHOLD):
            send(notify, "acme", n)
        with pytest.raises(TenantPausedError) as info:
            send(notify, "acme", 10)
        assert info.value.until is not None and info.value.until > dt.datetime.now(dt.UTC)
        time.sleep(0.4)
        send(notify, "acme", 11)
    assert len(acme_server.messages) == 1


def test_only_sender_faults_count() -> None:
    breaker = Breaker(MemoryReputationStore(), BreakerSettings(threshold=2))
    plain = PermanentDeliveryError("550 5.1.1 no such user", provider="smtp")
    fault = PermanentDeliveryError("550 5.7.26", provider="smtp", sender_fault=True)
    assert breaker.record(plain, "acme", Channel.EMAIL) is None
    assert breaker.record(plain, "acme", Channel.EMAIL) is None
    assert breaker.record(fault, "acme", Channel.EMAIL) is None
    pause = breaker.record(fault, "acme", Channel.EMAIL)
    assert pause is not None and pause.faults == 2
    disabled = Breaker(MemoryReputationStore(), BreakerSettings(threshold=1, enabled=False))
    assert disabled.record(fault, "acme", Channel.EMAIL) is None
