"""The library's signed links through the FastAPI router, for emails delivered by a real
SMTP server on loopback: RFC 8058 one-click unsubscribe, and open and click tracking."""

from __future__ import annotations

import email.message
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tenant_notify import Notifier
from tenant_notify.contrib.fastapi import PIXEL, make_router
from tenant_notify.errors import RecipientSuppressedError
from tenant_notify.models import DeliveryState
from tenant_notify.reputation import SuppressionReason
from tests.contrib.test_fastapi import current_tenant
from tests.smtp_server import LoopbackSMTPServer

KEYS = ["links-key-0123456789abcdef"]
BASE = "https://shop.test/api"
NEWSLETTER_HTML = """<html><body>
<h1>Spring sale</h1>
<p><a href="https://acme.test/sale?utm=mail&amp;id=7">See the sale</a></p>
<p><a href="mailto:help@acme.test">Write to us</a></p>
<p><a href="https://acme.test/account" data-tn-notrack>Your account</a></p>
</body></html>
"""
NEWSLETTER_TEXT = "Spring sale: https://acme.test/sale?utm=mail&id=7\n"


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    kind = tmp_path / "newsletter"
    kind.mkdir()
    (kind / "subject.txt").write_text("Spring sale at {{ tenant.name }}")
    (kind / "body.txt").write_text(NEWSLETTER_TEXT)
    (kind / "body.html").write_text(NEWSLETTER_HTML)
    return tmp_path


@pytest.fixture
def smtp() -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer() as server:
        yield server


def make_notify(
    smtp: LoopbackSMTPServer,
    templates: Path,
    newsletter: Any = None,
    extra: dict[str, Any] | None = None,
    **acme: Any,
) -> Notifier:
    return Notifier.from_settings(
        {
            **(extra or {}),
            "transport": "eager",
            "email": {"provider": "smtp", "host": smtp.host, "port": smtp.port, "timeout": 5},
            "templates_dir": str(templates),
            "kinds": {"newsletter": {"category": "marketing", **(newsletter or {})}},
            "links": {"base_url": BASE, "signing_keys": KEYS},
            "tenants": {
                "acme": {
                    "name": "Acme Shop",
                    "email_from": "orders@acme.test",
                    "unsubscribe_mailto": "unsubscribe@acme.test",
                    **acme,
                },
                "globex": {"name": "Globex", "email_from": "hello@globex.test"},
            },
        }
    )


@pytest.fixture
def notify(smtp: LoopbackSMTPServer, templates: Path) -> Iterator[Notifier]:
    with make_notify(smtp, templates) as notifier:
        yield notifier


def client_for(notify: Notifier) -> TestClient:
    app = FastAPI()
    app.include_router(
        make_router(notify, admin_dependency=lambda: None, tenant_dependency=current_tenant),
        prefix="/api",
    )
    return TestClient(app, base_url="https://shop.test", follow_redirects=False)


@pytest.fixture
def client(notify: Notifier) -> Iterator[TestClient]:
    with client_for(notify) as test_client:
        yield test_client


def list_unsubscribe(message: email.message.EmailMessage) -> list[str]:
    return re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))


def send_newsletter(notify: Notifier, to: str = "jane@example.com", tenant: str = "acme") -> Any:
    return notify.send("newsletter", tenant_id=tenant, to=to)


# --- one-click unsubscribe -----------------------------------------------------------------


def test_a_marketing_email_carries_rfc8058_headers_and_a_transactional_one_none(
    notify: Notifier, smtp: LoopbackSMTPServer
) -> None:
    send_newsletter(notify)
    notify.send_welcome_email(user_email="jane@example.com", user_name="Jane", tenant_id="acme")
    newsletter, welcome = (m.message for m in smtp.wait_for(2))
    https, mailto = list_unsubscribe(newsletter)
    assert https.startswith(f"{BASE}/notifications/unsubscribe/acme/")
    assert mailto == "mailto:unsubscribe@acme.test?subject=unsubscribe"
    assert newsletter["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "=?" not in str(newsletter["List-Unsubscribe"])  # a URL, not an encoded word
    assert welcome["List-Unsubscribe"] is None and welcome["List-Unsubscribe-Post"] is None


def test_the_one_click_post_unsubscribes_with_200_and_no_redirect(
    notify: Notifier, smtp: LoopbackSMTPServer, client: TestClient
) -> None:
    send_newsletter(notify)
    [received] = smtp.wait_for(1)
    url = list_unsubscribe(received.message)[0]

    # What a mailbox provider sends for RFC 8058.
    reply = client.post(
        url,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 200, reply.text
    assert "location" not in reply.headers
    [entry] = notify.suppressions.list("acme")
    assert entry.recipient == "jane@example.com"
    assert entry.reason is SuppressionReason.UNSUBSCRIBE and entry.category == "marketing"
    assert entry.source == "list-unsubscribe"

    with pytest.raises(RecipientSuppressedError):
        send_newsletter(notify)
    # Transactional mail still goes to an address unsubscribed from marketing.
    notify.send_welcome_email(user_email="jane@example.com", user_name="Jane", tenant_id="acme")
    assert len(smtp.wait_for(2)) == 2
    assert smtp.messages[1].message["Subject"] != "Spring sale at Acme Shop"


def test_the_get_asks_and_changes_nothing(
    notify: Notifier, smtp: LoopbackSMTPServer, client: TestClient
) -> None:
    send_newsletter(notify)
    url = list_unsubscribe(smtp.wait_for(1)[0].message)[0]
    for _ in range(3):  # link scanners, previews
        reply = client.get(url)
        assert reply.status_code == 200
        assert '<form method="post">' in reply.text and "Acme Shop" in reply.text
    assert notify.suppressions.list("acme") == []
    send_newsletter(notify)
    assert len(smtp.wait_for(2)) == 2


def test_a_tampered_or_foreign_unsubscribe_link_is_404(
    notify: Notifier, smtp: LoopbackSMTPServer, client: TestClient
) -> None:
    send_newsletter(notify)
    url = list_unsubscribe(smtp.wait_for(1)[0].message)[0]
    token = url.rsplit("/", 1)[1]
    for bad in (
        url[:-3] + ("xyz" if not url.endswith("xyz") else "abc"),
        url.replace("/acme/", "/globex/"),
        url.replace(token, "nope"),
    ):
        assert client.get(bad).status_code == 404
        assert client.post(bad).status_code == 404
    assert notify.suppressions.list("acme") == [] and notify.suppressions.list("globex") == []


def test_unsubscribe_and_tracking_routes_need_links_settings(smtp: LoopbackSMTPServer) -> None:
    with Notifier.from_settings({"transport": "eager"}) as plain, client_for(plain) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert not any("unsubscribe" in p or "track" in p for p in paths)


# --- tracking (the library's own, for SMTP) ------------------------------------------------


@pytest.fixture
def tracked(smtp: LoopbackSMTPServer, templates: Path) -> Iterator[Notifier]:
    with make_notify(smtp, templates, track_opens=True, track_clicks=True) as notifier:
        yield notifier


def parts(message: email.message.EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    # On the wire lines end in CRLF; compare the text as the template wrote it.
    return text.get_content().replace("\r\n", "\n"), html.get_content()


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', html)


def test_tracked_html_has_a_pixel_and_rewritten_links_and_the_text_is_unchanged(
    tracked: Notifier, smtp: LoopbackSMTPServer
) -> None:
    send_newsletter(tracked)
    text, html = parts(smtp.wait_for(1)[0].message)
    assert text == NEWSLETTER_TEXT
    links = hrefs(html)
    assert links[0].startswith(f"{BASE}/notifications/track/acme/click/")
    assert links[1:] == ["mailto:help@acme.test", "https://acme.test/account"]
    assert "data-tn-notrack" not in html
    [pixel] = re.findall(r'<img src="([^"]+)" width="1" height="1"', html)
    assert pixel.startswith(f"{BASE}/notifications/track/acme/open/")


def test_fetching_the_pixel_and_the_link_records_and_redirects_to_the_original_only(
    tracked: Notifier, smtp: LoopbackSMTPServer
) -> None:
    receipt = send_newsletter(tracked)
    _, html = parts(smtp.wait_for(1)[0].message)
    click = hrefs(html)[0]
    [pixel] = re.findall(r'<img src="([^"]+)"', html)
    with client_for(tracked) as client:
        opened = client.get(pixel.replace("&amp;", "&"))
        assert opened.status_code == 200 and opened.content == PIXEL
        assert opened.headers["content-type"] == "image/gif"
        assert "no-store" in opened.headers["cache-control"]
        followed = client.get(click)
        assert followed.status_code == 302
        assert followed.headers["location"] == "https://acme.test/sale?utm=mail&id=7"
        client.get(pixel)

        status = tracked.status(receipt.id)
        assert status.state is DeliveryState.SENT  # engagement is history, not state
        assert status.engagement is not None
        assert status.engagement.opens == 2
        assert [c.url for c in status.engagement.clicks] == ["https://acme.test/sale?utm=mail&id=7"]

        api = client.get(f"/api/notifications/tasks/{receipt.id}", headers={"X-Tenant": "acme"})
        body = api.json()
        assert body["engagement"]["opens"] == 2 and body["engagement"]["click_count"] == 1
        assert body["engagement"]["clicks"][0]["url"] == "https://acme.test/sale?utm=mail&id=7"


def test_a_tampered_tracking_url_is_4xx_and_records_nothing(
    tracked: Notifier, smtp: LoopbackSMTPServer
) -> None:
    receipt = send_newsletter(tracked)
    _, html = parts(smtp.wait_for(1)[0].message)
    click = hrefs(html)[0]
    [pixel] = re.findall(r'<img src="([^"]+)"', html)
    path = urlsplit(click).path
    token = path.rsplit("/", 1)[1]
    payload, _, signature = token.rpartition(".")
    # Pointing the redirect elsewhere means changing the payload: the signature fails.
    from itsdangerous import URLSafeSerializer

    forged = URLSafeSerializer("guess").dumps(
        {"n": receipt.id, "k": "newsletter", "u": "https://evil.test/"}
    )
    with client_for(tracked) as client:
        for bad in (
            click.replace(token, payload + "." + signature[::-1]),
            click.replace(token, forged),
            click.replace("/acme/", "/globex/"),
            pixel.replace("/open/", "/click/"),  # an open token as a click
            pixel[:-4] + "AAAA",
        ):
            reply = client.get(bad)
            assert 400 <= reply.status_code < 500, bad
            assert "location" not in reply.headers
    assert tracked.status(receipt.id).engagement is None


def test_a_kind_can_turn_tracking_off_again(smtp: LoopbackSMTPServer, templates: Path) -> None:
    off = {"track_clicks": False}
    with make_notify(smtp, templates, off, track_opens=True, track_clicks=True) as notify:
        send_newsletter(notify)
    _, html = parts(smtp.wait_for(1)[0].message)
    assert hrefs(html)[0] == "https://acme.test/sale?utm=mail&amp;id=7"
    assert "/notifications/track/acme/open/" in html


def test_with_tracking_off_no_message_has_a_pixel_or_a_rewritten_link(
    notify: Notifier, smtp: LoopbackSMTPServer
) -> None:
    send_newsletter(notify)
    send_newsletter(notify, tenant="globex")
    notify.send_welcome_email(user_email="jane@example.com", user_name="Jane", tenant_id="acme")
    for received in smtp.wait_for(3):
        _, html = parts(received.message)
        assert "/notifications/track/" not in html
        assert "<img" not in html or 'width="1" height="1"' not in html


def test_opens_and_clicks_go_out_as_lifecycle_callbacks(
    smtp: LoopbackSMTPServer, templates: Path
) -> None:
    from tests.events.receiver import SECRET, CallbackReceiver

    with CallbackReceiver() as receiver:
        events = {"callbacks": {"states": ["opened", "clicked"]}}
        with (
            make_notify(
                smtp,
                templates,
                extra={"events": events},
                track_opens=True,
                track_clicks=True,
                callbacks={"url": receiver.url, "secret": SECRET},
            ) as notify,
            client_for(notify) as client,
        ):
            receipt = send_newsletter(notify)
            _, html = parts(smtp.wait_for(1)[0].message)
            [pixel] = re.findall(r'<img src="([^"]+)"', html)
            client.get(pixel)
            client.get(hrefs(html)[0])
            got = receiver.wait_for(2)
    types = sorted(c.type for c in got)
    assert types == ["notification.clicked", "notification.opened"]
    assert all(c.verified for c in got)
    clicked = next(c for c in got if c.type == "notification.clicked").payload["data"]
    assert clicked["notification_id"] == receipt.id and clicked["event"] == "clicked"
    assert clicked["engagement"]["clicks"][0]["url"] == "https://acme.test/sale?utm=mail&id=7"
