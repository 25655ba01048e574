"""Twilio's status callbacks (tenant_notify.webhooks.twilio)."""

from __future__ import annotations

from typing import Any

import pytest

from tenant_notify.errors import (
    WebhookPayloadError,
    WebhookVerificationError,
)
from tenant_notify.models import DeliveryState
from tenant_notify.stores import MemoryStatusStore
from tenant_notify.webhooks import (
    apply_twilio_callback,
    parse_twilio_callback,
    twilio_signature,
    verify_twilio_signature,
)
from tests.webhooks.support import sent

# twilio-python's RequestValidator unit test.
TW_VECTOR_TOKEN = "12345"
TW_VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TW_VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        (TW_VECTOR_URL, TW_VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (
            TW_VECTOR_URL,
            [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")],
            "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
        ),
    ],
)
def test_twilio_published_vectors(url: str, params: Any, expected: str) -> None:
    assert twilio_signature(url, params, TW_VECTOR_TOKEN) == expected
    verify_twilio_signature(url, params, expected, TW_VECTOR_TOKEN)


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        (TW_VECTOR_URL.replace(".com", ".com:1234"), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (TW_VECTOR_URL, "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443
        (TW_VECTOR_URL.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # with :80
    ],
)
def test_twilio_url_with_or_without_port(url: str, signature: str) -> None:
    verify_twilio_signature(url, TW_VECTOR_PARAMS, signature, TW_VECTOR_TOKEN)


TOKEN = "twilio-auth-token"
URL = "https://shop.example/hooks/twilio"
SMS_SID = "SM" + "f" * 32


def callback(status: str, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "1" * 32,
        "ApiVersion": "2010-04-01",
        "From": "+15005550006",
        "MessageSid": SMS_SID,
        "MessageStatus": status,
        "SmsSid": SMS_SID,
        "SmsStatus": status,
        "To": "+15551234567",
        **extra,
    }


def test_twilio_delivered_and_undelivered() -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="twilio", provider_message_id=SMS_SID)
    params = callback("sent")
    event = apply_twilio_callback(store, URL, params, twilio_signature(URL, params, TOKEN), TOKEN)
    assert event.state is None and not event.applied

    params = callback("delivered")
    event = apply_twilio_callback(store, URL, params, twilio_signature(URL, params, TOKEN), TOKEN)
    assert event.applied
    assert store.get("n-1").state is DeliveryState.DELIVERED  # type: ignore[union-attr]
    # A replay changes nothing.
    event = apply_twilio_callback(store, URL, params, twilio_signature(URL, params, TOKEN), TOKEN)
    assert not event.applied

    params = callback("undelivered", ErrorCode="30003", ErrorMessage="Unreachable handset")
    event = apply_twilio_callback(store, URL, params, twilio_signature(URL, params, TOKEN), TOKEN)
    status = store.get("n-1")
    assert event.applied and status is not None
    assert status.state is DeliveryState.BOUNCED
    assert status.error == "twilio undelivered: error 30003 Unreachable handset"


def test_twilio_failed_and_unknown_sid() -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="twilio", provider_message_id=SMS_SID)
    params = callback("failed", ErrorCode="30008")
    event = apply_twilio_callback(store, URL, params, twilio_signature(URL, params, TOKEN), TOKEN)
    assert event.applied and store.get("n-1").state is DeliveryState.FAILED  # type: ignore[union-attr]
    params = {**callback("delivered"), "MessageSid": "SM" + "0" * 32}
    event = apply_twilio_callback(store, URL, params, twilio_signature(URL, params, TOKEN), TOKEN)
    assert not event.applied


def test_twilio_wrong_signature_is_rejected() -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="twilio", provider_message_id=SMS_SID)
    params = callback("delivered")
    good = twilio_signature(URL, params, TOKEN)
    for url, signature, token in [
        (URL, twilio_signature(URL, params, "other-token"), TOKEN),
        (URL + "?x=1", good, TOKEN),
        (URL, good, "other-token"),
        (URL, "", TOKEN),
        (URL, None, TOKEN),
    ]:
        with pytest.raises(WebhookVerificationError):
            apply_twilio_callback(store, url, params, signature, token)
    tampered = {**params, "MessageStatus": "failed"}
    with pytest.raises(WebhookVerificationError):
        apply_twilio_callback(store, URL, tampered, good, TOKEN)
    assert store.get("n-1").state is DeliveryState.SENT  # type: ignore[union-attr]


def test_twilio_payload_needs_sid_and_status() -> None:
    with pytest.raises(WebhookPayloadError):
        parse_twilio_callback({"To": "+1555"})


def test_twilio_params_from_a_multidict() -> None:
    class MultiDict(dict[str, str]):
        def getlist(self, key: str) -> list[str]:
            return [self[key]]

    params = MultiDict(callback("delivered"))
    signature = twilio_signature(URL, dict(params), TOKEN)
    verify_twilio_signature(URL, params, signature, TOKEN)
