"""Rules, and publish_event on the embedded default: the rules applied in process."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tenant_notify import Notifier
from tenant_notify.config import EventRule
from tenant_notify.errors import (
    ConfigurationError,
    InvalidEventError,
    InvalidRecipientError,
    UnknownTenantError,
    UnmappedEventError,
)
from tenant_notify.events import EventRules, SchemaRegistry, parse_event
from tenant_notify.events.rules import parse_path, resolve_path
from tenant_notify.testing import get_outbox
from tests.events.conftest import ORDER_CREATED, RULES, SCHEMAS, SIGNED_UP, order_data

TENANTS = {"acme": {"name": "Acme Shop", "email_from": "Acme Shop <orders@acme.test>"}}


def make(transport: str = "inprocess", **events: Any) -> Notifier:
    return Notifier.from_settings(
        {
            "transport": transport,
            "email": {"provider": "memory", "outbox": "events"},
            "tenants": TENANTS,
            "events": {"schemas_dir": str(SCHEMAS), "rules": RULES, **events},
        }
    )


def test_paths_reach_into_data_lists_and_attributes() -> None:
    tree = {"id": "e", "data": {"items": [{"name": "Anvil"}], "n": 0}}
    assert resolve_path(tree, parse_path("data.items[0].name")) == "Anvil"
    assert resolve_path(tree, parse_path("data.items.0.name")) == "Anvil"
    assert resolve_path(tree, parse_path("data.n")) == 0
    assert resolve_path(tree, parse_path("id")) == "e"
    with pytest.raises(ValueError, match="not a path"):
        parse_path("data..x")


def test_publish_event_in_process_sends_once_per_event_id() -> None:
    with make() as notify:
        first = notify.publish_event(ORDER_CREATED, order_data(), tenant_id="acme", id="o-1")
        again = notify.publish_event(ORDER_CREATED, order_data(), tenant_id="acme", id="o-1")
        other = notify.publish_event(ORDER_CREATED, order_data(), tenant_id="acme", id="o-2")
        for result in (first, other):
            assert result.receipts[0].wait(5).state.value == "sent"
    assert not first.published
    assert again.receipts[0].duplicate and again.receipts[0].id == first.receipts[0].id
    assert other.receipts[0].id != first.receipts[0].id
    sent = get_outbox("events").emails
    assert len(sent) == 2
    assert sent[0].subject == "Order confirmation A-1001 \N{EN DASH} Acme Shop"
    assert "€59.90" in sent[0].text


def test_a_schema_invalid_event_queues_nothing() -> None:
    with make(transport="eager") as notify:
        with pytest.raises(InvalidEventError, match=r"data\.total") as caught:
            notify.publish_event(ORDER_CREATED, order_data(total=-1), tenant_id="acme")
        assert caught.value.reason == "schema"
    assert get_outbox("events").emails == []


def test_an_unknown_tenant_raises_before_anything_is_queued() -> None:
    with make(transport="eager") as notify, pytest.raises(UnknownTenantError):
        notify.publish_event(ORDER_CREATED, order_data(), tenant_id="initrode")
    assert get_outbox("events").emails == []


def test_an_unmapped_type_in_process_sends_nothing() -> None:
    with make(transport="eager") as notify:
        result = notify.publish_event("com.example.order.refunded", {}, tenant_id="acme")
    assert result.receipts == () and not result.published


def test_every_rule_is_planned_before_the_first_send() -> None:
    rules = [
        *RULES,
        {
            "type": SIGNED_UP,
            "kind": "sms",
            "channel": "sms",
            "to": "data.phone",
            "context": {"body": "data.name"},
        },
    ]
    with (
        make(transport="eager", rules=rules, schemas_dir=None) as notify,
        pytest.raises(InvalidEventError, match=r"data\.phone is missing"),
    ):
        notify.publish_event(SIGNED_UP, {"email": "a@b.example", "name": "A"}, tenant_id="acme")
    assert get_outbox("events").emails == []


def test_a_recipient_the_notifier_refuses_is_a_validation_error() -> None:
    with make(transport="eager", schemas_dir=None) as notify, pytest.raises(InvalidRecipientError):
        notify.publish_event(
            ORDER_CREATED, order_data(customer_email="not an address"), tenant_id="acme"
        )


def test_amounts_reach_the_template_as_decimals() -> None:
    rules = EventRules([EventRule.model_validate(RULES[0])])
    event = parse_event(
        b'{"specversion":"1.0","id":"1","source":"/s","type":"com.example.order.created",'
        b'"tenantid":"acme","data":{"order_id":"A","customer_email":"a@b.example",'
        b'"customer_name":"A","total":0.10,"currency":"EUR"}}'
    )
    [planned] = rules.plan(event)
    assert planned.context["order_total"] == Decimal("0.10")
    assert planned.idempotency_key.startswith("event:")


def test_unmapped_types_raise_in_plan() -> None:
    rules = EventRules([EventRule.model_validate(RULES[0])])
    event = parse_event(b'{"specversion":"1.0","id":"1","source":"/s","type":"x","tenantid":"a"}')
    with pytest.raises(UnmappedEventError) as caught:
        rules.plan(event)
    assert caught.value.reason == "unmapped"


@pytest.mark.parametrize(
    ("rule", "key", "message"),
    [
        ({"to": "data.customer_mail"}, "events.rules.0.to", "not in the schema"),
        ({"context": {"x": "data.nope"}}, "events.rules.0.context.x", "not in the schema"),
        ({"to": "data.."}, "events.rules.0.to", "not a path"),
        ({"type": "com.example.unknown"}, "events.rules.0.type", "no schema for"),
    ],
)
def test_rules_are_checked_against_the_schemas_when_built(
    rule: dict[str, Any], key: str, message: str
) -> None:
    table = {**RULES[0], **rule}
    with pytest.raises(ConfigurationError, match=message) as caught:
        EventRules([EventRule.model_validate(table)], SchemaRegistry(SCHEMAS))
    assert caught.value.key == key


def test_two_rules_one_event_cannot_tell_apart_need_names() -> None:
    rule = EventRule.model_validate(RULES[0])
    with pytest.raises(ConfigurationError, match="distinct 'name's"):
        EventRules([rule, rule])
    named = rule.model_copy(update={"name": "copy-to-merchant"})
    assert len(EventRules([rule, named]).rules_for(ORDER_CREATED)) == 2


def test_bad_rules_fail_when_the_notifier_is_built() -> None:
    with pytest.raises(ConfigurationError, match="not in the schema"):
        make(rules=[{**RULES[0], "to": "data.email"}])
