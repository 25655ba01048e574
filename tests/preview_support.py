"""A preview server over tenants with their own, the app's and broken templates.

Used by tests/test_preview.py and tests/test_preview_browser.py:
    from tests.preview_support import running_preview
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tenant_notify import Notifier
from tenant_notify.preview import PreviewServer, make_server, serve_in_thread

ACME_COLOR = "#b91c1c"
GLOBEX_COLOR = "#0f766e"


def write_templates(root: Path) -> tuple[Path, Path]:
    """An app template folder and a tenant folder with a broken and a hostile kind."""
    app = root / "app"
    (app / "shipping_update").mkdir(parents=True)
    (app / "shipping_update" / "subject.txt").write_text(
        "Order {{ order_id }} has shipped", encoding="utf-8"
    )
    (app / "shipping_update" / "body.txt").write_text(
        "Tracking: {{ tracking_url }}", encoding="utf-8"
    )
    (app / "shipping_update" / "sms.txt").write_text(
        "{{ tenant.name }}: {{ order_id }} shipped", encoding="utf-8"
    )
    (app / "shipping_update" / "sample.json").write_text(
        '{"order_id": "S-42", "tracking_url": "https://track.example/S-42"}', encoding="utf-8"
    )
    (app / "fr" / "welcome").mkdir(parents=True)
    (app / "fr" / "welcome" / "subject.txt").write_text(
        "Bienvenue chez {{ tenant.name }}", encoding="utf-8"
    )
    (app / "fr" / "welcome" / "body.txt").write_text("Bonjour {{ user_name }} !", encoding="utf-8")

    tenant = root / "broken"
    (tenant / "welcome").mkdir(parents=True)
    # A syntax error in the subject; the built-in SMS still renders.
    (tenant / "welcome" / "subject.txt").write_text("Hi {{ user_name ", encoding="utf-8")
    (tenant / "hostile").mkdir()
    (tenant / "hostile" / "subject.txt").write_text("Hostile <b>subject</b>", encoding="utf-8")
    (tenant / "hostile" / "body.txt").write_text("text", encoding="utf-8")
    (tenant / "hostile" / "body.html").write_text(
        "<html><body><p>Hostile email</p>"
        '<script>parent.document.body.innerHTML = "PWNED";</script>'
        '</body></html>"><script>document.title="PWNED"</script>',
        encoding="utf-8",
    )
    (tenant / "nosample").mkdir()
    (tenant / "nosample" / "sms.txt").write_text("Hello from {{ tenant.name }}", encoding="utf-8")
    (tenant / "badsample").mkdir()
    (tenant / "badsample" / "sms.txt").write_text("x", encoding="utf-8")
    (tenant / "badsample" / "sample.json").write_text("{not json", encoding="utf-8")
    return app, tenant


def settings(root: Path) -> dict[str, object]:
    app, tenant_dir = write_templates(root)
    return {
        "transport": "eager",
        "templates_dir": str(app),
        "email": {"provider": "memory"},
        "sms": {"provider": "memory"},
        "tenants": {
            "acme": {
                "name": "Acme Shop",
                "email_from": "Acme Shop <orders@acme.test>",
                "sms_from": "+15005550006",
                "branding": {"primary_color": ACME_COLOR, "support_email": "help@acme.test"},
            },
            "globex": {
                "name": "Globex Café",
                "email_from": "hello@globex.test",
                "locale": "de",
                "branding": {"primary_color": GLOBEX_COLOR},
            },
            "broken": {
                "name": "Broken Ltd",
                "email_from": "hi@broken.test",
                "templates_dir": str(tenant_dir),
            },
        },
    }


@contextmanager
def running_preview(root: Path) -> Iterator[PreviewServer]:
    """A preview server on a free loopback port, in a thread."""
    with Notifier.from_settings(settings(root)) as notify, make_server(notify, port=0) as server:
        thread = serve_in_thread(server)
        try:
            yield server
        finally:
            server.shutdown()
            thread.join(timeout=10)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    """GET ``url``: (status, body, headers), for error statuses too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8"), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8"), dict(err.headers)
