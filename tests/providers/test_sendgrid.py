"""SendGridProvider against a loopback fake of /v3/mail/send that checks every request
against SendGrid's published schema (tests/http_fakes.py)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import Notifier
from tenant_notify.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    HeaderInjectionError,
    MissingDependencyError,
    PermanentDeliveryError,
    TransientDeliveryError,
    ValidationError,
)
from tenant_notify.models import Address, Attachment, DeliveryState, EmailMessage
from tenant_notify.providers.sendgrid import SendGridProvider
from tenant_notify.testing import capture_logs
from tenant_notify.webhooks import apply_sendgrid_events
from tests.http_fakes import FakeProviderAPI, Reply, closed_port, sendgrid_error

KEY = "SG.acme-own.Zm9vYmFyYmF6"
PLATFORM_KEY = "SG.platform.cXV1eHF1dXg"
MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{16,}$")


def make_email(**changes: Any) -> EmailMessage:
    fields: dict[str, Any] = {
        "from_addr": Address("hello@globex.test", "Globex Café"),
        "to": (Address("juergen@example.com", "Jürgen Groß"),),
        "subject": "Ihre Bestellung ✓",
        "text": "Grüße aus Köln.\n",
        "html": "<p>Grüße aus <b>Köln</b>.</p>",
        "reply_to": Address("hilfe@globex.test", "Globex Hilfe"),
        "headers": {"X-Campaign": "frühling"},
        "notification_id": "n-1",
        "tenant_id": "globex",
        "kind": "order_confirmation",
    }
    fields.update(changes)
    return EmailMessage(**fields)


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.sendgrid_keys.update({KEY, PLATFORM_KEY})
    return fake_api


@pytest.fixture
def provider(api: FakeProviderAPI) -> Iterator[SendGridProvider]:
    with SendGridProvider(api_key=KEY, base_url=api.url, read_timeout=2) as p:
        yield p


# --- the request -----------------------------------------------------------------------


def test_non_ascii_names_html_text_and_reply_to_pass_the_schema(
    api: FakeProviderAPI, provider: SendGridProvider
) -> None:
    result = provider.send(make_email())

    [request] = api.requests
    assert request.schema_errors == ()
    assert request.credential == KEY
    assert request.headers["content-type"] == "application/json"
    body = request.json
    assert body["from"] == {"email": "hello@globex.test", "name": "Globex Café"}
    assert body["reply_to"] == {"email": "hilfe@globex.test", "name": "Globex Hilfe"}
    assert body["personalizations"] == [
        {"to": [{"email": "juergen@example.com", "name": "Jürgen Groß"}]}
    ]
    assert body["subject"] == "Ihre Bestellung ✓"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["content"][1]["value"] == "<p>Grüße aus <b>Köln</b>.</p>"
    assert body["categories"] == ["order_confirmation"]
    assert body["custom_args"] == {"tenant_id": "globex", "notification_id": "n-1"}
    assert body["headers"] == {"X-Campaign": "frühling", "X-Tenant-Notify-Id": "n-1"}
    assert "Jürgen".encode() in request.body  # UTF-8 on the wire, not escapes

    assert result.provider == "sendgrid"
    assert result.provider_message_id is not None
    assert MESSAGE_ID.match(result.provider_message_id)


def test_cc_bcc_tags_metadata_and_attachments_pass_the_schema(
    api: FakeProviderAPI, provider: SendGridProvider
) -> None:
    pdf = Attachment(filename="Rechnung.pdf", content=b"%PDF-1.4\x00\xff")
    logo = Attachment(filename="logo.png", content=b"\x89PNG", inline=True, content_id="logo")
    provider.send(
        make_email(
            cc=(Address("carl@example.com", "Carl"),),
            bcc=(Address("audit@example.com"),),
            tags=("spring", "order_confirmation"),
            metadata={"order": "1042"},
            attachments=(pdf, logo),
        )
    )
    [request] = api.requests
    assert request.schema_errors == ()
    body = request.json
    assert body["personalizations"] == [
        {
            "to": [{"email": "juergen@example.com", "name": "Jürgen Groß"}],
            "cc": [{"email": "carl@example.com", "name": "Carl"}],
            "bcc": [{"email": "audit@example.com"}],
        }
    ]
    assert body["categories"] == ["order_confirmation", "spring"]
    assert body["custom_args"] == {"order": "1042", "tenant_id": "globex", "notification_id": "n-1"}
    assert body["attachments"] == [
        {
            "content": "JVBERi0xLjQA/w==",
            "type": "application/pdf",
            "filename": "Rechnung.pdf",
            "disposition": "attachment",
        },
        {
            "content": "iVBORw==",
            "type": "image/png",
            "filename": "logo.png",
            "disposition": "inline",
            "content_id": "logo",
        },
    ]


def test_text_only_and_idna_domains(api: FakeProviderAPI, provider: SendGridProvider) -> None:
    provider.send(make_email(html=None, reply_to=None, to=(Address("max@bücher.example"),)))
    [request] = api.requests
    assert request.json["content"] == [{"type": "text/plain", "value": "Grüße aus Köln.\n"}]
    assert request.json["personalizations"][0]["to"] == [{"email": "max@xn--bcher-kva.example"}]
    assert "reply_to" not in request.json


def test_sandbox_mode_and_ip_pool(api: FakeProviderAPI) -> None:
    with SendGridProvider(
        api_key=KEY, base_url=api.url, sandbox_mode=True, ip_pool="transactional"
    ) as provider:
        provider.send(make_email())
    [request] = api.requests
    assert request.json["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert request.json["ip_pool_name"] == "transactional"


def test_one_keep_alive_connection_for_many_sends(
    api: FakeProviderAPI, provider: SendGridProvider
) -> None:
    for n in range(5):
        provider.send(make_email(notification_id=f"n-{n}"))
    assert len(api.requests) == 5
    assert api.connections == 1


def test_close_then_send_again(api: FakeProviderAPI, provider: SendGridProvider) -> None:
    provider.send(make_email())
    provider.close()
    provider.close()
    provider.send(make_email())
    assert api.connections == 2


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"subject": "Hi\nBcc: x@evil.test"}, HeaderInjectionError),
        ({"from_addr": Address("a@globex.test", "A\r\nB")}, HeaderInjectionError),
        ({"headers": {"Subject": "override"}}, ValidationError),
        ({"headers": {"X-SG-EID": "x"}}, ValidationError),
        ({"text": "", "html": None}, ValidationError),
        ({"to": ()}, ValidationError),
    ],
)
def test_bad_messages_are_refused_before_any_request(
    api: FakeProviderAPI, provider: SendGridProvider, changes: dict[str, Any], error: type
) -> None:
    with pytest.raises(error):
        provider.send(make_email(**changes))
    assert api.requests == []


# --- replies and failures --------------------------------------------------------------


def test_400_is_permanent_with_sendgrids_message(
    api: FakeProviderAPI, provider: SendGridProvider
) -> None:
    api.script(
        sendgrid_error(400, "The from email does not contain a valid address.", "from.email")
    )
    with pytest.raises(PermanentDeliveryError) as info:
        provider.send(make_email())
    err = info.value
    assert err.provider == "sendgrid" and err.notification_id == "n-1"
    assert (
        err.provider_response == "400 from.email: The from email does not contain a valid address."
    )
    assert not err.recipient_error and err.may_fail_over


def test_400_about_the_recipient_is_a_recipient_error(
    api: FakeProviderAPI, provider: SendGridProvider
) -> None:
    api.script(
        sendgrid_error(400, "Does not contain a valid address.", "personalizations.0.to.0.email")
    )
    with pytest.raises(PermanentDeliveryError) as info:
        provider.send(make_email())
    assert info.value.recipient_error and not info.value.may_fail_over


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, PermanentDeliveryError),
        (403, PermanentDeliveryError),
        (404, PermanentDeliveryError),
        (413, PermanentDeliveryError),
        (408, TransientDeliveryError),
        (500, TransientDeliveryError),
        (502, TransientDeliveryError),
        (503, TransientDeliveryError),
    ],
)
def test_status_codes_map_to_the_error_tree(
    api: FakeProviderAPI, provider: SendGridProvider, status: int, error: type
) -> None:
    api.script(sendgrid_error(status, f"scripted {status}"))
    with pytest.raises(error) as info:
        provider.send(make_email())
    assert info.value.provider_response == f"{status} scripted {status}"
    assert type(info.value) is error


def test_429_waits_for_the_rate_limit_reset(
    api: FakeProviderAPI, provider: SendGridProvider
) -> None:
    reset = int(time.time()) + 30
    api.script(
        sendgrid_error(
            429,
            "too many requests",
            headers={
                "X-RateLimit-Limit": "600",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset),
            },
        )
    )
    with pytest.raises(TransientDeliveryError) as info:
        provider.send(make_email())
    assert info.value.retry_after is not None
    assert 28 <= info.value.retry_after <= 30


def test_unknown_key_is_refused_and_never_quoted(api: FakeProviderAPI) -> None:
    wrong = "SG.not-a-known-key.c2VjcmV0"
    api.script(sendgrid_error(401, f"key {wrong} is revoked"))
    with SendGridProvider(api_key=wrong, base_url=api.url) as provider:
        with pytest.raises(PermanentDeliveryError) as info:
            provider.send(make_email())
        assert wrong not in repr(provider)
    assert wrong not in str(info.value)
    assert "key *** is revoked" in str(info.value)


def test_connection_refused_is_transient_and_may_fail_over() -> None:
    refused = f"http://127.0.0.1:{closed_port()}"
    with (
        SendGridProvider(api_key=KEY, base_url=refused) as provider,
        pytest.raises(TransientDeliveryError, match="cannot connect") as info,
    ):
        provider.send(make_email())
    assert info.value.may_fail_over


def test_unresolvable_host_is_transient() -> None:
    with (
        SendGridProvider(api_key=KEY, base_url="http://sendgrid.invalid") as provider,
        pytest.raises(TransientDeliveryError),
    ):
        provider.send(make_email())


def test_read_timeout_after_the_request_is_ambiguous(api: FakeProviderAPI) -> None:
    api.script(Reply.stall(2.0))
    with (
        SendGridProvider(api_key=KEY, base_url=api.url, read_timeout=0.3) as provider,
        pytest.raises(AmbiguousDeliveryError, match="may have been accepted") as info,
    ):
        provider.send(make_email())
    assert len(api.requests) == 1  # the request did reach the server
    assert not info.value.may_fail_over


def test_connection_dropped_after_the_request_is_ambiguous(
    api: FakeProviderAPI, provider: SendGridProvider
) -> None:
    api.script(Reply.drop_connection())
    with pytest.raises(AmbiguousDeliveryError):
        provider.send(make_email())
    provider.send(make_email())  # and the pool recovers


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"provider": "sendgrid"}, "email.api_key"),
        ({"provider": "sendgrid", "api_key": "SG.x", "base_url": "ftp://x"}, "email.base_url"),
        ({"provider": "sendgrid", "api_key": "SG.x", "read_timeout": 0}, "email.read_timeout"),
        ({"provider": "sendgrid", "api_key": "SG.x", "apikey": "SG.y"}, "email.apikey"),
        ({"provider": "sendgrid", "api_key": "has space"}, "email.api_key"),
    ],
)
def test_bad_settings_fail_at_build_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Notifier.from_settings({"transport": "eager", "email": table})
    assert info.value.key == key
    assert "SG.y" not in str(info.value)


def test_direct_construction_errors_do_not_show_the_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        SendGridProvider(api_key="SG.secret-value", base_url="nope")
    assert "SG.secret-value" not in str(info.value)


def test_without_httpx_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.startswith("tenant_notify.providers.") and name.split(".")[-1] in {
            "http",
            "sendgrid",
            "twilio",
        }:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingDependencyError) as info:
        Notifier.from_settings({"email": {"provider": "sendgrid", "api_key": "SG.x"}})
    assert info.value.extra == "http" and info.value.key == "email.provider"
    assert "tenant-notify[http]" in str(info.value)
    # The core still works without it.
    with Notifier.from_settings(
        {
            "transport": "eager",
            "email": {"provider": "memory"},
            "tenants": {"a": {"name": "A", "email_from": "a@a.test"}},
        }
    ) as notify:
        receipt = notify.send_welcome_email(
            user_email="u@example.com", user_name="U", tenant_id="a"
        )
        assert receipt.status().state is DeliveryState.SENT


# --- through the Notifier --------------------------------------------------------------


def settings(api: FakeProviderAPI, transport: str, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "transport": {"backend": transport, "workers": 2},
        "email": {
            "provider": "sendgrid",
            "api_key": PLATFORM_KEY,
            "base_url": api.url,
            "read_timeout": 2,
        },
        "tenants": {
            "acme": {
                "name": "Acme Shop",
                "email_from": "Acme Shop <orders@acme.test>",
                "email": {"api_key": KEY},  # the shop's own SendGrid account
            },
            "globex": {"name": "Globex Café", "email_from": "hello@globex.test", "locale": "de"},
        },
        "retry": {"initial_delay": 0.01, "jitter": 0},
    }
    config.update(changes)
    return config


@pytest.mark.parametrize("transport", ["eager", "inprocess"])
def test_each_tenant_sends_with_its_own_key_and_no_other(
    api: FakeProviderAPI, transport: str
) -> None:
    with (
        capture_logs() as logs,
        Notifier.from_settings(settings(api, transport)) as notify,
    ):
        receipts = [
            notify.send_welcome_email(
                user_email=f"u{n}@example.com", user_name="Ümit", tenant_id=tenant
            )
            for n, tenant in enumerate(["acme", "globex", "acme", "globex"])
        ]
        statuses = [receipt.wait(5) for receipt in receipts]
    assert all(s.state is DeliveryState.SENT for s in statuses)
    assert all(s.provider == "sendgrid" and s.provider_message_id for s in statuses)
    by_tenant: dict[str, set[str | None]] = {}
    for request in api.requests:
        by_tenant.setdefault(request.json["custom_args"]["tenant_id"], set()).add(
            request.credential
        )
        assert request.json["custom_args"]["notification_id"] in {r.id for r in receipts}
    assert by_tenant == {"acme": {KEY}, "globex": {PLATFORM_KEY}}
    acme = [r for r in api.requests if r.json["custom_args"]["tenant_id"] == "acme"]
    assert acme[0].json["from"] == {"email": "orders@acme.test", "name": "Acme Shop"}
    assert KEY not in repr(logs) and PLATFORM_KEY not in repr(logs)
    assert KEY not in repr(notify.settings)


def test_429_then_202_delivers_once_after_the_wait(api: FakeProviderAPI) -> None:
    reset = int(time.time()) + 2
    api.script(sendgrid_error(429, "too many requests", headers={"X-RateLimit-Reset": str(reset)}))
    with Notifier.from_settings(settings(api, "eager")) as notify:
        receipt = notify.send_welcome_email(
            user_email="u@example.com", user_name="U", tenant_id="globex"
        )
        done = time.time()
        status = receipt.status()
    # A throttling whose pause is recorded spends no attempt (docs/workers.md, pacing):
    # the same attempt went again after the reset.
    assert status.state is DeliveryState.SENT and status.attempts == 1
    assert done >= reset - 0.05  # it waited for the reset, not the 10 ms backoff
    assert len(api.requests) == 2  # one refused, one accepted: delivered once


def test_400_fails_at_once_with_the_providers_message(api: FakeProviderAPI) -> None:
    api.script(sendgrid_error(400, "The subject is too long.", "subject"))
    with Notifier.from_settings(settings(api, "eager")) as notify:
        receipt = notify.send_welcome_email(
            user_email="u@example.com", user_name="U", tenant_id="acme"
        )
        status = receipt.status()
    assert status.state is DeliveryState.FAILED and status.attempts == 1
    assert status.error_type == "PermanentDeliveryError"
    assert status.error is not None and "subject: The subject is too long." in status.error
    assert status.provider == "sendgrid"
    assert len(api.requests) == 1
    assert KEY not in status.error


def test_ambiguous_timeout_is_not_retried_by_default(api: FakeProviderAPI) -> None:
    api.script(Reply.stall(2.0))
    config = settings(api, "eager")
    config["email"]["read_timeout"] = 0.3
    with Notifier.from_settings(config) as notify:
        status = notify.send_welcome_email(
            user_email="u@example.com", user_name="U", tenant_id="globex"
        ).status()
    assert status.state is DeliveryState.FAILED
    assert status.error_type == "AmbiguousDeliveryError"
    assert len(api.requests) == 1


def test_a_delivery_event_moves_the_status_to_delivered(api: FakeProviderAPI) -> None:
    from tests.webhooks.support import Signer

    signer = Signer()
    with Notifier.from_settings(settings(api, "eager")) as notify:
        receipt = notify.send_welcome_email(
            user_email="u@example.com", user_name="U", tenant_id="acme"
        )
        sent = receipt.status()
        [request] = api.requests
        # SendGrid copies custom_args into every event of the message.
        body = json.dumps(
            [
                {
                    "email": "u@example.com",
                    "event": "delivered",
                    "timestamp": int(time.time()),
                    "sg_message_id": f"{sent.provider_message_id}.filterdrecv-1",
                    **request.json["custom_args"],
                }
            ]
        ).encode()
        [event] = apply_sendgrid_events(
            notify, body, signer.headers(body), signer.public_key, tenant_id="acme"
        )
        assert event.applied
        assert receipt.status().state is DeliveryState.DELIVERED
