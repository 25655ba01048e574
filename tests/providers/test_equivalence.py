"""One order confirmation, with an invoice PDF and an inline logo the HTML refers to by
content id, arrives equivalent through every email provider that sends attachments: the
same parts, file names, content types and bytes after parsing what each received.

Real parts: aiosmtpd (smtp), the spec-checking loopback fakes (sendgrid, postmark), moto's
server mode (ses)."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tenant_notify import Attachment, Notifier
from tenant_notify.models import DeliveryState
from tests.http_fakes import FakeProviderAPI
from tests.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from tests.smtp_server import LoopbackSMTPServer

pytestmark = pytest.mark.integration

SENDER = "orders@acme.test"
SG_KEY = "SG.equivalence.a2V5"
PM_TOKEN = "pm-equivalence-token"
# A small but real PDF and PNG, with bytes that would not survive a text round trip.
PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Count 0/Kids[]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
) + bytes(range(256))
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
INVOICE = Attachment(
    filename="Rechnung-1042 für Zoë.pdf", content=PDF, content_type="application/pdf"
)
LOGO = Attachment(filename="logo.png", content=PNG, inline=True, content_id="logo@acme.test")

Part = tuple[str, str | None, str | None, str | None, bytes]


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    kind = tmp_path / "order_confirmation"
    kind.mkdir()
    (kind / "subject.txt").write_text("Order {{ order_id }} confirmed", encoding="utf-8")
    (kind / "body.txt").write_text("Thanks, {{ customer_name }}. Total {{ order_total }}.\n")
    (kind / "body.html").write_text(
        '<p><img src="cid:logo@acme.test" alt="Acme"></p><p>Thanks, {{ customer_name }}.</p>'
    )
    return tmp_path


def send(email_table: dict[str, Any], templates: Path) -> None:
    settings = {
        "transport": "eager",
        "email": email_table,
        "tenants": {
            "acme": {"name": "Acme Shop", "email_from": SENDER, "templates_dir": str(templates)}
        },
    }
    with Notifier.from_settings(settings) as notify:
        status = notify.send_order_confirmation(
            order_id="1042",
            customer_email="jane@example.com",
            customer_name="Jane Doe",
            order_total=Decimal("99.50"),
            currency="EUR",
            tenant_id="acme",
            attachments=[INVOICE, LOGO],
        ).wait(10)
    assert status.state is DeliveryState.SENT, status


def mime_parts(raw: bytes) -> list[Part]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    parts: list[Part] = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        assert isinstance(part, email.message.EmailMessage)
        cid = part["Content-ID"]
        parts.append(
            (
                part.get_content_type(),
                part.get_filename(),
                part.get_content_disposition() if part.get_filename() else None,
                str(cid).strip("<>") if cid else None,
                _body_bytes(part),
            )
        )
    return parts


def _body_bytes(part: email.message.EmailMessage) -> bytes:
    content = part.get_content()
    if isinstance(content, str):
        return _text(content)
    return bytes(content)


def _text(body: str) -> bytes:
    # MIME ends every text part with a line break and writes CRLF; the JSON APIs
    # carry the rendered text as it is. The text itself must be the same.
    return body.replace("\r\n", "\n").rstrip("\n").encode("utf-8")


def json_parts(
    text: str | None, html: str | None, attachments: list[dict[str, Any]], keys: dict[str, str]
) -> list[Part]:
    parts: list[Part] = []
    for content_type, body in (("text/plain", text), ("text/html", html)):
        if body is not None:
            parts.append((content_type, None, None, None, _text(body)))
    for item in attachments:
        cid = item.get(keys["cid"])
        inline = item.get("disposition") == "inline" if keys.get("disposition") else cid is not None
        parts.append(
            (
                item[keys["type"]],
                item[keys["name"]],
                "inline" if inline else "attachment",
                cid.removeprefix("cid:") if cid else None,
                base64.b64decode(item[keys["content"]]),
            )
        )
    return parts


# --- the four providers --------------------------------------------------------------


@pytest.fixture
def via_smtp(templates: Path) -> Iterator[Callable[[], list[Part]]]:
    with LoopbackSMTPServer() as server:

        def run() -> list[Part]:
            send({"provider": "smtp", "host": server.host, "port": server.port}, templates)
            [received] = server.wait_for(1)
            assert received.rcpt_tos == ("jane@example.com",)
            return mime_parts(received.raw)

        yield run


@pytest.fixture
def via_sendgrid(templates: Path, fake_api: FakeProviderAPI) -> Callable[[], list[Part]]:
    fake_api.sendgrid_keys.add(SG_KEY)

    def run() -> list[Part]:
        fake_api.clear()  # the fake serves Postmark too; keep only this send's request
        send({"provider": "sendgrid", "api_key": SG_KEY, "base_url": fake_api.url}, templates)
        [request] = fake_api.requests
        assert request.schema_errors == ()
        body = request.json
        content = {c["type"]: c["value"] for c in body["content"]}
        keys = {"type": "type", "name": "filename", "cid": "content_id", "content": "content",
                "disposition": "disposition"}  # fmt: skip
        return json_parts(
            content.get("text/plain"), content.get("text/html"), body["attachments"], keys
        )

    return run


@pytest.fixture
def via_ses(templates: Path, aws: MotoServer) -> Callable[[], list[Part]]:
    aws.client("ses").verify_email_identity(EmailAddress=SENDER)

    def run() -> list[Part]:
        table = {"provider": "ses", "region": REGION, "access_key_id": ACCESS_KEY,
                 "secret_access_key": SECRET_KEY, "endpoint_url": aws.url}  # fmt: skip
        send(table, templates)
        [raw] = aws.sent_raw_emails()
        return mime_parts(raw["raw_data"].encode("ascii"))

    return run


@pytest.fixture
def via_postmark(templates: Path, fake_api: FakeProviderAPI) -> Callable[[], list[Part]]:
    fake_api.postmark_tokens.add(PM_TOKEN)

    def run() -> list[Part]:
        fake_api.clear()
        send(
            {"provider": "postmark", "server_token": PM_TOKEN, "base_url": fake_api.url}, templates
        )
        [request] = fake_api.requests
        assert request.schema_errors == ()
        body = request.json
        keys = {"type": "ContentType", "name": "Name", "cid": "ContentID", "content": "Content"}
        return json_parts(body.get("TextBody"), body.get("HtmlBody"), body["Attachments"], keys)

    return run


@pytest.mark.parametrize("provider", ["smtp", "sendgrid", "ses", "postmark"])
def test_the_order_confirmation_arrives_with_the_same_parts(
    provider: str, request: pytest.FixtureRequest
) -> None:
    parts = request.getfixturevalue(f"via_{provider}")()
    by_type = {p[0]: p for p in parts}
    assert sorted(by_type) == ["application/pdf", "image/png", "text/html", "text/plain"]
    assert len(parts) == 4
    assert by_type["application/pdf"] == (
        "application/pdf", "Rechnung-1042 für Zoë.pdf", "attachment", None, PDF
    )  # fmt: skip
    assert by_type["image/png"] == ("image/png", "logo.png", "inline", "logo@acme.test", PNG)
    html = by_type["text/html"][4].decode()
    assert html.startswith("<p><img")
    assert 'src="cid:logo@acme.test"' in html and "Thanks, Jane Doe." in html
    assert by_type["text/plain"][4].decode().startswith("Thanks, Jane Doe. Total")


def test_all_four_agree(
    via_smtp: Callable[[], list[Part]],
    via_sendgrid: Callable[[], list[Part]],
    via_ses: Callable[[], list[Part]],
    via_postmark: Callable[[], list[Part]],
) -> None:
    smtp = sorted(via_smtp())
    assert sorted(via_sendgrid()) == smtp
    assert sorted(via_ses()) == smtp
    assert sorted(via_postmark()) == smtp
