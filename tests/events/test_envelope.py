"""Reading and writing CloudEvents 1.0 structured JSON."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from cloudevents.core.formats.json import JSONFormat

from tenant_notify.errors import InvalidEventError, ValidationError
from tenant_notify.events import dump_event, new_event, parse_event
from tests.events.conftest import cloudevent


def test_a_structured_event_is_read_with_its_tenant_and_exact_amounts() -> None:
    event = parse_event(json.dumps(cloudevent(id="e-1")).replace("59.9", "59.90"))
    assert (event.id, event.source, event.type, event.tenant_id) == (
        "e-1",
        "/shop/orders",
        "com.example.order.created",
        "acme",
    )
    assert event.data["total"] == Decimal("59.90")
    assert event.attributes["time"] == dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("id"), "id missing"),
        (lambda e: e.pop("source"), "source missing"),
        (lambda e: e.update(specversion="0.1"), "specversion"),
        (lambda e: e.update(id=""), "id"),
        (lambda e: e.update(time="yesterday"), "time"),
        (lambda e: e.update(Tenant_ID="x"), "lowercase"),
        (lambda e: e.update(data_base64="AAAA"), "binary data"),
    ],
)
def test_what_the_spec_refuses_is_an_invalid_event(change: object, message: str) -> None:
    event = cloudevent()
    change(event)  # type: ignore[operator]
    with pytest.raises(InvalidEventError, match=message) as caught:
        parse_event(json.dumps(event))
    assert caught.value.reason == "invalid"


def test_not_json_or_not_an_object_is_invalid() -> None:
    for body in (b"{", b"[1, 2]", b"\xff"):
        with pytest.raises(InvalidEventError) as caught:
            parse_event(body)
        assert caught.value.reason == "invalid"


def test_what_we_write_the_cloudevents_package_reads_back() -> None:
    event = new_event(
        "com.example.order.created",
        {"total": Decimal("59.90"), "on": dt.date(2026, 12, 1)},
        source="/shop",
        tenant_id="acme",
        id="w-1",
        subject="orders/A-1",
    )
    body = dump_event(event)
    theirs = JSONFormat().read(None, body)
    assert theirs.get_id() == "w-1"
    assert theirs.get_extension("tenantid") == "acme"
    assert theirs.get_subject() == "orders/A-1"
    assert theirs.get_data() == {"total": 59.9, "on": "2026-12-01"}
    assert parse_event(body).data["total"] == Decimal("59.9")


def test_an_amount_json_cannot_carry_exactly_is_refused() -> None:
    event = new_event(
        "t", {"total": Decimal("0.10000000000000000001")}, source="/s", tenant_id="acme"
    )
    with pytest.raises(ValidationError, match="exactly"):
        dump_event(event)


def test_an_extension_attribute_must_be_lowercase_alphanumeric() -> None:
    with pytest.raises(InvalidEventError, match="lowercase"):
        new_event("t", {}, source="/s", tenant_id="acme", extensions={"trace-id": "x"})
