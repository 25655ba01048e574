"""TwilioProvider against a loopback fake of the Messages API that checks every request
against Twilio's published schema (tests/http_fakes.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import Notifier
from tenant_notify.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tenant_notify.models import DeliveryState, SmsMessage
from tenant_notify.providers.twilio import TwilioProvider
from tenant_notify.webhooks import apply_twilio_callback, twilio_signature
from tests.http_fakes import FakeProviderAPI, Reply, closed_port, twilio_error

ACCOUNT = "AC" + "1" * 32
TOKEN = "tw-auth-token-acct-1"
KEY_SID = "SK" + "2" * 32
KEY_SECRET = "tw-api-key-secret-2"
SERVICE = "MG" + "3" * 32
ACME_ACCOUNT = "AC" + "a" * 32
ACME_TOKEN = "tw-auth-token-acme"
SID = re.compile(r"^SM[0-9a-f]{32}$")


def make_sms(**changes: Any) -> SmsMessage:
    fields: dict[str, Any] = {
        "from_number": "+15005550006",
        "to": "+4915112345678",
        "body": "Grüße: Ihre Bestellung ist unterwegs ✓",
        "notification_id": "n-1",
        "tenant_id": "acme",
        "kind": "sms",
    }
    fields.update(changes)
    return SmsMessage(**fields)


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.twilio_credentials.update(
        {
            (ACCOUNT, TOKEN): ACCOUNT,
            (KEY_SID, KEY_SECRET): ACCOUNT,
            (ACME_ACCOUNT, ACME_TOKEN): ACME_ACCOUNT,
        }
    )
    return fake_api


@pytest.fixture
def provider(api: FakeProviderAPI) -> Iterator[TwilioProvider]:
    with TwilioProvider(account_sid=ACCOUNT, auth_token=TOKEN, base_url=api.url) as p:
        yield p


def test_send_with_auth_token(api: FakeProviderAPI, provider: TwilioProvider) -> None:
    result = provider.send(make_sms())

    [request] = api.requests
    assert request.schema_errors == ()
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    assert request.credential == f"{ACCOUNT}:{TOKEN}"
    assert request.form == {
        "To": ["+4915112345678"],
        "From": ["+15005550006"],
        "Body": ["Grüße: Ihre Bestellung ist unterwegs ✓"],
    }
    assert result.provider == "twilio"
    assert result.provider_message_id is not None and SID.match(result.provider_message_id)
    assert result.detail["status"] == "queued"


def test_send_with_an_api_key_a_messaging_service_and_a_status_callback(
    api: FakeProviderAPI,
) -> None:
    with TwilioProvider(
        account_sid=ACCOUNT,
        api_key_sid=KEY_SID,
        api_key_secret=KEY_SECRET,
        messaging_service_sid=SERVICE,
        status_callback="https://shop.example/hooks/twilio?tenant=acme",
        base_url=api.url,
    ) as provider:
        provider.send(make_sms())
    [request] = api.requests
    assert request.credential == f"{KEY_SID}:{KEY_SECRET}"
    assert request.form is not None
    assert "From" not in request.form
    assert request.form["MessagingServiceSid"] == [SERVICE]
    assert request.form["StatusCallback"] == ["https://shop.example/hooks/twilio?tenant=acme"]


def test_keep_alive(api: FakeProviderAPI, provider: TwilioProvider) -> None:
    for n in range(4):
        provider.send(make_sms(notification_id=f"n-{n}"))
    assert api.connections == 1


@pytest.mark.parametrize(
    ("status", "code", "error", "recipient"),
    [
        (400, 21211, PermanentDeliveryError, True),
        (400, 21610, PermanentDeliveryError, True),
        (400, 21614, PermanentDeliveryError, True),
        (400, 21408, PermanentDeliveryError, False),
        (400, 21602, PermanentDeliveryError, False),
        (401, 20003, PermanentDeliveryError, False),
        (429, 20429, TransientDeliveryError, False),
        (500, 20500, TransientDeliveryError, False),
        (503, 20503, TransientDeliveryError, False),
    ],
)
def test_error_codes_map_to_the_error_tree(
    api: FakeProviderAPI,
    provider: TwilioProvider,
    status: int,
    code: int,
    error: type,
    recipient: bool,
) -> None:
    api.script(twilio_error(status, code, f"scripted {code}"))
    with pytest.raises(error) as info:
        provider.send(make_sms())
    err = info.value
    assert type(err) is error
    assert err.recipient_error is recipient
    assert err.provider_response == (
        f"{status} code {code}: scripted {code} (https://www.twilio.com/docs/errors/{code})"
    )
    assert err.provider == "twilio" and err.notification_id == "n-1"


def test_rate_limit_code_on_any_status_is_transient_with_retry_after(
    api: FakeProviderAPI, provider: TwilioProvider
) -> None:
    api.script(twilio_error(429, 20429, "Too Many Requests", headers={"Retry-After": "7"}))
    with pytest.raises(TransientDeliveryError) as info:
        provider.send(make_sms())
    assert info.value.retry_after == 7


def test_wrong_token_is_refused_and_never_quoted(api: FakeProviderAPI) -> None:
    wrong = "not-the-token-xyz"
    api.script(twilio_error(401, 20003, f"Authenticate {wrong}"))
    with TwilioProvider(account_sid=ACCOUNT, auth_token=wrong, base_url=api.url) as provider:
        with pytest.raises(PermanentDeliveryError) as info:
            provider.send(make_sms())
        assert wrong not in repr(provider)
    assert wrong not in str(info.value)


def test_connection_refused_is_transient() -> None:
    with (
        TwilioProvider(
            account_sid=ACCOUNT, auth_token=TOKEN, base_url=f"http://127.0.0.1:{closed_port()}"
        ) as provider,
        pytest.raises(TransientDeliveryError),
    ):
        provider.send(make_sms())


def test_read_timeout_is_ambiguous(api: FakeProviderAPI) -> None:
    api.script(Reply.stall(2.0))
    with (
        TwilioProvider(
            account_sid=ACCOUNT, auth_token=TOKEN, base_url=api.url, read_timeout=0.3
        ) as provider,
        pytest.raises(AmbiguousDeliveryError),
    ):
        provider.send(make_sms())


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"account_sid": ACCOUNT}, "sms"),
        ({"account_sid": "AC123", "auth_token": "t"}, "sms.account_sid"),
        (
            {"account_sid": ACCOUNT, "auth_token": "t", "api_key_sid": KEY_SID},
            "sms",
        ),
        ({"account_sid": ACCOUNT, "api_key_sid": KEY_SID}, "sms"),
        (
            {"account_sid": ACCOUNT, "auth_token": "t", "messaging_service_sid": "MG1"},
            "sms.messaging_service_sid",
        ),
        (
            {"account_sid": ACCOUNT, "auth_token": "t", "status_callback": "ftp://x"},
            "sms.status_callback",
        ),
        ({"account_sid": ACCOUNT, "auth_token": "t", "from": "+1555"}, "sms.from"),
    ],
)
def test_bad_settings_fail_at_build(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Notifier.from_settings({"transport": "eager", "sms": {"provider": "twilio", **table}})
    assert info.value.key == key


# --- through the Notifier --------------------------------------------------------------


def settings(api: FakeProviderAPI, transport: str, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "transport": {"backend": transport, "workers": 2},
        "sms": {
            "provider": "twilio",
            "account_sid": ACCOUNT,
            "auth_token": TOKEN,
            "base_url": api.url,
            "read_timeout": 2,
        },
        "tenants": {
            "acme": {
                "name": "Acme Shop",
                "sms_from": "+15005550006",
                # The shop's own Twilio account.
                "sms": {"account_sid": ACME_ACCOUNT, "auth_token": ACME_TOKEN},
            },
            "globex": {"name": "Globex", "sms_from": "Globex"},
        },
        "retry": {"initial_delay": 0.01, "jitter": 0},
    }
    config.update(changes)
    return config


@pytest.mark.parametrize("transport", ["eager", "inprocess"])
def test_each_tenant_texts_through_its_own_account(api: FakeProviderAPI, transport: str) -> None:
    with Notifier.from_settings(settings(api, transport)) as notify:
        acme = notify.send_sms(to_phone="+15551234567", body="Hallo ✓", tenant_id="acme")
        globex = notify.send_sms(to_phone="+15551234568", body="Hi", tenant_id="globex")
        statuses = {"acme": acme.wait(5), "globex": globex.wait(5)}
    for status in statuses.values():
        assert status.state is DeliveryState.SENT and status.provider == "twilio"
        assert status.provider_message_id and SID.match(status.provider_message_id)
    by_path = {r.path: r.credential for r in api.requests}
    assert by_path == {
        f"/2010-04-01/Accounts/{ACME_ACCOUNT}/Messages.json": f"{ACME_ACCOUNT}:{ACME_TOKEN}",
        f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json": f"{ACCOUNT}:{TOKEN}",
    }
    [globex_request] = [r for r in api.requests if ACCOUNT in r.path]
    assert globex_request.form is not None and globex_request.form["From"] == ["Globex"]


def test_21211_fails_at_once_with_twilios_message(api: FakeProviderAPI) -> None:
    api.script(
        twilio_error(400, 21211, "The 'To' number +15551234567 is not a valid phone number.")
    )
    with Notifier.from_settings(settings(api, "eager")) as notify:
        status = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="globex").status()
    assert status.state is DeliveryState.FAILED and status.attempts == 1
    assert status.error is not None and "21211" in status.error
    assert "is not a valid phone number" in status.error
    assert TOKEN not in status.error


def test_ambiguous_timeout_is_not_retried_so_no_second_sms(api: FakeProviderAPI) -> None:
    api.script(Reply.stall(2.0))
    config = settings(api, "eager")
    config["sms"]["read_timeout"] = 0.3
    with Notifier.from_settings(config) as notify:
        status = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="globex").status()
    assert status.state is DeliveryState.FAILED
    assert status.error_type == "AmbiguousDeliveryError"
    assert len(api.requests) == 1


def test_retry_ambiguous_opt_in_sends_again(api: FakeProviderAPI) -> None:
    api.script(Reply.stall(2.0))
    config = settings(
        api, "eager", retry={"initial_delay": 0.01, "jitter": 0, "retry_ambiguous": True}
    )
    config["sms"]["read_timeout"] = 0.3
    with Notifier.from_settings(config) as notify:
        status = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="globex").status()
    assert status.state is DeliveryState.SENT and status.attempts == 2
    assert len(api.requests) == 2  # the first may have gone out too: the documented risk


def test_a_status_callback_finds_the_sms_by_its_sid(api: FakeProviderAPI) -> None:
    url = "https://shop.example/hooks/twilio"
    config = settings(api, "eager")
    config["sms"]["status_callback"] = url
    with Notifier.from_settings(config) as notify:
        receipt = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="globex")
        sid = receipt.status().provider_message_id
        assert sid is not None
        params = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": ACCOUNT}
        signature = twilio_signature(url, params, TOKEN)
        event = apply_twilio_callback(notify, url, params, signature, TOKEN)
        assert event.applied
        assert receipt.status().state is DeliveryState.DELIVERED
    [request] = api.requests
    assert request.form is not None and request.form["StatusCallback"] == [url]
