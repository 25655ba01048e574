"""SnsProvider against moto's server mode on loopback: the SMS arrives in the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tenant_notify import Notifier
from tenant_notify.errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from tenant_notify.models import DeliveryState, SmsMessage
from tenant_notify.providers.sns import SnsProvider
from tests.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer

pytestmark = pytest.mark.integration


def sms(**changes: Any) -> SmsMessage:
    fields: dict[str, Any] = {
        "from_number": "+15005550006",
        "to": "+447700900123",
        "body": "Ihre Bestellung ✓ ist unterwegs.",
        "notification_id": "n-1",
        "tenant_id": "acme",
        "kind": "sms",
    }
    fields.update(changes)
    return SmsMessage(**fields)


@pytest.fixture
def sns(aws: MotoServer) -> Iterator[SnsProvider]:
    with SnsProvider(
        region=REGION, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, endpoint_url=aws.url
    ) as provider:
        yield provider


def test_an_sms_arrives_in_the_emulator(aws: MotoServer, sns: SnsProvider) -> None:
    result = sns.send(sms())
    [published] = aws.sns_sms()
    assert published == {
        "message_id": result.provider_message_id,
        "phone_number": "+447700900123",
        "message": "Ihre Bestellung ✓ ist unterwegs.",
    }
    assert result.provider == "sns"


def test_sender_and_type_attributes(sns: SnsProvider) -> None:
    form = dict(sns.build_form(sms()))
    assert form["MessageAttributes.entry.1.Name"] == "AWS.SNS.SMS.SMSType"
    assert form["MessageAttributes.entry.1.Value.StringValue"] == "Transactional"
    assert form["MessageAttributes.entry.2.Name"] == "AWS.MM.SMS.OriginationNumber"
    alpha = dict(sns.build_form(sms(from_number="AcmeShop")))
    assert alpha["MessageAttributes.entry.2.Name"] == "AWS.SNS.SMS.SenderID"
    assert alpha["MessageAttributes.entry.2.Value.StringValue"] == "AcmeShop"
    body = sns.build_request(sms()).content
    assert parse_qs(body.decode())["Action"] == ["Publish"]


def test_an_sms_through_the_notifier(aws: MotoServer) -> None:
    settings = {
        "transport": "eager",
        "sms": {
            "provider": "sns",
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "endpoint_url": aws.url,
            "sender_id": "AcmeShop",
            "sms_type": "Promotional",
        },
        "tenants": {"acme": {"name": "Acme", "sms_from": "+15005550006"}},
    }
    with Notifier.from_settings(settings) as notify:
        status = notify.send_sms(to_phone="+14155550100", body="Shipped.", tenant_id="acme").wait(5)
    assert status.state is DeliveryState.SENT
    [published] = aws.sns_sms()
    assert (published["phone_number"], published["message"]) == ("+14155550100", "Shipped.")
    assert status.provider_message_id == published["message_id"]


def test_a_refused_message_is_permanent_with_snss_reason(sns: SnsProvider) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        sns.send(sms(body="x" * 1700))
    assert info.value.provider_response == (
        "400 InvalidParameter: SMS message must be less than 1600 bytes"
    )
    assert not info.value.recipient_error


def _error(status: int, code: str, message: str) -> httpx.Response:
    body = (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error>'
        f"<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
        "</Error><RequestId>r-1</RequestId></ErrorResponse>"
    )
    return httpx.Response(status, content=body.encode(), headers={"Content-Type": "text/xml"})


@pytest.mark.parametrize(
    ("response", "raised", "recipient"),
    [
        (_error(400, "Throttling", "Rate exceeded"), TransientDeliveryError, False),
        (_error(400, "KMSThrottling", "slow"), TransientDeliveryError, False),
        (_error(400, "OptedOut", "Phone number is opted out"), PermanentDeliveryError, True),
        (
            _error(400, "InvalidParameter", "Invalid parameter: PhoneNumber Reason: bad"),
            PermanentDeliveryError,
            True,
        ),
        (_error(403, "AuthorizationError", "not allowed"), PermanentDeliveryError, False),
        (_error(500, "InternalError", "oops"), TransientDeliveryError, False),
        (
            httpx.Response(400, content=b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'),
            PermanentDeliveryError,
            False,
        ),
    ],
)
def test_sns_error_codes_are_classified(response, raised, recipient) -> None:
    provider = SnsProvider(region=REGION, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    err = provider._refused(
        response, {"provider": "sns", "notification_id": None, "tenant_id": None}
    )
    assert type(err) is raised
    assert err.recipient_error is recipient


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        Notifier.from_settings(
            {
                "sms": {
                    "provider": "sns",
                    "region": REGION,
                    "access_key_id": ACCESS_KEY,
                    "secret_access_key": SECRET_KEY,
                    "sender_id": "way-too-long-sender",
                }
            }
        )
    assert info.value.key == "sms.sender_id"
    assert SECRET_KEY not in str(info.value)
