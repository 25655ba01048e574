"""examples/monitoring/ uses only metrics, and labels, that the library really exports.

A Notifier with metrics on delivers real notifications (some failing, enough for
the per-tenant alert) into a fresh prometheus-client registry; every metric name
and every label the Prometheus rules and the Grafana dashboard refer to must be
among what that registry then exposes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import prometheus_client
import pytest
import yaml

from tenant_notify import Notifier

MONITORING = Path(__file__).resolve().parents[2] / "examples" / "monitoring"
_METRIC = re.compile(r"\btenant_notify_[a-z_]+\b")
_LABELS = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)|([a-z_]+)\s*(?:=~|!=|=)\s*\"")


@pytest.fixture(scope="module")
def exposed() -> tuple[set[str], set[str]]:
    """Sample names and label names a registry holds after real deliveries."""
    registry = prometheus_client.CollectorRegistry()
    settings = {
        "transport": "eager",
        "email": {
            "provider": "tenant_notify.testing:ScriptedProvider",
            "script": ["ok", "ok", "transient", "permanent"],
            "then": "permanent",
        },
        "retry": {"initial_delay": 0, "jitter": 0, "max_attempts": 2},
        "tenants": {"acme": {"name": "Acme", "email_from": "orders@acme.test"}},
        "events": {"alerts": {"enabled": True, "failure_rate": 0.5, "min_outcomes": 4}},
    }
    with Notifier.from_settings(settings, metrics=registry) as notify:
        for i in range(8):
            notify.send_email(to_email=f"c{i}@example.com", subject="s", body="b", tenant_id="acme")
    names, labels = set(), set()
    for family in registry.collect():
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def rule_expressions() -> list[str]:
    document = yaml.safe_load((MONITORING / "prometheus-rules.yml").read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


@pytest.mark.parametrize("source", [rule_expressions, dashboard_expressions])
def test_every_metric_referred_to_is_exported(
    source: object, exposed: tuple[set[str], set[str]]
) -> None:
    names, _ = exposed
    exprs = source()  # type: ignore[operator]
    used = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert used, "no tenant_notify metric found: the pattern or the files changed"
    assert used <= names, f"not exported: {sorted(used - names)}"


@pytest.mark.parametrize("source", [rule_expressions, dashboard_expressions])
def test_every_label_referred_to_is_exported(
    source: object, exposed: tuple[set[str], set[str]]
) -> None:
    _, labels = exposed
    used: set[str] = set()
    for expr in source():  # type: ignore[operator]
        for grouped, matched in _LABELS.findall(expr):
            used.update(part.strip() for part in grouped.split(",") if part.strip())
            if matched:
                used.add(matched)
    assert "outcome" in used and "tenant_id" in used
    assert used <= labels, f"not exported: {sorted(used - labels)}"


def test_the_outcomes_the_rules_filter_on_are_ones_the_library_records(
    exposed: tuple[set[str], set[str]],
) -> None:
    values = {m for expr in rule_expressions() for m in re.findall(r'outcome=~?"([^"]+)"', expr)}
    outcomes = {part for value in values for part in value.split("|")}
    assert outcomes <= {"sent", "retrying", "failed"}
