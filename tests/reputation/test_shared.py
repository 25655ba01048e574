"""On shared (Redis) stores the caller never waits on Redis for reputation: the delivery
side holds a suppressed or paused notification without a provider call, and what one
process records holds for every other."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import Notifier
from tenant_notify.errors import RecipientSuppressedError, TenantPausedError
from tenant_notify.models import Channel, DeliveryState
from tenant_notify.reputation import Pause
from tenant_notify.reputation.redis import RedisReputationStore
from tenant_notify.stores.redis import RedisIdempotencyStore, RedisStatusStore
from tests.smtp_server import LoopbackSMTPServer


@pytest.fixture
def smtp() -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer() as server:
        yield server


@pytest.fixture
def settings(smtp: LoopbackSMTPServer, redis_prefix: tuple[Any, str]) -> dict[str, Any]:
    _, prefix = redis_prefix
    return {
        "transport": "eager",
        "email": {"provider": "smtp", "host": smtp.host, "port": smtp.port, "timeout": 5},
        "redis": {"url": "redis://127.0.0.1:6379/15", "key_prefix": prefix},
        "tenants": {
            "acme": {"name": "Acme", "email_from": "orders@acme.test"},
            "globex": {"name": "Globex", "email_from": "hello@globex.test"},
        },
    }


def on_redis(settings: dict[str, Any], client: Any) -> Notifier:
    """A notifier on the Redis stores, as the celery transport's are, delivering inline."""
    from tenant_notify import load_settings

    loaded = load_settings(settings)
    return Notifier(
        loaded,
        status_store=RedisStatusStore.from_settings(loaded, client),
        idempotency_store=RedisIdempotencyStore.from_settings(loaded, client),
    )


def test_a_suppressed_recipient_ends_suppressed_without_a_provider_call(
    settings: dict[str, Any], redis_prefix: tuple[Any, str], smtp: LoopbackSMTPServer
) -> None:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/15", decode_responses=True)
    with on_redis(settings, client) as web, on_redis(settings, client) as worker:
        assert isinstance(web.reputation.store, RedisReputationStore)
        # The "web process" records it; the "worker" (another notifier) holds the send.
        web.suppressions.add("acme", "jane@example.com", reason="complaint")
        receipt = worker.send_email(
            to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme"
        )  # no RecipientSuppressedError at the call: that would wait on Redis
        status = worker.status(receipt.id)
        assert status.state is DeliveryState.SUPPRESSED and status.is_final
        assert status.error_type == RecipientSuppressedError.__name__
        assert "complaint" in (status.error or "") and "jane@example.com" not in status.error
        assert status.provider is None and status.provider_message_id is None

        other = worker.send_email(
            to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="globex"
        )
        assert worker.wait(other.id).state is DeliveryState.SENT
        assert web.suppressions.remove("acme", "jane@example.com") == 1
        again = worker.send_email(
            to_email="jane@example.com", subject="Hi", body="Again", tenant_id="acme"
        )
        assert worker.wait(again.id).state is DeliveryState.SENT
    assert [m.mail_from for m in smtp.messages] == ["hello@globex.test", "orders@acme.test"]


def paused_send(notify: Notifier, tenant_id: str, to: str) -> Any:
    """Pause ``tenant_id``'s email for five minutes, send to ``to``: its status, checked
    failed as paused."""
    now = dt.datetime.now(dt.UTC)
    notify.reputation.store.pause(
        Pause(tenant_id, Channel.EMAIL, "550 5.7.26", 5, now, now + dt.timedelta(minutes=5))
    )
    receipt = notify.send_email(to_email=to, subject="Hi", body="Hello", tenant_id=tenant_id)
    status = notify.status(receipt.id)
    assert status.state is DeliveryState.FAILED
    assert status.error_type == TenantPausedError.__name__
    return status


def test_a_paused_channel_fails_on_the_delivery_side_without_a_provider_call(
    settings: dict[str, Any], smtp: LoopbackSMTPServer
) -> None:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/15", decode_responses=True)
    with on_redis(settings, client) as notify:
        status = paused_send(notify, "acme", "jane@example.com")
        assert "tenant-notify resume acme" in (status.error or "")
        assert notify.breaker.resume("acme") == [Channel.EMAIL]
        after = notify.send_email(
            to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme"
        )
        assert notify.wait(after.id).state is DeliveryState.SENT
    assert len(smtp.messages) == 1


def test_on_one_redis_the_claim_reads_the_pause_and_the_entries_in_its_round_trip(
    settings: dict[str, Any], smtp: LoopbackSMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/15", decode_responses=True)
    with on_redis(settings, client) as notify:
        store = notify.reputation.store
        assert isinstance(store, RedisReputationStore)
        claims = notify.dispatcher.idempotency_store
        assert store.shares_redis_with(claims)
        # Another client (another process's) is not this store's Redis connection.
        assert not store.shares_redis_with(RedisIdempotencyStore(redis.Redis()))

        def asked_apart(*args: object) -> None:
            raise AssertionError("the reputation was read apart from the claim")

        monkeypatch.setattr(store, "hold_state", asked_apart)
        notify.suppressions.add("acme", "jane@example.com", reason="complaint")
        held = notify.send_email(
            to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme"
        )
        assert notify.status(held.id).state is DeliveryState.SUPPRESSED
        paused_send(notify, "globex", "joe@example.com")
        sent = notify.send_email(
            to_email="joe@example.com", subject="Hi", body="Hello", tenant_id="acme"
        )
        assert notify.wait(sent.id).state is DeliveryState.SENT
        # What the claim read decides as the store's own question does.
        monkeypatch.undo()
        for tenant_id, to in (("acme", "jane@example.com"), ("globex", "joe@example.com")):
            reads = store.hold_reads(tenant_id, Channel.EMAIL, to)
            claim = claims.claim(f"other:{tenant_id}", 5, reads=reads)
            assert store.hold_from(claim.reads) == store.hold_state(tenant_id, Channel.EMAIL, to)
    assert [list(m.rcpt_tos) for m in smtp.messages] == [["joe@example.com"]]
