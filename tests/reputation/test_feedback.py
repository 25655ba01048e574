"""Provider events feed the suppression lists: a signed bounce, complaint or STOP, then
a send to that recipient makes no provider call.

Sends go to the loopback fakes of SendGrid and Twilio (requests checked against their
published schemas); events come back through the FastAPI router, signed as the
providers sign them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tenant_notify import Notifier
from tenant_notify.errors import RecipientSuppressedError
from tenant_notify.log import capture_logs
from tenant_notify.models import DeliveryState
from tenant_notify.reputation import SuppressionReason
from tenant_notify.webhooks import twilio_signature
from tests.http_fakes import FakeProviderAPI, twilio_error
from tests.reputation.support import router_client
from tests.webhooks.support import Signer

ACCOUNT = "AC" + "1" * 32
TOKEN = "tw-auth-token-acct-1"
SG_KEY = "SG.test"


def tenants(api_url: str) -> dict[str, Any]:
    sendgrid = {"provider": "sendgrid", "api_key": SG_KEY, "base_url": api_url}
    twilio = {
        "provider": "twilio",
        "account_sid": ACCOUNT,
        "auth_token": TOKEN,
        "base_url": api_url,
    }
    return {
        name: {
            "name": name.title(),
            "email_from": f"orders@{name}.test",
            "sms_from": "+15005550006",
            "email": sendgrid,
            "sms": twilio,
        }
        for name in ("acme", "globex")
    }


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.sendgrid_keys.add(SG_KEY)
    fake_api.twilio_credentials[(ACCOUNT, TOKEN)] = ACCOUNT
    return fake_api


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def notify(api: FakeProviderAPI) -> Iterator[Notifier]:
    settings = {"transport": "eager", "tenants": tenants(api.url), "retry": {"max_attempts": 1}}
    with Notifier.from_settings(settings) as notifier:
        yield notifier


@pytest.fixture
def client(notify: Notifier, signer: Signer) -> Iterator[TestClient]:
    secrets = {"sendgrid": signer.public_key, "twilio": TOKEN}
    with router_client(notify, secrets) as test_client:
        yield test_client


def sendgrid_event(api: FakeProviderAPI, event: str, **fields: Any) -> dict[str, Any]:
    """The event SendGrid would post about the last message sent through the fake."""
    request = api.requests[-1]
    personalization = request.json["personalizations"][0]
    return {
        "email": personalization["to"][0]["email"],
        "timestamp": int(time.time()),
        "event": event,
        "sg_message_id": "msg.filterdrecv-1",
        **request.json["custom_args"],
        **fields,
    }


def post_sendgrid(
    client: TestClient, signer: Signer, events: list[dict[str, Any]], tenant_id: str = "acme"
) -> Any:
    body = json.dumps(events).encode()
    url = f"/api/notifications/webhooks/sendgrid/{tenant_id}"
    reply = client.post(url, content=body, headers=signer.headers(body))
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.parametrize(
    ("event", "fields", "reason"),
    [
        ("bounce", {"type": "bounce", "reason": "550 5.1.1 no such user"}, "hard_bounce"),
        ("spamreport", {}, "complaint"),
        ("unsubscribe", {}, "unsubscribe"),
        ("dropped", {"reason": "Bounced Address"}, "hard_bounce"),
    ],
)
def test_a_signed_sendgrid_event_stops_the_next_send_before_any_provider_call(
    api: FakeProviderAPI,
    notify: Notifier,
    client: TestClient,
    signer: Signer,
    event: str,
    fields: dict[str, Any],
    reason: str,
) -> None:
    first = notify.send_email(
        to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme"
    )
    assert first.status().state is DeliveryState.SENT
    assert len(api.requests) == 1

    result = post_sendgrid(client, signer, [sendgrid_event(api, event, **fields)])
    assert result == {"events": 1, "applied": 1}

    with pytest.raises(RecipientSuppressedError) as info:
        notify.send_email(to_email="JANE@example.com", subject="Hi", body="Again", tenant_id="acme")
    assert info.value.reason == reason and info.value.channel == "email"
    assert "jane@example.com" not in str(info.value)  # masked
    assert len(api.requests) == 1  # no second provider call
    [entry] = notify.suppressions.list("acme")
    assert entry.source == "sendgrid" and entry.reason.value == reason
    # Another tenant's list is its own.
    notify.send_email(to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="globex")
    assert len(api.requests) == 2


def test_a_soft_bounce_suppresses_nothing(
    api: FakeProviderAPI, notify: Notifier, client: TestClient, signer: Signer
) -> None:
    receipt = notify.send_email(
        to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme"
    )
    post_sendgrid(client, signer, [sendgrid_event(api, "bounce", type="blocked", reason="421")])
    assert receipt.status().state is DeliveryState.BOUNCED
    assert notify.suppressions.list("acme") == []
    notify.send_email(to_email="jane@example.com", subject="Hi", body="Again", tenant_id="acme")
    assert len(api.requests) == 2


def test_a_group_resubscribe_lifts_an_unsubscribe_only(
    api: FakeProviderAPI, notify: Notifier, client: TestClient, signer: Signer
) -> None:
    notify.send_email(to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme")
    post_sendgrid(client, signer, [sendgrid_event(api, "group_unsubscribe")])
    assert notify.suppressions.check("acme", "jane@example.com") is not None
    post_sendgrid(client, signer, [sendgrid_event(api, "group_resubscribe")])
    assert notify.suppressions.check("acme", "jane@example.com") is None
    notify.suppressions.add("acme", "jane@example.com", reason="hard_bounce")
    post_sendgrid(client, signer, [sendgrid_event(api, "group_resubscribe")])
    assert notify.suppressions.check("acme", "jane@example.com") is not None


def test_a_tenants_webhook_cannot_suppress_for_another_tenant(
    api: FakeProviderAPI, notify: Notifier, client: TestClient, signer: Signer
) -> None:
    notify.send_email(to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="globex")
    event = sendgrid_event(api, "spamreport")
    assert event["tenant_id"] == "globex"
    # acme's endpoint (acme's key) speaks about a globex notification: ignored.
    assert post_sendgrid(client, signer, [event], tenant_id="acme")["applied"] == 0
    assert notify.suppressions.list("globex") == []
    assert notify.suppressions.list("acme") == []


def test_a_bounce_for_a_forgotten_notification_suppresses_for_the_endpoints_tenant(
    notify: Notifier, client: TestClient, signer: Signer
) -> None:
    event = {"email": "old@example.com", "event": "bounce", "type": "bounce", "timestamp": 1}
    event["timestamp"] = int(time.time())
    assert post_sendgrid(client, signer, [event])["applied"] == 1
    assert notify.suppressions.check("acme", "old@example.com") is not None
    assert notify.suppressions.check("globex", "old@example.com") is None


# --- Twilio --------------------------------------------------------------------------


def post_twilio(client: TestClient, path: str, params: dict[str, str]) -> Any:
    url = f"/api/notifications/webhooks/twilio/acme{path}"
    signature = twilio_signature("http://testserver" + url, params, TOKEN)
    reply = client.post(url, data=params, headers={"X-Twilio-Signature": signature})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_twilio_21610_at_send_time_suppresses_the_number(
    api: FakeProviderAPI, notify: Notifier
) -> None:
    api.script(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"))
    receipt = notify.send_sms(to_phone="+15551234567", body="Your code", tenant_id="acme")
    status = receipt.status()
    assert status.state is DeliveryState.FAILED and "21610" in (status.error or "")
    [entry] = notify.suppressions.list("acme", channel="sms")
    assert entry.recipient == "+15551234567" and entry.reason is SuppressionReason.UNSUBSCRIBE

    with pytest.raises(RecipientSuppressedError):
        notify.send_sms(to_phone="+15551234567", body="Again", tenant_id="acme")
    assert len(api.requests) == 1
    # Email to the same tenant and SMS from another tenant are unaffected.
    notify.send_sms(to_phone="+15551234567", body="Hi", tenant_id="globex")
    assert len(api.requests) == 2


def test_a_twilio_callback_with_21610_suppresses_the_number(
    api: FakeProviderAPI, notify: Notifier, client: TestClient
) -> None:
    receipt = notify.send_sms(to_phone="+15551234567", body="Your code", tenant_id="acme")
    sid = receipt.status().provider_message_id
    assert sid is not None
    params = {
        "MessageSid": sid,
        "MessageStatus": "undelivered",
        "ErrorCode": "21610",
        "To": "+15551234567",
        "From": "+15005550006",
    }
    assert post_twilio(client, "", params) == {"events": 1, "applied": 1}
    assert receipt.status().state is DeliveryState.BOUNCED
    with pytest.raises(RecipientSuppressedError):
        notify.send_sms(to_phone="+15551234567", body="Again", tenant_id="acme")
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("stop", "start"),
    [
        ({"Body": "stop"}, {"Body": " Start "}),
        ({"Body": "please stop", "OptOutType": "STOP"}, {"Body": "unstop", "OptOutType": "START"}),
    ],
)
def test_an_inbound_stop_suppresses_and_start_lifts(
    api: FakeProviderAPI,
    notify: Notifier,
    client: TestClient,
    stop: dict[str, str],
    start: dict[str, str],
) -> None:
    base = {"MessageSid": "SM" + "b" * 32, "From": "+15551234567", "To": "+15005550006"}
    assert post_twilio(client, "/inbound", {**base, **stop})["applied"] == 1
    with pytest.raises(RecipientSuppressedError):
        notify.send_sms(to_phone="+15551234567", body="Hi", tenant_id="acme")
    assert post_twilio(client, "/inbound", {**base, **start})["applied"] == 1
    notify.send_sms(to_phone="+15551234567", body="Hi", tenant_id="acme")
    assert len(api.requests) == 1


def test_an_inbound_message_that_is_no_keyword_changes_nothing(
    notify: Notifier, client: TestClient
) -> None:
    params = {"MessageSid": "SM" + "c" * 32, "From": "+15551234567", "Body": "stop by later?"}
    assert post_twilio(client, "/inbound", params)["applied"] == 0
    assert notify.suppressions.list("acme") == []


def test_an_unsigned_inbound_stop_is_refused(notify: Notifier, client: TestClient) -> None:
    url = "/api/notifications/webhooks/twilio/acme/inbound"
    params = {"MessageSid": "SM" + "d" * 32, "From": "+15551234567", "Body": "STOP"}
    bad = twilio_signature("http://testserver" + url, params, "another-token")
    assert client.post(url, data=params, headers={"X-Twilio-Signature": bad}).status_code == 403
    assert notify.suppressions.list("acme") == []


# --- a kind that is not suppressible ------------------------------------------------------


def test_a_kind_that_is_not_suppressible_sends_anyway_and_logs_it(api: FakeProviderAPI) -> None:
    settings = {
        "transport": "eager",
        "tenants": tenants(api.url),
        "kinds": {"email": {"suppressible": False}},
    }
    with Notifier.from_settings(settings) as notify:
        notify.suppressions.add("acme", "jane@example.com", reason="complaint")
        with capture_logs() as logs:
            receipt = notify.send_email(
                to_email="jane@example.com", subject="Legal notice", body="...", tenant_id="acme"
            )
    assert receipt.status().state is DeliveryState.SENT
    assert len(api.requests) == 1
    overridden = [e for e in logs if e["event"] == "suppression_overridden"]
    assert overridden and overridden[0]["reason"] == "complaint"
    assert "jane@example.com" not in repr(overridden)
