"""Failover: a channel's fallback providers, tried by the dispatcher only when the
message was certainly not accepted. Real servers on loopback (SendGrid and Twilio
fakes, aiosmtpd)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from tenant_notify import Notifier
from tenant_notify.config import load_settings
from tenant_notify.errors import (
    ConfigurationError,
    PermanentDeliveryError,
    UnsupportedChannelError,
)
from tenant_notify.models import DeliveryState
from tenant_notify.testing import ScriptedProvider, capture_logs, get_outbox
from tests.http_fakes import FakeProviderAPI, Reply, closed_port, sendgrid_error, twilio_error
from tests.smtp_server import LoopbackSMTPServer

KEY = "SG.platform.a2V5"
ACCOUNT = "AC" + "1" * 32
TOKEN = "tw-token-1"
TENANTS = {
    "acme": {
        "name": "Acme Shop",
        "email_from": "Acme Shop <orders@acme.test>",
        "sms_from": "+15005550006",
    },
}


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.sendgrid_keys.add(KEY)
    fake_api.twilio_credentials[(ACCOUNT, TOKEN)] = ACCOUNT
    return fake_api


def email_settings(base_url: str, smtp: LoopbackSMTPServer, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "transport": "eager",
        "email": {
            "provider": "sendgrid",
            "api_key": KEY,
            "base_url": base_url,
            "read_timeout": 0.3,
            "fallback": [{"provider": "smtp", "host": smtp.host, "port": smtp.port, "timeout": 5}],
        },
        "tenants": TENANTS,
        "retry": {"initial_delay": 0, "jitter": 0, "max_attempts": 1},
    }
    config.update(changes)
    return config


def send(notify: Notifier, tenant_id: str = "acme") -> Any:
    return notify.send_welcome_email(
        user_email="jane@example.com", user_name="Jane", tenant_id=tenant_id
    ).status()


# --- when it fails over ----------------------------------------------------------------


def test_refused_connection_fails_over_to_smtp(smtp_server: LoopbackSMTPServer) -> None:
    refused = f"http://127.0.0.1:{closed_port()}"
    with (
        capture_logs() as logs,
        Notifier.from_settings(email_settings(refused, smtp_server)) as notify,
    ):
        status = send(notify)
    assert status.state is DeliveryState.SENT
    assert status.provider == "smtp"  # the provider that finally handled it
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ("jane@example.com",)
    assert f"<{status.provider_message_id}>" == received.message["Message-ID"]
    [failover] = [e for e in logs if e["event"] == "provider_failover"]
    assert failover["provider"] == "sendgrid" and failover["next_provider"] == "smtp"
    assert failover["error_type"] == "TransientDeliveryError"
    assert failover["log_level"] == "warning"
    assert KEY not in repr(logs)


@pytest.mark.parametrize(
    "reply",
    [
        sendgrid_error(500, "internal error"),
        sendgrid_error(429, "too many requests", headers={"X-RateLimit-Reset": "1"}),
        sendgrid_error(401, "The provided authorization grant is invalid"),
        sendgrid_error(400, "The from address does not match a verified Sender Identity."),
    ],
    ids=["500", "429", "401", "400-not-recipient"],
)
def test_refusals_before_acceptance_fail_over(
    api: FakeProviderAPI, smtp_server: LoopbackSMTPServer, reply: Reply
) -> None:
    api.script(reply)
    with Notifier.from_settings(email_settings(api.url, smtp_server)) as notify:
        status = send(notify)
    assert status.state is DeliveryState.SENT and status.provider == "smtp"
    assert len(smtp_server.wait_for(1)) == 1


# --- when it does not --------------------------------------------------------------------


def test_ambiguous_timeout_does_not_fail_over(
    api: FakeProviderAPI, smtp_server: LoopbackSMTPServer
) -> None:
    api.script(Reply.stall(2.0))
    with (
        capture_logs() as logs,
        Notifier.from_settings(email_settings(api.url, smtp_server)) as notify,
    ):
        status = send(notify)
    assert status.state is DeliveryState.FAILED
    assert status.error_type == "AmbiguousDeliveryError" and status.provider == "sendgrid"
    assert len(api.requests) == 1
    assert smtp_server.messages == []  # never sent twice
    assert not [e for e in logs if e["event"] == "provider_failover"]


def test_dropped_connection_after_the_request_does_not_fail_over(
    api: FakeProviderAPI, smtp_server: LoopbackSMTPServer
) -> None:
    api.script(Reply.drop_connection())
    with Notifier.from_settings(email_settings(api.url, smtp_server)) as notify:
        status = send(notify)
    assert status.state is DeliveryState.FAILED
    assert smtp_server.messages == []


def test_refused_recipient_does_not_fail_over(
    api: FakeProviderAPI, smtp_server: LoopbackSMTPServer
) -> None:
    api.script(sendgrid_error(400, "Invalid address", "personalizations.0.to.0.email"))
    with Notifier.from_settings(email_settings(api.url, smtp_server)) as notify:
        status = send(notify)
    assert status.state is DeliveryState.FAILED and status.provider == "sendgrid"
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    ("code", "fails_over"),
    [(21211, False), (21610, False), (21614, False), (21408, True), (20003, True)],
)
def test_twilio_codes_and_sms_failover(api: FakeProviderAPI, code: int, fails_over: bool) -> None:
    api.script(twilio_error(401 if code == 20003 else 400, code, f"scripted {code}"))
    config = {
        "transport": "eager",
        "sms": {
            "provider": "twilio",
            "account_sid": ACCOUNT,
            "auth_token": TOKEN,
            "base_url": api.url,
            "fallback": [{"provider": "memory", "outbox": "sms-fallback"}],
        },
        "tenants": TENANTS,
        "retry": {"max_attempts": 1},
    }
    with Notifier.from_settings(config) as notify:
        status = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="acme").status()
    outbox = get_outbox("sms-fallback")
    if fails_over:
        assert status.state is DeliveryState.SENT and status.provider == "memory"
        assert len(outbox.sms) == 1
    else:
        assert status.state is DeliveryState.FAILED and status.provider == "twilio"
        assert str(code) in (status.error or "")
        assert len(outbox) == 0


@pytest.mark.parametrize(
    ("reply", "fails_over"),
    [("550 5.1.1 no such user", False), ("554 5.7.1 relaying denied", True)],
)
def test_smtp_rcpt_refusals(smtp_server: LoopbackSMTPServer, reply: str, fails_over: bool) -> None:
    smtp_server.reject_recipient("jane@example.com", reply)
    config = {
        "transport": "eager",
        "email": {
            "provider": "smtp",
            "host": smtp_server.host,
            "port": smtp_server.port,
            "fallback": [{"provider": "memory", "outbox": "mail-fallback"}],
        },
        "tenants": TENANTS,
        "retry": {"max_attempts": 1},
    }
    with Notifier.from_settings(config) as notify:
        status = send(notify)
    outbox = get_outbox("mail-fallback")
    if fails_over:
        assert status.provider == "memory" and len(outbox.emails) == 1
    else:
        assert status.state is DeliveryState.FAILED and status.provider == "smtp"
        assert reply in (status.error or "") and len(outbox) == 0


# --- retries across the chain ------------------------------------------------------------


def scripted_settings(first: ScriptedProvider, second: ScriptedProvider, **retry: Any) -> Any:
    return {
        "transport": "eager",
        "email": {"provider": first, "fallback": [{"provider": second}]},
        "tenants": TENANTS,
        "retry": {"initial_delay": 0, "jitter": 0, **retry},
    }


def test_when_every_provider_fails_transiently_the_retry_starts_at_the_first() -> None:
    first = ScriptedProvider(["transient", "ok"], outbox="first")
    second = ScriptedProvider(["transient"], outbox="second")
    with Notifier.from_settings(scripted_settings(first, second)) as notify:
        status = send(notify)
    assert status.state is DeliveryState.SENT and status.attempts == 2
    assert len(first.attempts) == 2 and len(second.attempts) == 1
    assert len(first.outbox) == 1


def test_a_transient_error_anywhere_in_the_chain_keeps_the_notification_retrying() -> None:
    first = ScriptedProvider(["transient"], then="ok", outbox="first")
    second = ScriptedProvider(["permanent"], then="permanent", outbox="second")
    with Notifier.from_settings(scripted_settings(first, second, max_attempts=3)) as notify:
        status = send(notify)
    # Attempt 1: first transient, second permanent -> retried (the first may recover).
    assert status.state is DeliveryState.SENT and status.attempts == 2


def test_all_permanent_fails_with_the_last_error() -> None:
    first = ScriptedProvider([PermanentDeliveryError("the first says no")], outbox="first")
    second = ScriptedProvider([PermanentDeliveryError("the second says no")], outbox="second")
    with Notifier.from_settings(scripted_settings(first, second)) as notify:
        status = send(notify)
    assert status.state is DeliveryState.FAILED and status.attempts == 1
    assert status.error_type == "PermanentDeliveryError"
    assert status.error is not None and "the second says no" in status.error
    assert len(first.attempts) == 1 and len(second.attempts) == 1


def test_tenant_with_its_own_account_falls_back_to_the_platform_provider(
    smtp_server: LoopbackSMTPServer,
) -> None:
    config = {
        "transport": "eager",
        "email": {"provider": "smtp", "host": smtp_server.host, "port": smtp_server.port},
        "tenants": {
            "acme": {
                **TENANTS["acme"],
                "email": {
                    "provider": "sendgrid",
                    "api_key": "SG.acme.own",
                    "base_url": f"http://127.0.0.1:{closed_port()}",
                    "fallback": ["default"],
                },
            },
        },
        "retry": {"max_attempts": 1},
    }
    with Notifier.from_settings(config) as notify:
        status = send(notify)
        assert notify.dispatcher.providers.provider_names(
            notify.tenants.get("acme"), status.channel
        ) == ("sendgrid", "smtp")
    assert status.state is DeliveryState.SENT and status.provider == "smtp"
    assert len(smtp_server.wait_for(1)) == 1


# --- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key", "error"),
    [
        (
            {"email": {"provider": "memory", "fallback": [{"provider": "smtp", "port": 0}]}},
            "email.fallback.0.port",
            ConfigurationError,
        ),
        (
            {
                "email": {
                    "provider": "memory",
                    "fallback": [{"provider": "memory"}, {"provider": "smtp", "hots": "x"}],
                }
            },
            "email.fallback.1.hots",
            ConfigurationError,
        ),
        (
            {"email": {"provider": "memory", "fallback": [{"provider": "twilio"}]}},
            "email.fallback.0.provider",
            UnsupportedChannelError,
        ),
        (
            {"email": {"provider": "memory", "fallback": [{"host": "x"}]}},
            "email.fallback.0",
            ConfigurationError,
        ),
        (
            {"email": {"provider": "memory", "fallback": ["default"]}},
            "email.fallback.0",
            ConfigurationError,
        ),
        (
            {
                "email": {
                    "provider": "memory",
                    "fallback": [{"provider": "memory", "fallback": []}],
                }
            },
            "email.fallback.0.fallback",
            ConfigurationError,
        ),
        (
            {"email": {"provider": "memory", "fallback": 3}},
            "email.fallback",
            ConfigurationError,
        ),
        (
            {
                "tenants": {
                    "a": {
                        "name": "A",
                        "email": {
                            "provider": "memory",
                            "fallback": [
                                {"provider": "sendgrid", "api_key": "SG.x", "base_url": "x"}
                            ],
                        },
                    }
                }
            },
            "tenants.a.email.fallback.0.base_url",
            ConfigurationError,
        ),
    ],
)
def test_fallback_tables_are_validated_at_build(
    settings: dict[str, Any], key: str, error: type
) -> None:
    with pytest.raises(error) as info:
        Notifier.from_settings({"transport": "eager", **settings})
    assert info.value.key == key


def test_secrets_in_fallback_tables_are_protected() -> None:
    settings = load_settings(
        {
            "email": {
                "provider": "memory",
                "fallback": [{"provider": "smtp", "username": "u", "password": "pw-1"}],
            },
            "tenants": {
                "a": {
                    "name": "A",
                    "email": {"fallback": [{"provider": "sendgrid", "api_key": "SG.pw-2"}]},
                }
            },
        }
    )
    assert isinstance(settings.email["fallback"][0]["password"], SecretStr)
    tenant_email = settings.tenants["a"].email
    assert tenant_email is not None
    assert isinstance(tenant_email["fallback"][0]["api_key"], SecretStr)
    assert "pw-1" not in repr(settings) and "SG.pw-2" not in repr(settings)
