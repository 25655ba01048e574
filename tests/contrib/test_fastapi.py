"""The FastAPI router, driven over HTTP with Starlette's TestClient."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from tenant_notify.contrib.fastapi import make_router
from tenant_notify.models import Channel, DeliveryState, DeliveryStatus
from tenant_notify.testing import TestNotifier, make_notifier
from tenant_notify.webhooks import twilio_signature
from tests.conftest import TENANTS
from tests.webhooks.support import Signer

TWILIO_TOKEN = "acme-twilio-token"
SMS_SID = "SM" + "a" * 32
POSTMARK_CREDENTIALS = "postmark:hook-secret"


def current_tenant(x_tenant: str = Header()) -> str:
    return x_tenant


def require_admin(x_role: str = Header("")) -> None:
    if x_role != "admin":
        raise HTTPException(403, "admins only")


@pytest.fixture
def notify() -> Iterator[TestNotifier]:
    with make_notifier(tenants=TENANTS) as notifier:
        yield notifier


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def client(notify: TestNotifier, signer: Signer) -> Iterator[TestClient]:
    secrets = {
        ("acme", "sendgrid"): signer.public_key,
        ("acme", "twilio"): TWILIO_TOKEN,
        ("acme", "postmark"): POSTMARK_CREDENTIALS,
    }
    app = FastAPI()
    app.include_router(
        make_router(
            notify,
            admin_dependency=require_admin,
            tenant_dependency=current_tenant,
            webhook_secrets=lambda tenant_id, provider: secrets.get((tenant_id, provider)),
        ),
        prefix="/api",
    )
    with TestClient(app) as test_client:
        yield test_client


ADMIN = {"X-Tenant": "acme", "X-Role": "admin"}
EMAIL = {"to_email": "ops@example.com", "subject": "Test", "body": "It works."}


def test_admin_sends_a_test_email_and_reads_its_status(
    client: TestClient, notify: TestNotifier
) -> None:
    reply = client.post("/api/notifications/test/email", json=EMAIL, headers=ADMIN)
    assert reply.status_code == 202, reply.text
    task_id = reply.json()["task_id"]
    [email] = notify.outbox.emails
    assert email.subject == "Test" and email.tenant_id == "acme"
    assert email.notification_id == task_id

    reply = client.get(f"/api/notifications/tasks/{task_id}", headers={"X-Tenant": "acme"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["task_id"] == task_id
    assert body["state"] == "sent" and body["attempts"] == 1
    assert body["provider"] == "memory" and body["provider_message_id"]
    assert body["error"] is None
    assert body["created_at"] <= body["updated_at"]


def test_non_admin_gets_403_and_nothing_is_sent(client: TestClient, notify: TestNotifier) -> None:
    for headers in ({"X-Tenant": "acme"}, {"X-Tenant": "acme", "X-Role": "clerk"}):
        reply = client.post("/api/notifications/test/email", json=EMAIL, headers=headers)
        assert reply.status_code == 403
        # The guard runs before the body is looked at.
        reply = client.post("/api/notifications/test/email", json={}, headers=headers)
        assert reply.status_code == 403
    assert notify.outbox.emails == []


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({**EMAIL, "to_email": "not-an-address"}, "to_email", "not a valid email address"),
        ({"subject": "Test", "body": "x"}, "to_email", "Field required"),
        ({**EMAIL, "subject": "Hi\r\nBcc: x@evil.test"}, "subject", "subject"),
        ({**EMAIL, "body": "  "}, "body", "non-empty"),
        ({**EMAIL, "cc": "x@example.com"}, "cc", "Extra inputs"),
    ],
)
def test_an_invalid_body_is_422_with_the_reason(
    client: TestClient, notify: TestNotifier, body: dict[str, Any], field: str, reason: str
) -> None:
    reply = client.post("/api/notifications/test/email", json=body, headers=ADMIN)
    assert reply.status_code == 422
    [error] = reply.json()["detail"]
    assert error["loc"] == ["body", field]
    assert reason in error["msg"]
    assert notify.outbox.emails == []


def test_a_library_validation_error_on_send_is_422(
    client: TestClient, notify: TestNotifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The request model runs the same checks; anything the send still refuses is 422 too.
    from tenant_notify.errors import InvalidRecipientError

    async def refuse(**kwargs: Any) -> Any:
        raise InvalidRecipientError("refused by the notifier", field="to_email")

    monkeypatch.setattr(notify, "asend_email", refuse)
    reply = client.post("/api/notifications/test/email", json=EMAIL, headers=ADMIN)
    assert reply.status_code == 422
    assert reply.json()["detail"] == [
        {
            "loc": ["body", "to_email"],
            "msg": "to_email: refused by the notifier",
            "type": "value_error",
        }
    ]


def test_unknown_and_other_tenants_ids_are_404(client: TestClient) -> None:
    reply = client.get("/api/notifications/tasks/" + "0" * 32, headers={"X-Tenant": "acme"})
    assert reply.status_code == 404
    unknown = reply.json()

    task_id = client.post("/api/notifications/test/email", json=EMAIL, headers=ADMIN).json()[
        "task_id"
    ]
    reply = client.get(f"/api/notifications/tasks/{task_id}", headers={"X-Tenant": "globex"})
    assert reply.status_code == 404
    assert reply.json() == unknown  # indistinguishable from an unknown id
    assert client.get(
        f"/api/notifications/tasks/{task_id}", headers={"X-Tenant": "acme"}
    ).is_success


def test_models_are_in_the_openapi_document(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in ("SendTestEmailRequest", "TaskAccepted", "TaskStatus", "WebhookResult"):
        assert name in schemas
    assert set(schemas["SendTestEmailRequest"]["required"]) == {"to_email", "subject", "body"}
    assert {
        "state",
        "attempts",
        "provider",
        "provider_message_id",
        "error",
        "created_at",
        "updated_at",
    } <= set(schemas["TaskStatus"]["properties"])
    paths = document["paths"]
    post = paths["/api/notifications/test/email"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SendTestEmailRequest"
    )
    assert "202" in post["responses"] and "403" in post["responses"]
    assert "/api/notifications/tasks/{task_id}" in paths
    assert "/api/notifications/webhooks/sendgrid/{tenant_id}" in paths
    assert "/api/notifications/webhooks/twilio/{tenant_id}" in paths


# --- webhooks --------------------------------------------------------------------------


def sent_status(
    notify: TestNotifier, provider: str, provider_message_id: str, tenant_id: str = "acme"
) -> None:
    notify.status_store.save(
        DeliveryStatus(
            id="n-1",
            tenant_id=tenant_id,
            kind="welcome",
            channel=Channel.SMS if provider == "twilio" else Channel.EMAIL,
            state=DeliveryState.SENT,
            attempts=1,
            provider=provider,
            provider_message_id=provider_message_id,
        )
    )


def sendgrid_body(event: str = "delivered", tenant_id: str = "acme") -> bytes:
    return json.dumps(
        [
            {
                "email": "jane@example.com",
                "timestamp": int(time.time()),
                "event": event,
                "sg_message_id": "msg-1.filterdrecv-1",
                "notification_id": "n-1",
                "tenant_id": tenant_id,
            }
        ]
    ).encode()


SENDGRID_URL = "/api/notifications/webhooks/sendgrid/acme"


def test_sendgrid_webhook_applies_signed_events(
    client: TestClient, notify: TestNotifier, signer: Signer
) -> None:
    sent_status(notify, "sendgrid", "msg-1")
    body = sendgrid_body()
    reply = client.post(SENDGRID_URL, content=body, headers=signer.headers(body))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"events": 1, "applied": 1}
    assert notify.status("n-1").state is DeliveryState.DELIVERED


def test_sendgrid_webhook_with_a_bad_signature_is_403(
    client: TestClient, notify: TestNotifier, signer: Signer
) -> None:
    sent_status(notify, "sendgrid", "msg-1")
    body = sendgrid_body()
    headers = Signer().headers(body)  # signed, but with another key
    assert client.post(SENDGRID_URL, content=body, headers=headers).status_code == 403
    tampered = sendgrid_body("bounce")
    reply = client.post(SENDGRID_URL, content=tampered, headers=signer.headers(body))
    assert reply.status_code == 403
    stale = signer.headers(body, timestamp=int(time.time()) - 3600)
    assert client.post(SENDGRID_URL, content=body, headers=stale).status_code == 403
    assert client.post(SENDGRID_URL, content=body).status_code == 403
    assert notify.status("n-1").state is DeliveryState.SENT


def test_sendgrid_webhook_bad_payload_is_400(client: TestClient, signer: Signer) -> None:
    body = b'{"not": "a list"}'
    reply = client.post(SENDGRID_URL, content=body, headers=signer.headers(body))
    assert reply.status_code == 400


def test_webhook_for_a_tenant_without_a_secret_is_404(client: TestClient, signer: Signer) -> None:
    body = sendgrid_body()
    for url in (
        "/api/notifications/webhooks/sendgrid/globex",
        "/api/notifications/webhooks/twilio/globex",
        "/api/notifications/webhooks/sendgrid/nobody",
    ):
        assert client.post(url, content=body, headers=signer.headers(body)).status_code == 404


def test_a_tenants_key_speaks_only_for_its_own_notifications(
    client: TestClient, notify: TestNotifier, signer: Signer
) -> None:
    sent_status(notify, "sendgrid", "msg-1", tenant_id="globex")
    body = sendgrid_body(tenant_id="globex")
    reply = client.post(SENDGRID_URL, content=body, headers=signer.headers(body))
    assert reply.status_code == 200
    assert reply.json() == {"events": 1, "applied": 0}
    assert notify.status("n-1").state is DeliveryState.SENT


TWILIO_URL = "/api/notifications/webhooks/twilio/acme"


def twilio_params(status: str) -> dict[str, str]:
    return {"MessageSid": SMS_SID, "MessageStatus": status, "To": "+15551234567"}


def test_twilio_webhook_applies_a_signed_callback(client: TestClient, notify: TestNotifier) -> None:
    sent_status(notify, "twilio", SMS_SID)
    params = twilio_params("delivered")
    signature = twilio_signature("http://testserver" + TWILIO_URL, params, TWILIO_TOKEN)
    reply = client.post(TWILIO_URL, data=params, headers={"X-Twilio-Signature": signature})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"events": 1, "applied": 1}
    assert notify.status("n-1").state is DeliveryState.DELIVERED


def test_twilio_webhook_with_a_bad_signature_is_403(
    client: TestClient, notify: TestNotifier
) -> None:
    sent_status(notify, "twilio", SMS_SID)
    params = twilio_params("failed")
    for signature in (
        twilio_signature("http://testserver" + TWILIO_URL, params, "another-token"),
        twilio_signature("http://testserver/elsewhere", params, TWILIO_TOKEN),
    ):
        reply = client.post(TWILIO_URL, data=params, headers={"X-Twilio-Signature": signature})
        assert reply.status_code == 403
    assert client.post(TWILIO_URL, data=params).status_code == 403
    assert notify.status("n-1").state is DeliveryState.SENT


def test_twilio_webhook_bad_payload_is_400(client: TestClient) -> None:
    params = {"To": "+15551234567"}
    signature = twilio_signature("http://testserver" + TWILIO_URL, params, TWILIO_TOKEN)
    reply = client.post(TWILIO_URL, data=params, headers={"X-Twilio-Signature": signature})
    assert reply.status_code == 400


def test_twilio_webhook_behind_a_proxy_uses_the_public_url(notify: TestNotifier) -> None:
    app = FastAPI()
    app.include_router(
        make_router(
            notify,
            admin_dependency=require_admin,
            tenant_dependency=current_tenant,
            webhook_secrets=lambda tenant_id, provider: TWILIO_TOKEN,
            webhook_url=lambda request: "https://shop.example/hooks" + request.url.path,
        )
    )
    sent_status(notify, "twilio", SMS_SID)
    params = twilio_params("delivered")
    public = "https://shop.example/hooks/notifications/webhooks/twilio/acme"
    signature = twilio_signature(public, params, TWILIO_TOKEN)
    with TestClient(app) as test_client:
        reply = test_client.post(
            "/notifications/webhooks/twilio/acme",
            data=params,
            headers={"X-Twilio-Signature": signature},
        )
    assert reply.status_code == 200, reply.text
    assert notify.status("n-1").state is DeliveryState.DELIVERED


def test_without_webhook_secrets_there_are_no_webhook_routes(notify: TestNotifier) -> None:
    app = FastAPI()
    app.include_router(
        make_router(notify, admin_dependency=require_admin, tenant_dependency=current_tenant)
    )
    with TestClient(app) as test_client:
        assert test_client.post("/notifications/webhooks/sendgrid/acme").status_code == 404
        assert not any(
            "webhooks" in path for path in test_client.get("/openapi.json").json()["paths"]
        )


def test_without_fastapi_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from tenant_notify.errors import MissingDependencyError

    monkeypatch.delitem(sys.modules, "tenant_notify.contrib.fastapi")
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(MissingDependencyError, match=r"tenant-notify\[fastapi\]"):
        importlib.import_module("tenant_notify.contrib.fastapi")


def test_every_provider_of_the_table_is_mounted(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for provider in ("sendgrid", "twilio", "ses", "postmark"):
        assert f"/api/notifications/webhooks/{provider}/{{tenant_id}}" in paths


def test_postmark_webhook_through_the_router(client: TestClient, notify: TestNotifier) -> None:
    receipt = notify.send_email(
        to_email="jane@example.com", subject="s", body="b", tenant_id="acme"
    )
    status = notify.status(receipt.id)
    notify.status_store.save(status.evolve(provider="postmark"))
    event = {
        "RecordType": "Delivery",
        "MessageID": "x",
        "Metadata": {"notification_id": receipt.id},
    }
    url = "/api/notifications/webhooks/postmark/acme"
    assert client.post(url, json=event).status_code == 403
    reply = client.post(url, json=event, auth=tuple(POSTMARK_CREDENTIALS.split(":")))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"events": 1, "applied": 1}
    assert notify.status(receipt.id).state == "delivered"
    assert client.post("/api/notifications/webhooks/ses/acme", json={}).status_code == 404


def test_every_endpoint_is_a_coroutine(notify: TestNotifier) -> None:
    # FastAPI runs a plain `def` endpoint in its thread pool; these run in the loop
    # and use the notifier's coroutine twins, which keep the loop from waiting.
    router = make_router(
        notify,
        admin_dependency=require_admin,
        tenant_dependency=current_tenant,
        webhook_secrets=lambda tenant_id, provider: None,
    )
    endpoints = {route.path: route.endpoint for route in router.routes}  # type: ignore[attr-defined]
    assert {"/notifications/test/email", "/notifications/tasks/{task_id}"} <= endpoints.keys()
    assert len(endpoints) > 2  # the webhook receivers too
    assert all(inspect.iscoroutinefunction(endpoint) for endpoint in endpoints.values())
