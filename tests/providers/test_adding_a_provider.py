"""The complete HTTP provider of docs/adding-a-provider.md, run as the guide shows it: the
code block is taken from the page, so the guide cannot drift from what works."""

from __future__ import annotations

import json
import sys
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tenant_notify import Attachment, UnsupportedFeatureError
from tenant_notify.errors import PermanentDeliveryError
from tenant_notify.models import DeliveryState
from tenant_notify.testing import make_notifier

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "adding-a-provider.md"
KEY = "em-key-1234567890"
TENANTS = {"acme": {"name": "Acme", "email_from": "orders@acme.test"}}


def example_source() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("## Example: a complete HTTP provider", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"


@pytest.fixture(scope="module")
def example() -> Iterator[types.ModuleType]:
    module = types.ModuleType("example_mail")
    sys.modules[module.__name__] = module  # pydantic resolves annotations through it
    try:
        exec(compile(example_source(), str(GUIDE), "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


@pytest.fixture
def api() -> Iterator[tuple[str, list[dict[str, Any]], list[tuple[int, dict[str, Any]]]]]:
    received: list[dict[str, Any]] = []
    replies: list[tuple[int, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/emails"
            if self.headers["Authorization"] != f"Bearer {KEY}":
                status, reply = 401, {"name": "unauthorized", "message": "bad key"}
            else:
                received.append(json.loads(body))
                status, reply = replies.pop(0) if replies else (200, {"id": f"em-{len(received)}"})
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received, replies
    server.shutdown()
    server.server_close()


def test_the_example_is_at_most_80_lines() -> None:
    assert len(example_source().splitlines()) <= 80


def test_the_example_sends_and_fails_as_the_guide_says(example, api) -> None:
    url, received, replies = api
    provider = example.ExampleMailProvider(api_key=KEY, base_url=url)
    invoice = Attachment(filename="invoice.pdf", content=b"%PDF-1.4")
    with make_notifier(tenants=TENANTS, provider=provider, sms={"provider": "memory"}) as notify:
        status = notify.send_email(
            to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme",
            cc="carl@example.com", tags=["invoices"], attachments=[invoice],
        ).wait(5)  # fmt: skip
        assert (status.state, status.provider_message_id) == (DeliveryState.SENT, "em-1")
        assert received[0]["cc"] == ["carl@example.com"]
        assert received[0]["tags"] == ["email", "invoices"]
        assert received[0]["attachments"] == [
            {"filename": "invoice.pdf", "content": "JVBERi0xLjQ="}
        ]

        replies.extend([(503, {"name": "unavailable", "message": "later"})])
        retried = notify.send_email(
            to_email="jane@example.com", subject="Hi", body="Hello", tenant_id="acme"
        ).wait(5)
        assert (retried.state, retried.attempts) == (DeliveryState.SENT, 2)

        with pytest.raises(UnsupportedFeatureError, match="headers"):
            notify.send_email(
                to_email="jane@example.com", subject="s", body="b", tenant_id="acme",
                headers={"X-A": "1"},
            )  # fmt: skip

    replies.extend([(422, {"name": "suppressed_recipient", "message": "suppressed"})])
    with pytest.raises(PermanentDeliveryError) as info:
        provider.send(_email())
    assert info.value.recipient_error and info.value.provider_response == "422 suppressed"

    wrong = example.ExampleMailProvider(api_key="em-wrong-key-000", base_url=url)
    with pytest.raises(PermanentDeliveryError) as info:
        wrong.send(_email())
    assert "credentials were refused" in str(info.value)
    assert "em-wrong-key-000" not in str(info.value)


def _email() -> Any:
    from tenant_notify.models import Address, EmailMessage

    return EmailMessage(
        from_addr=Address("orders@acme.test"),
        to=(Address("jane@example.com"),),
        subject="s",
        text="t",
        kind="email",
    )
