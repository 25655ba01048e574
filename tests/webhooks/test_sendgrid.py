"""SendGrid's signed Event Webhook (tenant_notify.webhooks.sendgrid)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tenant_notify.errors import (
    MissingDependencyError,
    WebhookError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from tenant_notify.models import DeliveryState
from tenant_notify.stores import MemoryStatusStore
from tenant_notify.webhooks import (
    apply_sendgrid_events,
    parse_sendgrid_events,
    verify_sendgrid_signature,
)
from tests.webhooks.support import Signer, sent

# --- published test vectors ----------------------------------------------------------

# sendgrid-python's EventWebhook unit test: a key, a signature and the exact payload.
SG_VECTOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe6"
    "2gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
SG_VECTOR_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM"
    "+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
)
SG_VECTOR_TIMESTAMP = "1600112502"
SG_VECTOR_BODY = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": (
                    "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
                ),
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
).encode()

# twilio-python's RequestValidator unit test.


def test_sendgrid_published_vector_verifies() -> None:
    now = int(SG_VECTOR_TIMESTAMP) + 5
    verify_sendgrid_signature(
        SG_VECTOR_BODY, SG_VECTOR_SIGNATURE, SG_VECTOR_TIMESTAMP, SG_VECTOR_KEY, now=now
    )
    with pytest.raises(WebhookVerificationError):
        verify_sendgrid_signature(
            SG_VECTOR_BODY.rstrip(),
            SG_VECTOR_SIGNATURE,
            SG_VECTOR_TIMESTAMP,
            SG_VECTOR_KEY,
            now=now,
        )
    [event] = parse_sendgrid_events(SG_VECTOR_BODY)
    assert event.event == "dropped" and event.state is DeliveryState.FAILED
    assert event.provider_message_id == "LRzXl_NHStOGhQ4kofSm_A"
    assert event.reason == "Bounced Address"


@pytest.fixture
def signer() -> Signer:
    return Signer()


def sg_body(*events: dict[str, Any]) -> bytes:
    return json.dumps(list(events)).encode()


def sg_event(event: str, notification_id: str = "n-1", **extra: Any) -> dict[str, Any]:
    return {
        "email": "jane@example.com",
        "timestamp": int(time.time()),
        "event": event,
        "sg_event_id": f"evt-{event}",
        "sg_message_id": "msg-1.filterdrecv-1",
        "notification_id": notification_id,
        "tenant_id": "acme",
        **extra,
    }


def test_delivered_then_bounce(signer: Signer) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1")
    body = sg_body(sg_event("processed"), sg_event("delivered", response="250 OK"))
    events = apply_sendgrid_events(store, body, signer.headers(body), signer.public_key)
    assert [(e.event, e.applied) for e in events] == [("processed", False), ("delivered", True)]
    status = store.get("n-1")
    assert status is not None
    assert status.state is DeliveryState.DELIVERED and status.error is None and status.is_final

    body = sg_body(
        sg_event("bounce", type="bounce", reason="550 5.1.1 user unknown", status="5.1.1")
    )
    [event] = apply_sendgrid_events(store, body, signer.headers(body), signer.public_key)
    assert event.applied and event.state is DeliveryState.BOUNCED
    status = store.get("n-1")
    assert status is not None and status.state is DeliveryState.BOUNCED
    assert status.error == "sendgrid bounce: 550 5.1.1 user unknown"
    assert status.error_type == "DeliveryEvent"

    # A late or replayed "delivered" never undoes the bounce.
    body = sg_body(sg_event("delivered"))
    [event] = apply_sendgrid_events(store, body, signer.headers(body), signer.public_key)
    assert not event.applied
    assert store.get("n-1").state is DeliveryState.BOUNCED  # type: ignore[union-attr]


def test_dropped_is_failed_and_blocked_is_a_bounce(signer: Signer) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1")
    sent(store, "n-2", provider_message_id="msg-2")
    body = sg_body(
        sg_event("dropped", reason="Unsubscribed Address"),
        sg_event("bounce", "n-2", type="blocked", reason="IP blocklisted"),
    )
    apply_sendgrid_events(store, body, signer.headers(body), signer.public_key)
    assert store.get("n-1").state is DeliveryState.FAILED  # type: ignore[union-attr]
    bounced = store.get("n-2")
    assert bounced is not None and bounced.state is DeliveryState.BOUNCED
    assert bounced.error == "sendgrid bounce: blocked: IP blocklisted"


def test_an_ambiguous_failure_is_settled_by_the_delivered_event(signer: Signer) -> None:
    store = MemoryStatusStore()
    sent(
        store,
        "n-1",
        provider_message_id=None,
        state=DeliveryState.FAILED,
        error="no reply within 20s",
        error_type="AmbiguousDeliveryError",
    )
    body = sg_body(sg_event("delivered"))
    [event] = apply_sendgrid_events(store, body, signer.headers(body), signer.public_key)
    status = store.get("n-1")
    assert event.applied and status is not None
    assert status.state is DeliveryState.DELIVERED and status.error is None
    assert status.provider_message_id == "msg-1"
    assert store.find_by_provider_message_id("sendgrid", "msg-1") == status


def test_events_without_custom_args_are_matched_by_message_id(signer: Signer) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider_message_id="msg-1")
    event = sg_event("delivered")
    del event["notification_id"], event["tenant_id"]
    body = sg_body(event)
    [applied] = apply_sendgrid_events(store, body, signer.headers(body), signer.public_key)
    assert applied.applied


def test_events_never_cross_tenants_or_providers(signer: Signer) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", tenant_id="globex")  # the event claims tenant acme
    sent(store, "n-2", provider="smtp")  # not sent through SendGrid
    sent(store, "n-3", tenant_id="globex")  # right ids, but the key is acme's
    body = sg_body(
        sg_event("delivered", "n-1"),
        sg_event("delivered", "n-2"),
        sg_event("delivered", "n-3", tenant_id="globex"),
        sg_event("delivered", "unknown"),
    )
    events = apply_sendgrid_events(
        store, body, signer.headers(body), signer.public_key, tenant_id="acme"
    )
    assert [e.applied for e in events] == [False, False, False, False]
    assert {store.get(i).state for i in ("n-1", "n-2", "n-3")} == {DeliveryState.SENT}  # type: ignore[union-attr]


def test_wrong_signature_stale_timestamp_and_missing_headers_are_rejected(
    signer: Signer,
) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1")
    body = sg_body(sg_event("delivered"))
    other = Signer()
    cases = [
        other.headers(body),  # signed with another key
        signer.headers(body + b" "),  # body changed after signing
        signer.headers(body, timestamp=int(time.time()) - 3600),  # a replay
        signer.headers(body, timestamp=int(time.time()) + 3600),
        {},
        {**signer.headers(body), "X-Twilio-Email-Event-Webhook-Signature": "not base64!"},
        {**signer.headers(body), "X-Twilio-Email-Event-Webhook-Timestamp": "soon"},
    ]
    for headers in cases:
        with pytest.raises(WebhookVerificationError):
            apply_sendgrid_events(store, body, headers, signer.public_key)
    assert store.get("n-1").state is DeliveryState.SENT  # type: ignore[union-attr]


def test_tolerance_is_configurable_and_headers_any_case(signer: Signer) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1")
    body = sg_body(sg_event("delivered"))
    headers = {k.lower(): v for k, v in signer.headers(body, int(time.time()) - 600).items()}
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        apply_sendgrid_events(store, body, headers, signer.public_key)
    [event] = apply_sendgrid_events(store, body, headers, signer.public_key, tolerance=900)
    assert event.applied


def test_pem_keys_and_bad_keys(signer: Signer) -> None:
    body = sg_body(sg_event("delivered"))
    headers = signer.headers(body)
    ts = headers["X-Twilio-Email-Event-Webhook-Timestamp"]
    sig = headers["X-Twilio-Email-Event-Webhook-Signature"]
    pem = signer.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verify_sendgrid_signature(body, sig, ts, pem)
    verify_sendgrid_signature(body, sig, ts, signer.private.public_key())
    with pytest.raises(WebhookVerificationError, match="not a base64 DER or PEM"):
        verify_sendgrid_signature(body, sig, ts, "bm90IGEga2V5")


def test_a_signed_body_that_is_not_events_is_a_payload_error(signer: Signer) -> None:
    for body in (b"{}", b"not json", b'[{"email": "x"}]', b"[1]"):
        with pytest.raises(WebhookPayloadError) as info:
            apply_sendgrid_events(
                MemoryStatusStore(), body, signer.headers(body), signer.public_key
            )
        assert isinstance(info.value, WebhookError) and isinstance(info.value, ValueError)


def test_without_cryptography_the_extra_is_named(
    signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cryptography", None)
    body = sg_body(sg_event("delivered"))
    with pytest.raises(MissingDependencyError) as info:
        verify_sendgrid_signature(body, "x", "1", "key")
    assert info.value.extra == "webhooks"
