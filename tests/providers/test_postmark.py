"""PostmarkProvider against a loopback fake of POST /email that checks every request
against Postmark's published API shapes (tests/http_fakes.py, tests/specs/postmark_email.json)."""

from __future__ import annotations

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
from tenant_notify.providers.postmark import PostmarkProvider
from tests.http_fakes import FakeProviderAPI, Reply, postmark_error

TOKEN = "pm-server-token-0d9f"


def make_email(**changes: Any) -> EmailMessage:
    fields: dict[str, Any] = {
        "from_addr": Address("hello@globex.test", "Globex, Café"),
        "to": (Address("juergen@example.com", "Jürgen Groß"),),
        "subject": "Ihre Bestellung ✓",
        "text": "Grüße aus Köln.\n",
        "html": "<p>Grüße aus <b>Köln</b>.</p>",
        "reply_to": Address("hilfe@globex.test"),
        "headers": {"X-Campaign": "frühling"},
        "notification_id": "n-1",
        "tenant_id": "globex",
        "kind": "order_confirmation",
    }
    fields.update(changes)
    return EmailMessage(**fields)


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.postmark_tokens.add(TOKEN)
    return fake_api


@pytest.fixture
def postmark(api: FakeProviderAPI) -> Iterator[PostmarkProvider]:
    with PostmarkProvider(server_token=TOKEN, base_url=api.url, read_timeout=2) as provider:
        yield provider


def test_every_field_passes_postmarks_shape(
    api: FakeProviderAPI, postmark: PostmarkProvider
) -> None:
    logo = Attachment(filename="logo.png", content=b"\x89PNG", inline=True, content_id="logo")
    result = postmark.send(
        make_email(
            cc=(Address("carl@example.com", "Carl"),),
            bcc=(Address("audit@example.com"),),
            tags=("spring",),
            metadata={"order": "1042"},
            attachments=(Attachment(filename="Rechnung.pdf", content=b"%PDF-1.4"), logo),
        )
    )
    [request] = api.requests
    assert request.schema_errors == ()
    assert request.credential == TOKEN
    body = request.json
    assert body["From"] == '"Globex, Café" <hello@globex.test>'
    assert body["To"] == '"Jürgen Groß" <juergen@example.com>'
    assert body["Cc"] == '"Carl" <carl@example.com>'
    assert body["Bcc"] == "audit@example.com"
    assert body["ReplyTo"] == "hilfe@globex.test"
    assert body["Tag"] == "spring"
    assert body["Metadata"] == {"order": "1042", "tenant_id": "globex", "notification_id": "n-1"}
    assert body["Headers"] == [
        {"Name": "X-Campaign", "Value": "frühling"},
        {"Name": "X-Tenant-Notify-Id", "Value": "n-1"},
    ]
    assert body["Attachments"] == [
        {"Name": "Rechnung.pdf", "Content": "JVBERi0xLjQ=", "ContentType": "application/pdf"},
        {
            "Name": "logo.png",
            "Content": "iVBORw==",
            "ContentType": "image/png",
            "ContentID": "cid:logo",
        },
    ]
    assert body["MessageStream"] == "outbound"
    assert result.provider == "postmark" and result.provider_message_id


def test_the_kind_is_the_tag_when_the_send_has_none(
    api: FakeProviderAPI, postmark: PostmarkProvider
) -> None:
    postmark.send(make_email(html=None))
    [request] = api.requests
    assert request.json["Tag"] == "order_confirmation" and "HtmlBody" not in request.json


def test_a_wrong_token_is_refused_and_never_shown(api: FakeProviderAPI) -> None:
    with (
        PostmarkProvider(server_token="wrong-token-123", base_url=api.url) as provider,
        pytest.raises(PermanentDeliveryError) as info,
    ):
        provider.send(make_email())
    assert info.value.provider_response == (
        "401 ErrorCode 10: Request does not contain a valid Server token."
    )
    assert "wrong-token-123" not in str(info.value)


@pytest.mark.parametrize(
    ("reply", "raised", "recipient"),
    [
        (
            postmark_error(
                422, 406, "You tried to send to a recipient that has been marked as inactive."
            ),
            PermanentDeliveryError,
            True,
        ),
        (
            postmark_error(422, 300, "Error parsing 'To': Illegal email address 'x'."),
            PermanentDeliveryError,
            True,
        ),
        (
            postmark_error(422, 400, "The 'From' address you supplied is not a Sender Signature."),
            PermanentDeliveryError,
            False,
        ),
        (postmark_error(429, 429, "Rate limit exceeded"), TransientDeliveryError, False),
        (postmark_error(500, 0, "Internal server error"), TransientDeliveryError, False),
        (Reply(503, b"unavailable"), TransientDeliveryError, False),
        (postmark_error(413, 300, "Payload Too Large"), PermanentDeliveryError, False),
    ],
)
def test_postmarks_errors_are_classified(api, postmark, reply, raised, recipient) -> None:
    api.script(reply)
    with pytest.raises(raised) as info:
        postmark.send(make_email())
    assert info.value.recipient_error is recipient
    assert info.value.provider == "postmark" and info.value.notification_id == "n-1"


def test_postmarks_limits_are_declared() -> None:
    def options(**given: Any) -> EmailOptions:
        built = EmailOptions.build(**given)
        assert built is not None
        return built

    with pytest.raises(UnsupportedFeatureError, match="at most 1 tags"):
        PostmarkProvider.check_options(options(tags=["a", "b"]))
    with pytest.raises(UnsupportedFeatureError, match="20 characters"):
        PostmarkProvider.check_options(options(metadata={"a_rather_long_metadata_key": "v"}))
    with pytest.raises(UnsupportedFeatureError, match="at most 8 metadata"):
        PostmarkProvider.check_options(options(metadata={f"k{i}": "v" for i in range(9)}))


def test_through_the_notifier(api: FakeProviderAPI) -> None:
    settings = {
        "transport": "eager",
        "email": {"provider": "postmark", "server_token": TOKEN, "base_url": api.url,
                  "message_stream": "transactional-eu"},
        "tenants": {"acme": {"name": "Acme", "email_from": "orders@acme.test"}},
    }  # fmt: skip
    with Notifier.from_settings(settings) as notify:
        status = notify.send_email(
            to_email="jane@example.com",
            to_name="Jane",
            subject="Hi",
            body="Hello",
            tenant_id="acme",
        ).wait(5)
    assert status.state is DeliveryState.SENT
    [request] = api.requests
    assert request.json["MessageStream"] == "transactional-eu"
    assert request.json["To"] == '"Jane" <jane@example.com>'
    with pytest.raises(ConfigurationError) as info:
        Notifier.from_settings({"email": {"provider": "postmark", "server_token": "a b"}})
    assert "a b" not in str(info.value)
