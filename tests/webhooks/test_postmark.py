"""Postmark's webhooks (tenant_notify.webhooks.postmark): basic-auth credentials, then
delivery and bounce events matched by the Metadata the provider sends."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tenant_notify.errors import WebhookPayloadError, WebhookVerificationError
from tenant_notify.models import DeliveryState
from tenant_notify.stores import MemoryStatusStore
from tenant_notify.webhooks import RECEIVERS, WebhookRequest, apply_postmark_event
from tests.webhooks.support import sent

CREDENTIALS = "postmark:hook-secret-1"
AUTH = {"Authorization": "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()}


def record(kind: str, **extra: Any) -> bytes:
    data = {
        "RecordType": kind,
        "MessageID": "pm-msg-1",
        "Recipient": "jane@example.com",
        "Metadata": {"tenant_id": "acme", "notification_id": "n-1"},
        "MessageStream": "outbound",
        **extra,
    }
    return json.dumps(data).encode()


def test_delivery_then_hard_bounce() -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="postmark", provider_message_id="pm-msg-1")
    event = apply_postmark_event(
        store, record("Delivery", DeliveredAt="2026-12-01T10:00:00Z"), AUTH, CREDENTIALS
    )
    assert event.applied and store.get("n-1").state is DeliveryState.DELIVERED
    event = apply_postmark_event(
        store,
        record(
            "Bounce",
            Type="HardBounce",
            TypeCode=1,
            Description="The server was unable to deliver your message",
        ),
        AUTH,
        CREDENTIALS,
    )
    assert event.applied and store.get("n-1").state is DeliveryState.BOUNCED
    assert "unable to deliver" in (store.get("n-1").error or "")


@pytest.mark.parametrize(
    ("bounce", "state"),
    [
        ("SoftBounce", DeliveryState.FAILED),
        ("BadEmailAddress", DeliveryState.BOUNCED),
        ("AutoResponder", None),
    ],
)
def test_bounce_types(bounce: str, state: DeliveryState | None) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="postmark", provider_message_id="pm-msg-1")
    event = apply_postmark_event(store, record("Bounce", Type=bounce), AUTH, CREDENTIALS)
    assert event.state is state
    assert store.get("n-1").state is (state or DeliveryState.SENT)


def test_matched_by_message_id_without_metadata_and_never_across_tenants() -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="postmark", provider_message_id="pm-msg-1", tenant_id="globex")
    plain = json.dumps({"RecordType": "Delivery", "MessageID": "pm-msg-1"}).encode()
    assert not apply_postmark_event(store, plain, AUTH, CREDENTIALS, tenant_id="acme").applied
    assert apply_postmark_event(store, plain, AUTH, CREDENTIALS, tenant_id="globex").applied


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer x"},
        {"Authorization": "Basic " + base64.b64encode(b"postmark:other").decode()},
        {"Authorization": "Basic ***"},
    ],
)
def test_wrong_or_missing_credentials_are_refused(headers: dict[str, str]) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="postmark", provider_message_id="pm-msg-1")
    with pytest.raises(WebhookVerificationError):
        apply_postmark_event(store, record("Delivery"), headers, CREDENTIALS)
    assert store.get("n-1").state is DeliveryState.SENT


def test_a_body_that_is_not_an_event_is_a_payload_error() -> None:
    with pytest.raises(WebhookPayloadError):
        apply_postmark_event(MemoryStatusStore(), b'{"no": "record type"}', AUTH, CREDENTIALS)


def test_the_router_entry() -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="postmark", provider_message_id="pm-msg-1")
    request = WebhookRequest(
        body=record("Delivery"), headers={"authorization": AUTH["Authorization"]}, url="https://x/"
    )
    [event] = RECEIVERS["postmark"](store, request, CREDENTIALS, tenant_id="acme")
    assert event.applied
