"""Webhook bodies at the router: size refused while reading, JSON depth, and any
malformed body that passes the provider's check answered 400 (never a 500).

Driven through the real router: Starlette's TestClient for the shapes, and
uvicorn on loopback, fed by a raw socket, for what "refused while reading" means
on the wire (a 400 MB POST is answered before it has been sent).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI, Header
from fastapi.testclient import TestClient

from tenant_notify.contrib.fastapi import make_router
from tenant_notify.errors import WebhookBodyTooLargeError, WebhookPayloadError
from tenant_notify.models import DeliveryState
from tenant_notify.testing import TestNotifier, make_notifier
from tenant_notify.webhooks import WebhookRequest, parse_ses_event, twilio_signature
from tenant_notify.webhooks.base import MAX_BODY, MAX_JSON_DEPTH, load_json, read_body
from tests.conftest import TENANTS
from tests.webhooks.support import Signer, sent
from tests.webhooks.test_ses import TOPIC, FakeSns, ses_event

TWILIO_TOKEN = "acme-twilio-token"
POSTMARK = ("postmark", "hook-secret")
BASE = "/api/notifications/webhooks"


def current_tenant(x_tenant: str = Header()) -> str:
    return x_tenant


def allow(x_role: str = Header("")) -> None:
    return None


@pytest.fixture
def notify() -> Iterator[TestNotifier]:
    with make_notifier(tenants=TENANTS) as notifier:
        yield notifier


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def aws_sns() -> FakeSns:
    return FakeSns()


def make_app(notify: TestNotifier, signer: Signer) -> FastAPI:
    secrets = {
        ("acme", "sendgrid"): signer.public_key,
        ("acme", "twilio"): TWILIO_TOKEN,
        ("acme", "postmark"): ":".join(POSTMARK),
        ("acme", "ses"): TOPIC,
    }
    app = FastAPI()
    app.include_router(
        make_router(
            notify,
            admin_dependency=allow,
            tenant_dependency=current_tenant,
            webhook_secrets=lambda tenant_id, provider: secrets.get((tenant_id, provider)),
        ),
        prefix="/api",
    )
    return app


@pytest.fixture
def client(
    notify: TestNotifier, signer: Signer, aws_sns: FakeSns, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    from tenant_notify.webhooks import sns

    monkeypatch.setattr(sns, "default_fetch", aws_sns.fetch)
    with TestClient(make_app(notify, signer)) as test_client:
        yield test_client


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- malformed, but signed: 400 -----------------------------------------------------

SENDGRID_BODIES = {
    "not JSON": b"{nope",
    "not UTF-8": b'[{"event": "\xff\xfe"}]',
    "100,000 deep": nested(100_000),
    "just over the depth limit": b"[" + nested(MAX_JSON_DEPTH) + b"]",
    "a number too long to read": b"[" + b"1" * 5000 + b"]",
    "events in an object": b'{"event": "delivered"}',
    "an event without a name": b'[{"email": "jane@example.com"}]',
}


@pytest.mark.parametrize("name", SENDGRID_BODIES)
def test_a_signed_malformed_sendgrid_body_is_400(
    client: TestClient, notify: TestNotifier, signer: Signer, name: str
) -> None:
    sent(notify.status_store, "n-1")
    body = SENDGRID_BODIES[name]
    reply = client.post(f"{BASE}/sendgrid/acme", content=body, headers=signer.headers(body))
    assert reply.status_code == 400, reply.text
    assert notify.status("n-1").state is DeliveryState.SENT


POSTMARK_BODIES = {
    "100,000 deep": b'{"RecordType": ' + nested(100_000) + b"}",
    "a list where the bounce type goes": b'{"RecordType": "Bounce", "Type": ["HardBounce"]}',
    "an object for the record type": b'{"RecordType": {"x": 1}}',
    "a list": b"[]",
    "just over the depth limit": json.dumps(
        {"RecordType": "Delivery", "Metadata": json.loads(nested(MAX_JSON_DEPTH))}
    ).encode(),
}


@pytest.mark.parametrize("name", POSTMARK_BODIES)
def test_an_authenticated_malformed_postmark_body_is_400(client: TestClient, name: str) -> None:
    reply = client.post(f"{BASE}/postmark/acme", content=POSTMARK_BODIES[name], auth=POSTMARK)
    assert reply.status_code == 400, reply.text


def test_a_postmark_body_at_the_depth_limit_is_read(client: TestClient) -> None:
    # Depth counts the outer object: it and MAX_JSON_DEPTH - 1 levels inside.
    inside = json.loads(nested(MAX_JSON_DEPTH - 1))
    body = json.dumps({"RecordType": "Delivery", "Extra": inside}).encode()
    reply = client.post(f"{BASE}/postmark/acme", content=body, auth=POSTMARK)
    assert reply.status_code == 200, reply.text


SES_MESSAGES = {
    "a string for the bounce": ses_event("Bounce", bounce="Permanent"),
    "a list for the delivery": ses_event("Delivery", delivery=[1, 2]),
    "deep inside the message": json.dumps(
        {"eventType": "Delivery", "mail": {"x": json.loads(nested(MAX_JSON_DEPTH))}}
    ),
    "100,000 deep inside the message": '{"eventType": "Delivery", "mail": '
    + nested(100_000).decode()
    + "}",
    "not JSON inside": "{nope",
}


@pytest.mark.parametrize("name", SES_MESSAGES)
def test_a_signed_sns_message_with_a_malformed_ses_event_is_400(
    client: TestClient, notify: TestNotifier, aws_sns: FakeSns, name: str
) -> None:
    sent(notify.status_store, "n-1", provider="ses", provider_message_id="ses-msg-1")
    message = aws_sns.message(Message=SES_MESSAGES[name])
    reply = client.post(f"{BASE}/ses/acme", content=json.dumps(message).encode())
    assert reply.status_code == 400, reply.text
    assert notify.status("n-1").state is DeliveryState.SENT


def test_a_deep_sns_envelope_is_400(client: TestClient) -> None:
    reply = client.post(f"{BASE}/ses/acme", content=b'{"Type": ' + nested(100_000) + b"}")
    assert reply.status_code == 400, reply.text


def test_a_signed_twilio_body_that_is_not_utf8_or_lacks_fields_is_400(client: TestClient) -> None:
    url = f"http://testserver{BASE}/twilio/acme"
    params = {"Body": "\ufffd"}  # what an undecodable byte reads as
    signature = twilio_signature(url, params, TWILIO_TOKEN)
    reply = client.post(
        f"{BASE}/twilio/acme",
        content=b"Body=\xff",
        headers={
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert reply.status_code == 400, reply.text


def test_parsers_raise_payload_errors_for_wrong_types() -> None:
    for message in SES_MESSAGES.values():
        with pytest.raises(WebhookPayloadError):
            parse_ses_event(message)
    assert load_json(nested(MAX_JSON_DEPTH), "x") is not None
    with pytest.raises(WebhookPayloadError, match="deeper than"):
        load_json(nested(MAX_JSON_DEPTH + 1), "x")


# --- size: refused while reading ----------------------------------------------------


def test_a_body_over_the_limit_is_413_and_nothing_is_verified(
    client: TestClient, notify: TestNotifier, signer: Signer
) -> None:
    sent(notify.status_store, "n-1")
    event = {"event": "bounce", "notification_id": "n-1", "pad": "x" * MAX_BODY}
    body = json.dumps([event]).encode()
    reply = client.post(f"{BASE}/sendgrid/acme", content=body, headers=signer.headers(body))
    assert reply.status_code == 413, reply.text
    assert notify.status("n-1").state is DeliveryState.SENT


def test_the_library_refuses_an_oversized_body_before_any_receiver_sees_it() -> None:
    with pytest.raises(WebhookBodyTooLargeError):
        WebhookRequest(body=b"x" * (MAX_BODY + 1), headers={}, url="https://x.example/")
    pulled = []

    def chunks() -> Iterator[bytes]:
        for _ in range(1000):
            pulled.append(1)
            yield b"x" * (1 << 20)

    with pytest.raises(WebhookBodyTooLargeError):
        read_body(chunks())
    # It stopped pulling once past the limit, not after the 1,000 MiB on offer.
    assert len(pulled) == MAX_BODY // (1 << 20) + 1


class _Uvicorn:
    """The app served by uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        uvicorn = pytest.importorskip("uvicorn")
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", ws="none", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port: int = self.server.servers[0].sockets[0].getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _post_until_answered(port: int, head: bytes, chunk: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head`` then up to ``total`` bytes of ``chunk``s, stopping as soon as the
    server answers; the answer's first bytes and how much body had been sent."""
    sent_bytes = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            writers = [sock] if sent_bytes < total else []
            readable, writable, _ = select.select([sock], writers, [], 1)
            if readable:
                sock.setblocking(True)
                return sock.recv(200), sent_bytes
            if writable:
                try:
                    sent_bytes += sock.send(chunk)
                except (BlockingIOError, InterruptedError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        sock.setblocking(True)
        return sock.recv(200), sent_bytes


@pytest.mark.integration
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_unsigned_400_mb_post_is_answered_413_before_it_is_read(
    notify: TestNotifier, signer: Signer, framing: str
) -> None:
    total = 400 * 1024 * 1024
    path = f"{BASE}/sendgrid/acme"
    if framing == "content-length":
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n"
        chunk = b"x" * 65536
    else:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        data = b"x" * 65536
        chunk = f"{len(data):x}\r\n".encode() + data + b"\r\n"
    with _Uvicorn(make_app(notify, signer)) as port:
        answer, sent_bytes = _post_until_answered(port, head.encode(), chunk, total)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    # The server never held more than the limit: it answered with a fraction of the
    # 400 MB sent (what is in flight in the kernel's buffers at most besides).
    assert sent_bytes < MAX_BODY + 32 * 1024 * 1024, sent_bytes
    if framing == "content-length":
        assert sent_bytes < 32 * 1024 * 1024  # refused on the header, nothing read


def test_the_413_is_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "413" in paths[f"{BASE}/sendgrid/{{tenant_id}}"]["post"]["responses"]


def test_a_well_formed_body_still_applies(
    client: TestClient, notify: TestNotifier, signer: Signer
) -> None:
    sent(notify.status_store, "n-1")
    body = json.dumps(
        [{"event": "delivered", "notification_id": "n-1", "sg_message_id": "msg-1.f"}]
    ).encode()
    reply = client.post(f"{BASE}/sendgrid/acme", content=body, headers=signer.headers(body))
    assert reply.status_code == 200, reply.text
    assert notify.status("n-1").state is DeliveryState.DELIVERED
