"""SesProvider against moto's server mode on loopback (an AWS emulator), signing every
request with SigV4; what SES accepted is read back from moto."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import Attachment, EmailOptions, Notifier
from tenant_notify.errors import (
    ConfigurationError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnsupportedFeatureError,
)
from tenant_notify.models import Address, DeliveryState, EmailMessage
from tenant_notify.providers.ses import SesProvider
from tests.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer

SENDER = "orders@acme.test"


def make_email(**changes: Any) -> EmailMessage:
    fields: dict[str, Any] = {
        "from_addr": Address(SENDER, "Acme Shöp"),
        "to": (Address("juergen@example.com", "Jürgen Groß"),),
        "subject": "Ihre Bestellung ✓",
        "text": "Grüße aus Köln.\n",
        "html": "<p>Grüße aus <b>Köln</b>.</p>",
        "headers": {"X-Campaign": "frühling"},
        "notification_id": "n-1",
        "tenant_id": "acme",
        "kind": "order_confirmation",
    }
    fields.update(changes)
    return EmailMessage(**fields)


@pytest.fixture
def ses(aws: MotoServer) -> Iterator[SesProvider]:
    aws.client("ses").verify_email_identity(EmailAddress=SENDER)
    with SesProvider(
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        endpoint_url=aws.url,
        read_timeout=10,
    ) as provider:
        yield provider


def test_a_plain_email_goes_as_simple_content(aws: MotoServer, ses: SesProvider) -> None:
    result = ses.send(make_email())
    [sent] = aws.sent_emails()
    assert sent["id"] == result.provider_message_id
    assert sent["subject"] == "Ihre Bestellung ✓"
    assert sent["body"] == "<p>Grüße aus <b>Köln</b>.</p>"
    assert sent["destinations"]["ToAddresses"] == [
        "=?utf-8?b?SsO8cmdlbiBHcm/Dnw==?= <juergen@example.com>"
    ]
    payload = ses.build_payload(make_email())
    assert payload["Content"]["Simple"]["Headers"] == [
        {"Name": "X-Campaign", "Value": "frühling"},
        {"Name": "X-Tenant-Notify-Id", "Value": "n-1"},
    ]
    assert result.provider == "ses"


def test_attachments_go_as_raw_mime_with_every_recipient(aws: MotoServer, ses: SesProvider) -> None:
    pdf = Attachment(filename="Rechnung.pdf", content=b"%PDF-1.4\x00\xff" * 100)
    result = ses.send(
        make_email(
            cc=(Address("carl@example.com"),),
            bcc=(Address("audit@example.com"),),
            attachments=(pdf,),
            metadata={"order": "1042"},
        )
    )
    [raw] = aws.sent_raw_emails()
    assert raw["id"] == result.provider_message_id
    assert {"juergen@example.com", "carl@example.com", "audit@example.com"} <= {
        email.utils.parseaddr(d)[1] for d in raw["destinations"]
    }
    parsed = email.message_from_string(raw["raw_data"], policy=email.policy.default)
    assert parsed["Cc"] == "carl@example.com" and parsed["Bcc"] is None
    assert "audit@example.com" not in raw["raw_data"]
    [part] = [p for p in parsed.walk() if p.get_filename()]
    assert (part.get_filename(), part.get_content()) == ("Rechnung.pdf", pdf.content)
    assert ses.build_payload(make_email(metadata={"order": "1042"}))["EmailTags"] == [
        {"Name": "order", "Value": "1042"}
    ]


def test_a_sender_ses_does_not_know_is_a_permanent_rejection(ses: SesProvider) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        ses.send(make_email(from_addr=Address("unknown@acme.test")))
    err = info.value
    assert err.provider == "ses" and err.notification_id == "n-1"
    assert err.provider_response is not None
    assert err.provider_response.startswith("400 MessageRejected:")
    assert SECRET_KEY not in str(err)


def _enable_auth(aws: MotoServer) -> tuple[str, str]:
    """Turn on moto's signature checks; return an IAM user's own access key."""
    iam = aws.client("iam")
    iam.create_user(UserName="sender")
    iam.put_user_policy(
        UserName="sender",
        PolicyName="send",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="sender")["AccessKey"]
    aws.client("ses").verify_email_identity(EmailAddress=SENDER)
    aws.require_signatures()
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_the_signature_is_checked_by_the_emulator(aws: MotoServer) -> None:
    key_id, secret = _enable_auth(aws)
    try:
        options = {"region": REGION, "endpoint_url": aws.url, "access_key_id": key_id}
        with SesProvider(secret_access_key=secret, **options) as good:
            assert good.send(make_email()).provider_message_id
        with (
            SesProvider(secret_access_key=secret[::-1], **options) as bad,
            pytest.raises(PermanentDeliveryError) as info,
        ):
            bad.send(make_email())
        assert "403" in str(info.value) and "signature" in str(info.value).lower()
        assert secret[::-1] not in str(info.value)
    finally:
        aws.require_signatures(float("inf"))


def test_session_tokens_are_sent_and_signed(aws: MotoServer) -> None:
    with SesProvider(
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        session_token="FwoGZXIvYXdzE-token",
        endpoint_url=aws.url,
    ) as provider:
        request = provider._http().build_request("POST", "/v2/email/outbound-emails", content=b"{}")
        flow = provider.auth().auth_flow(request)
        signed = next(flow)
    assert signed.headers["x-amz-security-token"] == "FwoGZXIvYXdzE-token"
    assert "x-amz-security-token" in signed.headers["authorization"]
    assert f"Credential={ACCESS_KEY}/" in signed.headers["authorization"]
    assert f"/{REGION}/ses/aws4_request" in signed.headers["authorization"]


def test_tags_are_refused_and_metadata_must_fit_email_tags() -> None:
    with pytest.raises(UnsupportedFeatureError, match="tags"):
        SesProvider.check_options(_options(tags=["spring"]))
    with pytest.raises(UnsupportedFeatureError, match="email tags"):
        SesProvider.check_options(_options(metadata={"order": "10 42"}))
    SesProvider.check_options(_options(metadata={"order": "1042"}, cc="c@example.com"))


@pytest.mark.parametrize(
    ("status", "error_type", "raised"),
    [
        (429, "TooManyRequestsException", TransientDeliveryError),
        (400, "LimitExceededException", TransientDeliveryError),
        (400, "AccountSuspendedException", PermanentDeliveryError),
        (400, "MessageRejected", PermanentDeliveryError),
        (503, "ServiceUnavailable", TransientDeliveryError),
    ],
)
def test_ses_error_codes_are_classified(status: int, error_type: str, raised: type) -> None:
    import httpx

    provider = SesProvider(region=REGION, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    response = httpx.Response(
        status,
        headers={"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/"},
        json={"message": "scripted"},
    )
    err = provider._refused(
        response, {"provider": "ses", "notification_id": None, "tenant_id": None}
    )
    assert type(err) is raised
    assert err.provider_response == f"{status} {error_type}: scripted"


def test_settings_are_checked_without_showing_the_secret() -> None:
    with pytest.raises(ConfigurationError) as info:
        Notifier.from_settings(
            {
                "email": {
                    "provider": "ses",
                    "region": "nowhere",
                    "access_key_id": ACCESS_KEY,
                    "secret_access_key": "s3cr3t-value",
                }
            }
        )
    assert info.value.key == "email.region"
    assert "s3cr3t-value" not in str(info.value)
    provider = SesProvider(region="us-east-1", access_key_id=ACCESS_KEY, secret_access_key="x")
    assert provider.config.base_url == "https://email.us-east-1.amazonaws.com"
    assert "x" not in repr(provider.config.secret_access_key)


def test_through_the_notifier_the_status_is_sent(aws: MotoServer) -> None:
    aws.client("ses").verify_email_identity(EmailAddress=SENDER)
    settings = {
        "transport": "eager",
        "email": {
            "provider": "ses",
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "endpoint_url": aws.url,
        },
        "tenants": {"acme": {"name": "Acme", "email_from": SENDER}},
    }
    with Notifier.from_settings(settings) as notify:
        status = notify.send_email(
            to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme"
        ).wait(5)
    assert status.state is DeliveryState.SENT
    [sent] = aws.sent_emails()
    assert status.provider_message_id == sent["id"]


def _options(**options: Any) -> EmailOptions:
    built = EmailOptions.build(**options)
    assert built is not None
    return built


def test_without_botocore_the_extra_is_named_when_the_notifier_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from tenant_notify.errors import MissingDependencyError

    for name in ("tenant_notify.providers._aws", "tenant_notify.providers.ses"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "botocore", None)
    table = {"provider": "ses", "region": REGION, "access_key_id": ACCESS_KEY,
             "secret_access_key": SECRET_KEY}  # fmt: skip
    with pytest.raises(MissingDependencyError) as info:
        Notifier.from_settings({"email": table})
    assert info.value.extra == "aws" and info.value.key == "email.provider"
