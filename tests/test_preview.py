"""`tenant-notify preview`: the pages over HTTP, as a browser would fetch them."""

from __future__ import annotations

import contextlib
import html
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tenant_notify.preview import PreviewServer
from tests.preview_support import ACME_COLOR, GLOBEX_COLOR, get, running_preview

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreviewServer]:
    with running_preview(tmp_path_factory.mktemp("preview")) as server:
        yield server


def page(server: PreviewServer, **query: str) -> str:
    status, body, _ = get(server.url + "preview?" + urlencode(query))
    assert status == 200, body
    return body


def link(**query: str) -> str:
    return html.escape("/preview?" + urlencode(query))


def test_index_lists_every_kind_for_every_tenant_and_locale(server):
    status, body, headers = get(server.url)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    builtin = ["email", "order_confirmation", "sms", "welcome"]
    expected = {
        # built-in kinds, the app's kind; every shipped catalog's language, and the app's fr
        "acme": [*builtin, "shipping_update"],
        "globex": [*builtin, "shipping_update"],
        "broken": [*builtin, "shipping_update", "hostile", "nosample", "badsample"],
    }
    for tenant, kinds in expected.items():
        for kind in kinds:
            for locale in ("en", "de", "es", "fr", "nl"):
                assert link(tenant=tenant, kind=kind, locale=locale) in body
    assert "Acme Shop" in body and "Globex Café" in body and "Broken Ltd" in body
    assert "_layout" not in body


def test_a_page_shows_subject_html_text_and_sms_with_the_tenants_branding(server):
    body = page(server, tenant="acme", kind="order_confirmation", locale="en")
    assert "Order confirmation A-1001 \u2013 Acme Shop" in body  # subject, from sample.json
    assert "Acme Shop &lt;orders@acme.test&gt;" in body  # From
    # The HTML email, in a sandboxed frame, with the tenant's colour and items.
    assert '<iframe sandbox="" ' in body
    srcdoc = html.unescape(body.split('srcdoc="', 1)[1].split('"', 1)[0])
    assert f"background-color:{ACME_COLOR}" in srcdoc
    assert "Rope (10 m)" in srcdoc and "$99.99" in srcdoc
    # The text part and the SMS.
    assert "- Anvil: 1 x $79.99 = $79.99" in body
    assert "Acme Shop: thank you for your order A-1001 ($99.99)." in body
    assert "built-in: order_confirmation/sample.json" in body


def test_locales_use_translations_and_their_sample(server):
    body = page(server, tenant="globex", kind="order_confirmation", locale="de")
    assert "Bestätigung Ihrer Bestellung G-77 \u2013 Globex Café" in body
    srcdoc = html.unescape(body.split('srcdoc="', 1)[1].split('"', 1)[0])
    assert "Vielen Dank für Ihre Bestellung" in srcdoc
    assert "Max Müller" in srcdoc
    assert f"background-color:{GLOBEX_COLOR}" in srcdoc
    assert "built-in: de/order_confirmation/sample.json" in body
    # The app's French welcome subject; its missing HTML falls back to the built-in one.
    french = page(server, tenant="acme", kind="welcome", locale="fr")
    assert "Bienvenue chez Acme Shop" in french


@pytest.mark.parametrize(
    ("locale", "subject"),
    [
        ("es", "Confirmación de su pedido A-1001 \u2013 Acme Shop"),
        ("nl", "Bevestiging van uw bestelling A-1001 \u2013 Acme Shop"),
    ],
)
def test_every_shipped_language_previews_from_its_catalog(server, locale, subject):
    assert subject in page(server, tenant="acme", kind="order_confirmation", locale=locale)


def test_the_tenant_locale_is_the_default(server):
    body = page(server, tenant="globex", kind="welcome")
    assert "Globex Café / welcome / de" in body


def test_an_app_kind_with_its_own_sample(server):
    body = page(server, tenant="acme", kind="shipping_update", locale="en")
    assert "Order S-42 has shipped" in body
    assert "Tracking: https://track.example/S-42" in body
    assert "Acme Shop: S-42 shipped" in body
    assert "No HTML part" in body


def test_a_template_error_shows_on_the_page(server):
    body = page(server, tenant="broken", kind="welcome", locale="en")
    assert 'class="error"' in body
    assert "TemplateRenderError" in body and "syntax error" in body
    assert "welcome/subject.txt" in body
    # The other channel still renders from the built-in template.
    assert "Welcome to Broken Ltd, Jane Doe! Your account is ready." in body


def test_a_kind_without_or_with_a_bad_sample(server):
    body = page(server, tenant="broken", kind="nosample", locale="en")
    assert "Hello from Broken Ltd" in body
    assert "declares no sample.json" in body
    assert "This kind has no email." in body
    assert "The tenant has no sms_from" in body
    bad = page(server, tenant="broken", kind="badsample", locale="en")
    assert "tenant: badsample/sample.json is not valid JSON" in bad


def test_an_unknown_kind_is_an_error_on_the_page(server):
    body = page(server, tenant="acme", kind="no_such_kind", locale="en")
    assert "TemplateNotFoundError" in body and "no_such_kind" in body


def test_tenant_html_cannot_get_out_of_its_frame(server):
    status, body, headers = get(
        server.url + "preview?" + urlencode({"tenant": "broken", "kind": "hostile"})
    )
    assert status == 200
    # Every tag of the tenant's HTML is inside the escaped srcdoc attribute.
    assert "<script" not in body
    assert "Hostile &lt;b&gt;subject&lt;/b&gt;" in body
    assert body.count("<iframe") == 1
    srcdoc = html.unescape(body.split('srcdoc="', 1)[1].split('"></iframe>', 1)[0])
    assert srcdoc.startswith("<html><body><p>Hostile email</p><script>")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ({"tenant": "nobody", "kind": "welcome"}, 404, "unknown tenant"),
        ({"tenant": "acme", "kind": "welcome", "locale": "<x>"}, 400, "is not a locale"),
        ({"tenant": "acme"}, 400, "tenant and kind are required"),
    ],
)
def test_bad_requests(server, query, status, message):
    got, body, _ = get(server.url + "preview?" + urlencode(query))
    assert got == status
    assert html.escape(message) in body or message in body
    assert "<x>" not in body


def test_unknown_path_and_foreign_host(server):
    assert get(server.url + "nothing")[0] == 404
    # DNS rebinding: a page of another site, resolved to 127.0.0.1, gets nothing.
    status, body, _ = get(server.url, headers={"Host": "attacker.example:8025"})
    assert status == 403
    assert "Acme" not in body
    assert get(server.url, headers={"Host": f"localhost:{server.server_address[1]}"})[0] == 200


@contextlib.contextmanager
def cli_preview(tmp_path: Path, tenant_extra: str = "") -> Iterator[str]:
    """``tenant-notify preview`` in a process of its own; yields its URL."""
    config = tmp_path / "notify.toml"
    config.write_text(
        'transport = "eager"\n[email]\nprovider = "memory"\n[sms]\nprovider = "memory"\n'
        '[tenants.acme]\nname = "Acme Shop"\nemail_from = "orders@acme.test"\n'
        f'branding = {{ primary_color = "{ACME_COLOR}" }}\n' + tenant_extra,
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("TENANT_NOTIFY_CONFIG_FILE", None)
    env.pop("TENANT_NOTIFY_TEMPLATES__AUTO_RELOAD", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tenant_notify.cli", "preview", "--config", str(config), "--port=0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("tenant-notify preview on http://127.0.0.1:"), line + (
            process.stderr.read() if process.poll() is not None and process.stderr else ""
        )
        yield line.split(" on ", 1)[1].split()[0]
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_the_cli_serves_the_preview(tmp_path):
    with cli_preview(tmp_path) as url:
        status, body, _ = get(url + "preview?tenant=acme&kind=welcome")
        assert status == 200
        assert "Welcome to Acme Shop" in body and ACME_COLOR in body


def test_the_cli_preview_shows_an_edited_template_without_a_restart(tmp_path):
    # auto_reload is off by default (production); the preview is for editing.
    subject = tmp_path / "tenant" / "welcome" / "subject.txt"
    subject.parent.mkdir(parents=True)
    subject.write_text("First draft for {{ user_name }}", encoding="utf-8")
    with cli_preview(tmp_path, f"templates_dir = {json.dumps(str(subject.parents[1]))}\n") as url:
        assert "First draft for" in get(url + "preview?tenant=acme&kind=welcome")[1]
        subject.write_text("Second draft for {{ user_name }}", encoding="utf-8")
        later = time.time() + 10
        os.utime(subject, (later, later))
        assert "Second draft for" in get(url + "preview?tenant=acme&kind=welcome")[1]
