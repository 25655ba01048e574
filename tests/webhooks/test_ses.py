"""SES events through SNS (tenant_notify.webhooks.ses and .sns): messages signed with a
certificate the tests make (their own CA), fetched through an injected fetcher."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tenant_notify.errors import WebhookPayloadError, WebhookVerificationError
from tenant_notify.models import DeliveryState
from tenant_notify.stores import MemoryStatusStore
from tenant_notify.webhooks import RECEIVERS, WebhookRequest, apply_ses_events
from tenant_notify.webhooks.sns import string_to_sign
from tests.webhooks.support import sent

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
SUBSCRIBE_URL = (
    "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=" + TOPIC + "&Token=t"
)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class FakeSns:
    """Signs messages as SNS does, with a certificate from a CA of its own."""

    def __init__(self, *, days_valid: int = 30) -> None:
        now = dt.datetime.now(dt.UTC)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("Test Root CA"))
            .issuer_name(_name("Test Root CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("sns.amazonaws.com"))
            .issuer_name(ca.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days_valid))
            .sign(ca_key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.pem if url.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"

    def message(
        self, kind: str = "Notification", version: str = "1", **fields: str
    ) -> dict[str, str]:
        message = {
            "Type": kind,
            "MessageId": "0b6c3c5e-1111-2222-3333-444455556666",
            "TopicArn": TOPIC,
            "Message": fields.pop("Message", "{}"),
            "Timestamp": "2026-12-01T10:00:00.000Z",
            "SignatureVersion": version,
            "SigningCertURL": CERT_URL,
            **fields,
        }
        if kind != "Notification":
            message.setdefault("Token", "t")
            message.setdefault("SubscribeURL", SUBSCRIBE_URL)
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(string_to_sign(message), padding.PKCS1v15(), digest)
        message["Signature"] = base64.b64encode(signature).decode()
        return message


@pytest.fixture(scope="module")
def aws_sns() -> FakeSns:
    return FakeSns()


def ses_event(event: str, message_id: str = "ses-msg-1", **extra: Any) -> str:
    return json.dumps(
        {
            "eventType": event,
            "mail": {"messageId": message_id, "timestamp": "2026-12-01T09:59:00Z"},
            **extra,
        }
    )


def body(message: dict[str, str]) -> bytes:
    return json.dumps(message).encode()


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_delivery_event_is_applied(aws_sns: FakeSns, version: str) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="ses", provider_message_id="ses-msg-1")
    message = aws_sns.message(
        version=version,
        Message=ses_event("Delivery", delivery={"timestamp": "2026-12-01T10:00:01Z"}),
    )
    [event] = apply_ses_events(store, body(message), topic_arns=[TOPIC], fetch=aws_sns.fetch)
    assert event.applied and event.state is DeliveryState.DELIVERED
    assert event.occurred_at == dt.datetime(2026, 12, 1, 10, 0, 1, tzinfo=dt.UTC)
    assert store.get("n-1").state is DeliveryState.DELIVERED


@pytest.mark.parametrize(
    ("bounce_type", "state"),
    [
        ("Permanent", DeliveryState.BOUNCED),
        ("Transient", DeliveryState.FAILED),
        ("Undetermined", DeliveryState.BOUNCED),
    ],
)
def test_bounces(aws_sns: FakeSns, bounce_type: str, state: DeliveryState) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="ses", provider_message_id="ses-msg-1")
    recipient = {"emailAddress": "jane@example.com", "diagnosticCode": "smtp; 550 5.1.1 no user"}
    bounce = {
        "bounceType": bounce_type,
        "bounceSubType": "General",
        "bouncedRecipients": [recipient],
    }
    message = aws_sns.message(Message=ses_event("Bounce", bounce=bounce))
    [event] = apply_ses_events(store, body(message), topic_arns=[TOPIC], fetch=aws_sns.fetch)
    assert event.applied and store.get("n-1").state is state
    assert "550 5.1.1" in (store.get("n-1").error or "")


def test_complaints_and_opens_are_reported_not_applied(aws_sns: FakeSns) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="ses", provider_message_id="ses-msg-1")
    for name in ("Complaint", "Open", "Send"):
        [event] = apply_ses_events(
            store,
            body(aws_sns.message(Message=ses_event(name))),
            topic_arns=[TOPIC],
            fetch=aws_sns.fetch,
        )
        assert event.state is None and not event.applied
    assert store.get("n-1").state is DeliveryState.SENT


def test_a_subscription_is_confirmed_through_the_fetcher(aws_sns: FakeSns) -> None:
    aws_sns.fetched.clear()
    message = aws_sns.message("SubscriptionConfirmation", Message="You have chosen to subscribe")
    assert (
        apply_ses_events(
            MemoryStatusStore(), body(message), topic_arns=[TOPIC], fetch=aws_sns.fetch
        )
        == []
    )
    assert aws_sns.fetched[-1] == SUBSCRIBE_URL


def test_a_subscribe_url_off_snss_hosts_is_not_visited(aws_sns: FakeSns) -> None:
    aws_sns.fetched.clear()
    message = aws_sns.message(
        "SubscriptionConfirmation", SubscribeURL="https://evil.example/confirm"
    )
    with pytest.raises(WebhookVerificationError, match="SubscribeURL"):
        apply_ses_events(
            MemoryStatusStore(), body(message), topic_arns=[TOPIC], fetch=aws_sns.fetch
        )
    assert "https://evil.example/confirm" not in aws_sns.fetched


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem",
        "https://user@sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com/cert.txt",
        "https://s3.amazonaws.com/cert.pem",
    ],
)
def test_certificates_come_only_from_sns_hosts(aws_sns: FakeSns, url: str) -> None:
    aws_sns.fetched.clear()
    message = aws_sns.message(SigningCertURL=url, Message=ses_event("Delivery"))
    with pytest.raises(WebhookVerificationError, match="SigningCertURL"):
        apply_ses_events(
            MemoryStatusStore(), body(message), topic_arns=[TOPIC], fetch=aws_sns.fetch
        )
    assert aws_sns.fetched == [], "nothing is fetched from a host that is not SNS's"


def test_tampering_another_topic_and_unknown_versions_are_refused(aws_sns: FakeSns) -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="ses", provider_message_id="ses-msg-1")
    message = aws_sns.message(Message=ses_event("Delivery"))
    forged = {**message, "Message": ses_event("Bounce", bounce={"bounceType": "Permanent"})}
    with pytest.raises(WebhookVerificationError, match="does not match"):
        apply_ses_events(store, body(forged), topic_arns=[TOPIC], fetch=aws_sns.fetch)
    with pytest.raises(WebhookVerificationError, match="topic"):
        apply_ses_events(
            store, body(message), topic_arns=["arn:aws:sns:eu-west-1:1:other"], fetch=aws_sns.fetch
        )
    with pytest.raises(WebhookVerificationError, match="SignatureVersion"):
        apply_ses_events(
            store,
            body({**message, "SignatureVersion": "3"}),
            topic_arns=[TOPIC],
            fetch=aws_sns.fetch,
        )
    # A version-1 signature is not accepted as version 2.
    with pytest.raises(WebhookVerificationError):
        apply_ses_events(
            store,
            body({**message, "SignatureVersion": "2"}),
            topic_arns=[TOPIC],
            fetch=aws_sns.fetch,
        )
    assert store.get("n-1").state is DeliveryState.SENT


def test_an_expired_certificate_is_refused() -> None:
    old = FakeSns(days_valid=1)
    message = old.message(
        Message=ses_event("Delivery"), SigningCertURL=CERT_URL.replace(".pem", "-old.pem")
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    with pytest.raises(WebhookVerificationError, match="not valid"):
        apply_ses_events(
            MemoryStatusStore(), body(message), topic_arns=[TOPIC], fetch=old.fetch, now=later
        )


def test_what_is_not_an_sns_message_is_a_payload_error(aws_sns: FakeSns) -> None:
    with pytest.raises(WebhookPayloadError):
        apply_ses_events(MemoryStatusStore(), b"[1, 2]", topic_arns=[TOPIC], fetch=aws_sns.fetch)
    with pytest.raises(WebhookPayloadError):
        apply_ses_events(
            MemoryStatusStore(),
            body(aws_sns.message(Message="not json")),
            topic_arns=[TOPIC],
            fetch=aws_sns.fetch,
        )


def test_the_router_entry_takes_the_topic_as_its_secret(
    aws_sns: FakeSns, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenant_notify.webhooks import sns

    monkeypatch.setattr(sns, "default_fetch", aws_sns.fetch)
    store = MemoryStatusStore()
    sent(store, "n-1", provider="ses", provider_message_id="ses-msg-1", tenant_id="acme")
    request = WebhookRequest(
        body=body(aws_sns.message(Message=ses_event("Delivery"))),
        headers={},
        url="https://shop.example/hook",
    )
    [event] = RECEIVERS["ses"](
        store, request, f"arn:aws:sns:eu-west-1:1:x, {TOPIC}", tenant_id="acme"
    )
    assert event.applied
