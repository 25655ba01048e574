"""Delivery metrics through a real Notifier: Prometheus when installed, nothing otherwise."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tenant_notify.errors import ConfigurationError
from tenant_notify.metrics import NullMetrics, PrometheusMetrics, resolve_metrics
from tenant_notify.models import Channel, Notification
from tenant_notify.testing import ScriptedProvider, capture_logs, make_notifier

prometheus_client = pytest.importorskip("prometheus_client")

ATTEMPTS = "tenant_notify_delivery_attempts_total"
DURATION_COUNT = "tenant_notify_delivery_duration_seconds_count"


def sample(registry: Any, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def welcome(notify: Any, email: str = "jane@example.com") -> Any:
    return notify.send_welcome_email(user_email=email, user_name="Jane", tenant_id="acme")


def test_sends_move_the_counters_by_kind_channel_provider_and_outcome(
    tenants: dict[str, Any],
) -> None:
    registry = prometheus_client.CollectorRegistry()
    with make_notifier(tenants=tenants, metrics=registry) as notify:
        welcome(notify)
        notify.send_sms(to_phone="+15551234567", body="Shipped", tenant_id="acme")
    sent = {"kind": "welcome", "channel": "email", "provider": "memory", "outcome": "sent"}
    assert sample(registry, ATTEMPTS, **sent) == 1
    assert sample(registry, DURATION_COUNT, **sent) == 1
    assert sample(registry, "tenant_notify_delivery_duration_seconds_sum", **sent) > 0
    sms = {"kind": "sms", "channel": "sms", "provider": "memory", "outcome": "sent"}
    assert sample(registry, ATTEMPTS, **sms) == 1
    # No label carries the recipient or the tenant.
    exposition = prometheus_client.generate_latest(registry).decode()
    assert "jane@example.com" not in exposition
    assert "5551234567" not in exposition
    assert "acme" not in exposition


def test_retries_and_failures_are_counted_per_attempt(tenants: dict[str, Any]) -> None:
    registry = prometheus_client.CollectorRegistry()
    provider = ScriptedProvider(["transient", "transient", "ok", "permanent"])
    with make_notifier(tenants=tenants, provider=provider, metrics=registry) as notify:
        assert welcome(notify).wait(timeout=5).state == "sent"
        assert welcome(notify, "john@example.com").wait(timeout=5).state == "failed"
    labels = {"kind": "welcome", "channel": "email", "provider": "scripted"}
    assert sample(registry, ATTEMPTS, **labels, outcome="retrying") == 2
    assert sample(registry, ATTEMPTS, **labels, outcome="sent") == 1
    assert sample(registry, ATTEMPTS, **labels, outcome="failed") == 1


def test_the_setting_uses_the_default_registry(tenants: dict[str, Any]) -> None:
    registry = prometheus_client.REGISTRY
    labels = {"kind": "welcome", "channel": "email", "provider": "memory", "outcome": "sent"}
    before = sample(registry, ATTEMPTS, **labels)
    # Two notifiers on one registry share its metrics instead of registering them twice.
    with (
        make_notifier(tenants=tenants, metrics=True) as first,
        make_notifier(tenants=tenants, metrics=True) as second,
    ):
        assert first.dispatcher.metrics is second.dispatcher.metrics
        welcome(first)
    assert sample(registry, ATTEMPTS, **labels) == before + 1


def test_metrics_are_off_unless_asked_for(tenants: dict[str, Any]) -> None:
    with make_notifier(tenants=tenants) as notify:
        assert isinstance(notify.dispatcher.metrics, NullMetrics)
        assert welcome(notify).wait(timeout=5).state == "sent"


def test_a_recorder_of_ones_own_gets_every_attempt(tenants: dict[str, Any]) -> None:
    calls: list[dict[str, Any]] = []

    class Recorder:
        def observe_attempt(self, **figures: Any) -> None:
            calls.append(figures)

    provider = ScriptedProvider(["transient"])
    with make_notifier(tenants=tenants, provider=provider, metrics=Recorder()) as notify:
        welcome(notify)
    assert [(c["outcome"], c["provider"]) for c in calls] == [
        ("retrying", "scripted"),
        ("sent", "scripted"),
    ]
    assert all(c["seconds"] >= 0 for c in calls)


def test_a_broken_recorder_does_not_fail_the_delivery(tenants: dict[str, Any]) -> None:
    class Broken:
        def observe_attempt(self, **figures: Any) -> None:
            raise RuntimeError("boom")

    with (
        capture_logs() as logs,
        make_notifier(tenants=tenants, metrics=Broken()) as notify,
    ):
        status = welcome(notify).wait(timeout=5)
    assert status.state == "sent"
    assert len(notify.outbox) == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["metrics_failed"]


def test_an_unknown_tenant_at_delivery_is_counted_without_a_provider(
    tenants: dict[str, Any],
) -> None:
    registry = prometheus_client.CollectorRegistry()
    gone = Notification(
        id="n-1", tenant_id="gone", kind="welcome", channel=Channel.EMAIL, to="jane@example.com"
    )
    with make_notifier(tenants=tenants, metrics=registry) as notify:
        outcome = notify.dispatcher.deliver(gone)
    assert outcome.status is not None and outcome.status.state == "failed"
    labels = {"kind": "welcome", "channel": "email", "provider": "none", "outcome": "failed"}
    assert sample(registry, ATTEMPTS, **labels) == 1


def test_without_prometheus_client_asking_for_it_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tenants: dict[str, Any]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(ConfigurationError, match=r"tenant-notify\[metrics\]") as info:
        make_notifier(tenants=tenants, metrics=True)
    assert info.value.key == "metrics"
    # Off, nothing needs it.
    with make_notifier(tenants=tenants) as notify:
        assert welcome(notify).wait(timeout=5).state == "sent"


def test_a_bad_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="CollectorRegistry"):
        resolve_metrics("yes")
    assert isinstance(resolve_metrics(False), NullMetrics)
    assert isinstance(resolve_metrics(prometheus_client.CollectorRegistry()), PrometheusMetrics)


def test_template_caches_are_exported_with_hits_misses_and_size(tenants: dict[str, Any]) -> None:
    registry = prometheus_client.CollectorRegistry()
    with make_notifier(tenants=tenants, metrics=registry, templates={"cache_size": 7}) as notify:
        stats = notify.dispatcher.renderer.cache_stats
        before = stats()["templates"]
        for address in ("a@example.com", "b@example.com", "c@example.com"):
            welcome(notify, address)
        after = stats()["templates"]
        templates = {"cache": "templates"}
        # Three welcome emails: compiled once, then found in the cache.
        assert after.misses > before.misses and after.hits > before.hits
        assert (
            sample(registry, "tenant_notify_template_cache_hits_total", **templates) == after.hits
        )
        assert sample(registry, "tenant_notify_template_cache_misses_total", **templates) == (
            after.misses
        )
        assert sample(registry, "tenant_notify_template_cache_entries", **templates) == after.size
        assert sample(registry, "tenant_notify_template_cache_max_entries", **templates) == 7
        assert sample(registry, "tenant_notify_template_cache_max_entries", cache="lookups") == 28
