"""SES (through SNS) and Postmark events feed the suppression lists and the engagement,
and both providers are asked for tracking in their own terms.

SES runs against moto's server mode on loopback (requests signed with SigV4); its
events come through the router as SNS delivers them, signed with a certificate of a
CA the tests make. Postmark runs against the loopback fake checked against Postmark's
published request shape; its webhooks carry basic-auth credentials, as Postmark's do.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tenant_notify import Notifier
from tenant_notify.errors import RecipientSuppressedError
from tenant_notify.models import DeliveryState, EmailMessage
from tenant_notify.providers.ses import SesProvider
from tests.http_fakes import FakeProviderAPI
from tests.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from tests.reputation.support import router_client
from tests.webhooks.test_ses import TOPIC, FakeSns

PM_TOKEN = "pm-server-token-1"
PM_HOOK = "postmark:hook-secret-1"
SENDER = "orders@acme.test"
HTML = '<p>Hello <a href="https://acme.test/o/1">your order</a></p>'


@pytest.fixture(scope="module")
def aws_sns() -> FakeSns:
    return FakeSns()


@pytest.fixture
def sns_fetch(aws_sns: FakeSns, monkeypatch: pytest.MonkeyPatch) -> FakeSns:
    # Certificates come from SNS's hosts; here the injected fetcher answers for them.
    from tenant_notify.webhooks import sns

    monkeypatch.setattr(sns, "default_fetch", aws_sns.fetch)
    return aws_sns


def tenant(provider: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "Acme", "email_from": SENDER, "email": provider, **extra}


def ses_table(aws: MotoServer, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "ses",
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "endpoint_url": aws.url,
        **extra,
    }


def postmark_table(api: FakeProviderAPI) -> dict[str, Any]:
    return {"provider": "postmark", "server_token": PM_TOKEN, "base_url": api.url}


def client_for(notify: Notifier) -> TestClient:
    return router_client(notify, {"ses": TOPIC, "postmark": PM_HOOK})


def send(notify: Notifier, to: str = "jane@example.com") -> Any:
    return notify.send_email(
        to_email=to, subject="Hi", body="Hello", html_body=HTML, tenant_id="acme"
    )


# --- SES through SNS -------------------------------------------------------------------


@pytest.fixture
def ses_notify(aws: MotoServer) -> Iterator[Notifier]:
    aws.client("ses").verify_email_identity(EmailAddress=SENDER)
    settings = {"transport": "eager", "tenants": {"acme": tenant(ses_table(aws))}}
    with Notifier.from_settings(settings) as notifier:
        yield notifier


def post_ses(client: TestClient, sns: FakeSns, event: dict[str, Any]) -> Any:
    body = json.dumps(sns.message(Message=json.dumps(event))).encode()
    reply = client.post("/api/notifications/webhooks/ses/acme", content=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def ses_mail(message_id: str) -> dict[str, Any]:
    return {"messageId": message_id, "timestamp": "2026-12-01T09:59:00Z"}


def sent_count(aws: MotoServer) -> int:
    return len(aws.sent_emails()) + len(aws.sent_raw_emails())


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (
            {
                "eventType": "Bounce",
                "bounce": {
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "bouncedRecipients": [
                        {"emailAddress": "jane@example.com", "diagnosticCode": "smtp; 550 5.1.1"}
                    ],
                    "timestamp": "2026-12-01T10:00:00Z",
                },
            },
            "hard_bounce",
        ),
        (
            {
                "eventType": "Complaint",
                "complaint": {
                    "complainedRecipients": [{"emailAddress": "jane@example.com"}],
                    "complaintFeedbackType": "abuse",
                    "timestamp": "2026-12-01T10:00:00Z",
                },
            },
            "complaint",
        ),
    ],
)
def test_a_signed_ses_bounce_or_complaint_stops_the_next_send(
    aws: MotoServer,
    ses_notify: Notifier,
    sns_fetch: FakeSns,
    event: dict[str, Any],
    reason: str,
) -> None:
    receipt = send(ses_notify)
    message_id = receipt.status().provider_message_id
    assert message_id and sent_count(aws) == 1
    with client_for(ses_notify) as client:
        result = post_ses(client, sns_fetch, {**event, "mail": ses_mail(message_id)})
    assert result == {"events": 1, "applied": 1}
    with pytest.raises(RecipientSuppressedError) as info:
        send(ses_notify)
    assert info.value.reason == reason
    assert sent_count(aws) == 1  # no second call to SES
    [entry] = ses_notify.suppressions.list("acme")
    assert entry.source == "ses"


def test_ses_open_and_click_through_sns_show_up_as_engagement(
    ses_notify: Notifier, sns_fetch: FakeSns
) -> None:
    receipt = send(ses_notify)
    mail = ses_mail(receipt.status().provider_message_id or "")
    opened = {"eventType": "Open", "mail": mail, "open": {"timestamp": "2026-12-01T10:05:00Z"}}
    clicked = {
        "eventType": "Click",
        "mail": mail,
        "click": {"timestamp": "2026-12-01T10:06:00Z", "link": "https://acme.test/o/1"},
    }
    with client_for(ses_notify) as client:
        assert post_ses(client, sns_fetch, opened)["applied"] == 1
        assert post_ses(client, sns_fetch, clicked)["applied"] == 1
        task = client.get(f"/api/notifications/tasks/{receipt.id}", headers={"X-Tenant": "acme"})
    engagement = ses_notify.status(receipt.id).engagement
    assert engagement is not None and engagement.opens == 1
    assert engagement.first_opened_at is not None
    assert engagement.first_opened_at.isoformat() == "2026-12-01T10:05:00+00:00"
    [click] = engagement.clicks
    assert (click.url, click.at.isoformat()) == (
        "https://acme.test/o/1",
        "2026-12-01T10:06:00+00:00",
    )
    assert task.json()["engagement"]["click_count"] == 1


class RecordingSes(SesProvider):
    """The SES provider, keeping each SendEmail body it posts."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.payloads: list[dict[str, Any]] = []

    def build_payload(self, message: EmailMessage) -> dict[str, Any]:
        payload = super().build_payload(message)
        self.payloads.append(payload)
        return payload


def test_ses_tracks_through_its_tracking_configuration_set(aws: MotoServer) -> None:
    aws.client("ses").verify_email_identity(EmailAddress=SENDER)
    options = {k: v for k, v in ses_table(aws).items() if k != "provider"}
    ses = RecordingSes(configuration_set="plain", tracking_configuration_set="tracked", **options)
    tenants = {
        "acme": tenant({"provider": ses}, track_opens=True),
        "globex": {**tenant({"provider": ses}), "name": "Globex"},
    }
    with Notifier.from_settings({"transport": "eager", "tenants": tenants}) as notify:
        tracked = send(notify)
        untracked = notify.send_email(
            to_email="joe@example.com", subject="Hi", body="Hello", html_body=HTML,
            tenant_id="globex",
        )  # fmt: skip
        assert tracked.status().state is DeliveryState.SENT
        assert untracked.status().state is DeliveryState.SENT
    assert [p["ConfigurationSetName"] for p in ses.payloads] == ["tracked", "plain"]
    assert sent_count(aws) == 2
    # SES tracks: the HTML goes as it was.
    for payload in ses.payloads:
        assert payload["Content"]["Simple"]["Body"]["Html"]["Data"] == HTML


def test_ses_without_a_tracking_set_is_tracked_by_the_library(aws: MotoServer) -> None:
    aws.client("ses").verify_email_identity(EmailAddress=SENDER)
    settings = {
        "transport": "eager",
        "links": {"base_url": "https://shop.test/api", "signing_keys": ["k" * 24]},
        "tenants": {"acme": tenant(ses_table(aws), track_opens=True, track_clicks=True)},
    }
    with Notifier.from_settings(settings) as notify:
        send(notify)
    [sent] = aws.sent_emails()
    html = json.dumps(sent)
    assert "https://shop.test/api/notifications/track/acme/click/" in html
    assert "https://shop.test/api/notifications/track/acme/open/" in html


# --- Postmark ----------------------------------------------------------------------------


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.postmark_tokens.add(PM_TOKEN)
    return fake_api


@pytest.fixture
def pm_notify(api: FakeProviderAPI) -> Iterator[Notifier]:
    tenants = {"acme": tenant(postmark_table(api), track_opens=True, track_clicks=True)}
    with Notifier.from_settings({"transport": "eager", "tenants": tenants}) as notifier:
        yield notifier


def post_postmark(client: TestClient, record: dict[str, Any], auth: str = PM_HOOK) -> Any:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return client.post(
        "/api/notifications/webhooks/postmark/acme", content=json.dumps(record), headers=headers
    )


def postmark_record(api: FakeProviderAPI, kind: str, **extra: Any) -> dict[str, Any]:
    request = api.requests[-1].json
    return {
        "RecordType": kind,
        "MessageID": "pm-msg",
        "Recipient": request["To"],
        "Metadata": request["Metadata"],
        "MessageStream": "outbound",
        **extra,
    }


@pytest.mark.parametrize(
    ("kind", "extra", "reason"),
    [
        ("Bounce", {"Type": "HardBounce", "Email": "jane@example.com"}, "hard_bounce"),
        ("SpamComplaint", {"Email": "jane@example.com"}, "complaint"),
        ("SubscriptionChange", {"SuppressSending": True}, "unsubscribe"),
    ],
)
def test_a_postmark_bounce_complaint_or_unsubscribe_stops_the_next_send(
    api: FakeProviderAPI, pm_notify: Notifier, kind: str, extra: dict[str, Any], reason: str
) -> None:
    send(pm_notify)
    with client_for(pm_notify) as client:
        reply = post_postmark(client, postmark_record(api, kind, **extra))
        assert reply.status_code == 200 and reply.json()["applied"] == 1
        assert (
            post_postmark(client, postmark_record(api, kind), "postmark:wrong").status_code == 403
        )
    with pytest.raises(RecipientSuppressedError) as info:
        send(pm_notify)
    assert info.value.reason == reason
    assert len(api.requests) == 1


def test_postmark_open_and_click_webhooks_show_up_as_engagement(
    api: FakeProviderAPI, pm_notify: Notifier
) -> None:
    receipt = send(pm_notify)
    assert api.requests[-1].json["TrackOpens"] is True
    assert api.requests[-1].json["TrackLinks"] == "HtmlOnly"
    with client_for(pm_notify) as client:
        opened = postmark_record(api, "Open", ReceivedAt="2026-12-01T10:05:00Z")
        clicked = postmark_record(
            api, "Click", ReceivedAt="2026-12-01T10:06:00Z", OriginalLink="https://acme.test/o/1"
        )
        assert post_postmark(client, opened).json()["applied"] == 1
        assert post_postmark(client, clicked).json()["applied"] == 1
    engagement = pm_notify.status(receipt.id).engagement
    assert engagement is not None and engagement.opens == 1
    assert [c.url for c in engagement.clicks] == ["https://acme.test/o/1"]


def test_postmark_is_told_not_to_track_by_default(api: FakeProviderAPI) -> None:
    tenants = {"acme": tenant(postmark_table(api))}
    with Notifier.from_settings({"transport": "eager", "tenants": tenants}) as notify:
        send(notify)
    request = api.requests[-1].json
    assert request["TrackOpens"] is False and request["TrackLinks"] == "None"
    assert request["HtmlBody"] == HTML


# --- the breaker on SES -----------------------------------------------------------------


def test_an_unverified_ses_identity_pauses_that_tenants_email(aws: MotoServer) -> None:
    from tenant_notify.errors import PermanentDeliveryError, TenantPausedError

    aws.client("ses").verify_email_identity(EmailAddress="hello@globex.test")  # acme's is not
    tenants = {
        "acme": tenant(ses_table(aws)),
        "globex": {"name": "Globex", "email_from": "hello@globex.test", "email": ses_table(aws)},
    }
    settings = {"transport": "eager", "tenants": tenants, "breaker": {"threshold": 2}}
    with Notifier.from_settings(settings) as notify:
        for _ in range(2):
            status = send(notify).status()
            assert status.state is DeliveryState.FAILED
            assert status.error_type == PermanentDeliveryError.__name__
            assert "not verified" in (status.error or "")
        with pytest.raises(TenantPausedError):
            send(notify)
        other = notify.send_email(
            to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="globex"
        )
        assert other.status().state is DeliveryState.SENT
        assert notify.suppressions.list("acme") == []  # the recipient did nothing wrong
    assert sent_count(aws) == 1
