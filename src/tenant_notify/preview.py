"""A local web page that shows every kind as each tenant's recipients would get it.

``tenant-notify preview`` (or :func:`make_server`) serves, on 127.0.0.1 by
default, an index of every kind (built-in, the host application's and the
tenants' own) for every tenant and locale, and for each one a page with the
rendered subject, HTML, text and SMS side by side. Rendering goes through the
same :class:`~tenant_notify.dispatcher.Dispatcher` context and
:class:`~tenant_notify.templates.TemplateRenderer` as a real send, so tenant
branding, template overrides and translations show exactly as they would be
sent. A template error is shown on the page instead of stopping the server.

Sample context
--------------
A kind declares the fields its preview is rendered with in ``sample.json`` in
its folder (``<kind>/sample.json``, or ``<locale>/<kind>/sample.json`` for a
translation), looked up in the same tenant -> application -> built-in order as
the templates. Numbers with a fraction are read as :class:`~decimal.Decimal`,
as the ``money`` filter wants. The built-in kinds ship one each.

Safety
------
Everything put into the page is HTML-escaped. The rendered HTML is shown in an
``<iframe sandbox srcdoc=...>``: no scripts run in it and it cannot reach the
page around it. The page itself runs no script (its Content-Security-Policy
says so). With the default loopback address, requests whose ``Host`` is not a
loopback name are refused, so a web site cannot read the previews through DNS
rebinding. The server is for a developer's machine, not for the internet.
"""

from __future__ import annotations

import html
import ipaddress
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from ._validation import normalize_locale
from .dispatcher import Dispatcher
from .errors import NotifyError, TemplateNotFoundError, UnknownTenantError
from .log import get_logger
from .models import Channel, Notification, encode_context, new_notification_id
from .templates import EMAIL_PARTS, SMS_PART
from .templates._i18n import catalog_locales
from .templates._loader import BUILTIN_DIR, is_safe_name
from .templates._locale import locale_folders
from .tenants import Tenant

__all__ = ["PreviewServer", "Previewer", "RenderedPreview", "make_server"]

#: Locales every tenant is previewed in, besides its own and those found in folders.
#: Every language the built-in templates have a catalog for (and English).
DEFAULT_LOCALES: tuple[str, ...] = catalog_locales()
SAMPLE_FILE = "sample.json"

_PART_FILES = frozenset({*EMAIL_PARTS, SMS_PART})
_MAX_SAMPLE_BYTES = 1 << 20
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


# --- what a page shows ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedPreview:
    """One kind rendered for one tenant and locale.

    Attributes:
        tenant: The tenant.
        kind: The kind.
        locale: The locale it was rendered in.
        context: The sample context (before the library adds ``tenant`` and ``locale``).
        sample_source: Where the sample context came from, or None.
        subject, text, html: The email parts; ``html`` None when there is none.
        sms: The SMS text.
        email_error, sms_error: Why a channel could not be rendered ("" if the
            kind has no template for that channel at all is told by ``has_*``).
        has_email, has_sms: Whether the kind has templates for the channel.
    """

    tenant: Tenant
    kind: str
    locale: str
    context: Mapping[str, Any]
    sample_source: str | None
    has_email: bool
    has_sms: bool
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    sms: str | None = None
    email_error: str | None = None
    sms_error: str | None = None
    notes: tuple[str, ...] = field(default=())


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class Previewer:
    """Finds kinds, locales and sample context, and renders previews.

    Args:
        dispatcher: The notifier's dispatcher; its renderer and context are used.
        tenants: The tenants to list, by id.
    """

    def __init__(self, dispatcher: Dispatcher, tenants: Mapping[str, Tenant]) -> None:
        self.dispatcher = dispatcher
        self.tenants = dict(tenants)

    # -- discovery

    def _roots(self, tenant: Tenant) -> list[tuple[str, Path]]:
        roots: list[tuple[str, Path]] = []
        if tenant.templates_dir is not None:
            roots.append(("tenant", Path(tenant.templates_dir)))
        app_dir = self.dispatcher.renderer.app_templates_dir
        if app_dir is not None:
            roots.append(("app", Path(app_dir)))
        roots.append(("built-in", BUILTIN_DIR))
        return roots

    @staticmethod
    def _subdirs(path: Path) -> list[Path]:
        try:
            return [child for child in path.iterdir() if child.is_dir()]
        except OSError:
            return []

    @staticmethod
    def _is_kind_dir(path: Path) -> bool:
        return is_safe_name(path.name) and any((path / part).is_file() for part in _PART_FILES)

    def _locale_dirs(self, root: Path) -> list[Path]:
        found = []
        for child in self._subdirs(root):
            if locale_folders(child.name) and any(
                self._is_kind_dir(grandchild) for grandchild in self._subdirs(child)
            ):
                found.append(child)
        return found

    def kinds(self, tenant: Tenant) -> list[str]:
        """Every kind any of the tenant's template sources has, in any locale, sorted."""
        names: set[str] = set()
        for _, root in self._roots(tenant):
            for folder in [root, *self._locale_dirs(root)]:
                names.update(d.name for d in self._subdirs(folder) if self._is_kind_dir(d))
        return sorted(names)

    def locales(self, tenant: Tenant) -> list[str]:
        """The tenant's locale first, then every locale the built-in templates ship
        (en, de, es, fr, nl) and every locale folder found in the tenant's and the
        application's templates."""
        others: set[str] = set(DEFAULT_LOCALES)
        for _, root in self._roots(tenant):
            for folder in self._locale_dirs(root):
                try:
                    others.add(normalize_locale(folder.name, "locale"))
                except NotifyError:
                    continue
        others.discard(tenant.locale)
        return [tenant.locale, *sorted(others)]

    # -- sample context

    def sample_context(self, tenant: Tenant, kind: str, locale: str) -> tuple[dict[str, Any], str]:
        """The kind's ``sample.json`` for this tenant and locale, and where it was found.

        Returns ``({}, "")`` when no source has one.

        Raises:
            ValueError: The file is not a JSON object, or is too large.
        """
        if not is_safe_name(kind):
            return {}, ""
        folders = [*locale_folders(locale), ""]
        for label, root in self._roots(tenant):
            resolved_root = root.resolve()
            for folder in folders:
                path = root / folder / kind / SAMPLE_FILE if folder else root / kind / SAMPLE_FILE
                if not path.is_file():
                    continue
                # Tenant folders are untrusted: no symlink out of them.
                if not path.resolve().is_relative_to(resolved_root):
                    continue
                shown = f"{label}: {path.relative_to(root).as_posix()}"
                if path.stat().st_size > _MAX_SAMPLE_BYTES:
                    raise ValueError(f"{shown} is larger than {_MAX_SAMPLE_BYTES:,} bytes")
                try:
                    value = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise ValueError(f"{shown} is not valid JSON: {err}") from err
                if not isinstance(value, dict):
                    raise ValueError(f"{shown} must hold a JSON object")
                return value, shown
        return {}, ""

    # -- rendering

    def render(self, tenant_id: str, kind: str, locale: str) -> RenderedPreview:
        """Render every part of ``kind`` for the tenant; errors are kept, not raised.

        Raises:
            UnknownTenantError: No such tenant.
            ValidationError: ``locale`` is not a locale.
        """
        tenant = self.tenants.get(tenant_id) or self.dispatcher.tenants.get(tenant_id)
        locale = normalize_locale(locale, "locale")
        renderer = self.dispatcher.renderer
        notes: list[str] = []
        try:
            sample, source = self.sample_context(tenant, kind, locale)
        except (OSError, ValueError) as err:
            sample, source = {}, None
            notes.append(f"The sample context could not be read: {err}")
        if source == "":
            source = None
            notes.append(
                f"The kind declares no {SAMPLE_FILE}; it is rendered with an empty context."
            )

        has: dict[Channel, bool] = {}
        missing: dict[Channel, str] = {}
        for channel in (Channel.EMAIL, Channel.SMS):
            try:
                renderer.check_kind(
                    kind, channel, templates_dir=tenant.templates_dir, locale=locale
                )
                has[channel] = True
            except TemplateNotFoundError as err:
                has[channel] = False
                missing[channel] = _describe(err)

        result: dict[str, Any] = {}
        try:
            notification = Notification(
                id=new_notification_id(),
                tenant_id=tenant.id,
                kind=kind,
                channel=Channel.EMAIL,
                to="",
                context=encode_context(sample),
                locale=locale,
            )
            context = self.dispatcher.template_context(notification, tenant, locale)
        except Exception as err:
            # A sample value templates cannot be given (say, a set): say so on the page.
            context = None
            result["email_error"] = result["sms_error"] = _describe(err)

        if context is not None:
            if has[Channel.EMAIL]:
                try:
                    email = renderer.render_email(
                        kind, context, templates_dir=tenant.templates_dir, locale=locale
                    )
                    result.update(subject=email.subject, text=email.text, html=email.html)
                except Exception as err:
                    result["email_error"] = _describe(err)
            if has[Channel.SMS]:
                try:
                    result["sms"] = renderer.render_sms(
                        kind, context, templates_dir=tenant.templates_dir, locale=locale
                    )
                except Exception as err:
                    result["sms_error"] = _describe(err)
        if not has[Channel.EMAIL] and not has[Channel.SMS]:
            result["email_error"] = missing[Channel.EMAIL]
            result["sms_error"] = missing[Channel.SMS]
        if has[Channel.EMAIL] and tenant.sender is None:
            notes.append("The tenant has no email_from: sending this email would fail.")
        if has[Channel.SMS] and tenant.sms_from is None:
            notes.append("The tenant has no sms_from: sending this SMS would fail.")
        return RenderedPreview(
            tenant=tenant,
            kind=kind,
            locale=locale,
            context=sample,
            sample_source=source,
            has_email=has[Channel.EMAIL],
            has_sms=has[Channel.SMS],
            notes=tuple(notes),
            **result,
        )


# --- HTML -------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _link(**query: str) -> str:
    return "/preview?" + urlencode(query)


_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;
color:#111827;background:#f9fafb}
header{padding:12px 20px;background:#111827;color:#f9fafb;display:flex;gap:16px;
align-items:baseline;flex-wrap:wrap}
header a{color:#e5e7eb}
header h1{font-size:16px;margin:0}
main{padding:16px 20px}
h2{font-size:15px;margin:20px 0 8px}
table.index{border-collapse:collapse;background:#fff;margin-bottom:8px}
table.index th,table.index td{border:1px solid #e5e7eb;padding:6px 10px;text-align:left}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:middle;
border:1px solid #d1d5db}
.muted{color:#6b7280}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0 0 12px}
.meta dt{color:#6b7280}.meta dd{margin:0}
.subject{font-size:17px;font-weight:600}
.parts{display:grid;grid-template-columns:minmax(0,640px) minmax(0,1fr) minmax(0,300px);
gap:16px;align-items:start}
.part{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:10px}
.part h3{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:#6b7280;margin:0 0 8px}
iframe{width:100%;height:680px;border:1px solid #e5e7eb;background:#fff}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:13px/1.5 ui-monospace,Menlo,
Consolas,monospace}
.sms pre{background:#dcfce7;border-radius:12px;padding:10px 12px;font-family:inherit}
.error{background:#fef2f2;border:1px solid #fecaca;color:#991b1b;border-radius:6px;padding:10px;
white-space:pre-wrap;word-break:break-word}
.note{background:#fffbeb;border:1px solid #fde68a;border-radius:6px;padding:6px 10px;margin:0 0 8px}
nav.other{margin:0 0 12px}nav.other a{margin-right:8px}
details{margin-top:16px}
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )


def _header(crumbs: str) -> str:
    return f'<header><h1><a href="/">tenant-notify preview</a></h1>{crumbs}</header>'


def _swatch(tenant: Tenant) -> str:
    color = tenant.branding.get("primary_color")
    if not color:
        return ""
    # An attribute value, escaped; the CSS parser drops anything that is not a colour.
    return f'<span class="swatch" style="background:{_e(color)}" title="{_e(color)}"></span> '


def index_page(previewer: Previewer) -> str:
    """The list of every kind for every tenant and locale."""
    sections = []
    if not previewer.tenants:
        sections.append("<p>No tenants are configured.</p>")
    for tenant in sorted(previewer.tenants.values(), key=lambda t: t.id):
        locales = previewer.locales(tenant)
        head = "".join(f"<th>{_e(locale)}</th>" for locale in locales)
        rows = []
        for kind in previewer.kinds(tenant):
            cells = "".join(
                f'<td><a href="{_e(_link(tenant=tenant.id, kind=kind, locale=locale))}">'
                f"{_e(locale)}</a></td>"
                for locale in locales
            )
            rows.append(f"<tr><th>{_e(kind)}</th>{cells}</tr>")
        sections.append(
            f'<h2 id="tenant-{_e(tenant.id)}">{_swatch(tenant)}{_e(tenant.name)} '
            f'<span class="muted">({_e(tenant.id)}, locale {_e(tenant.locale)})</span></h2>'
            f'<table class="index"><tr><th>kind</th>{head}</tr>{"".join(rows)}</table>'
        )
    return _page(
        "tenant-notify preview",
        _header('<span class="muted">every kind, tenant and locale</span>')
        + f"<main>{''.join(sections)}</main>",
    )


def _error(message: str) -> str:
    return f'<div class="error" role="alert">{_e(message)}</div>'


def preview_page(previewer: Previewer, preview: RenderedPreview) -> str:
    """The page of one kind for one tenant and locale."""
    tenant = preview.tenant
    other_locales = " ".join(
        f'<a href="{_e(_link(tenant=tenant.id, kind=preview.kind, locale=locale))}">'
        f"{_e(locale)}</a>"
        if locale != preview.locale
        else f"<strong>{_e(locale)}</strong>"
        for locale in previewer.locales(tenant)
    )
    other_kinds = " ".join(
        f'<a href="{_e(_link(tenant=tenant.id, kind=kind, locale=preview.locale))}">{_e(kind)}</a>'
        if kind != preview.kind
        else f"<strong>{_e(kind)}</strong>"
        for kind in previewer.kinds(tenant)
    )
    sender = tenant.sender
    meta = [
        ("Tenant", f"{_swatch(tenant)}{_e(tenant.name)} ({_e(tenant.id)})"),
        ("From", _e(sender) if sender else '<span class="muted">none</span>'),
        ("SMS from", _e(tenant.sms_from or "") or '<span class="muted">none</span>'),
    ]
    if preview.has_email:
        meta.append(
            (
                "Subject",
                f'<span class="subject">{_e(preview.subject)}</span>'
                if preview.subject is not None
                else _error(preview.email_error or "not rendered"),
            )
        )
    meta_html = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in meta)

    def part(title: str, css: str, content: str) -> str:
        return f'<section class="part {css}"><h3>{_e(title)}</h3>{content}</section>'

    if not preview.has_email:
        html_part = text_part = (
            '<p class="muted">This kind has no email.</p>'
            if preview.has_sms
            else _error(preview.email_error or "no email templates")
        )
    elif preview.email_error is not None:
        html_part = text_part = _error(preview.email_error)
    else:
        if preview.html is None:
            html_part = '<p class="muted">No HTML part: recipients get the text only.</p>'
        else:
            # srcdoc is an attribute: escaping quotes keeps the document inside it, and
            # sandbox (no allow-* tokens) runs no script and gives it an opaque origin.
            html_part = (
                f'<iframe sandbox="" referrerpolicy="no-referrer" title="HTML email" '
                f'srcdoc="{_e(preview.html)}"></iframe>'
            )
        text_part = f"<pre>{_e(preview.text)}</pre>"
    if not preview.has_sms:
        sms_part = (
            '<p class="muted">This kind has no SMS.</p>'
            if preview.has_email
            else _error(preview.sms_error or "no SMS template")
        )
    elif preview.sms_error is not None:
        sms_part = _error(preview.sms_error)
    else:
        sms = preview.sms or ""
        sms_part = f'<pre>{_e(sms)}</pre><p class="muted">{len(sms)} characters</p>'

    notes = "".join(f'<p class="note">{_e(note)}</p>' for note in preview.notes)
    context = json.dumps(preview.context, indent=2, ensure_ascii=False, default=str)
    source = _e(preview.sample_source) if preview.sample_source else "none"
    body = (
        _header(f"<span>{_e(tenant.name)} / {_e(preview.kind)} / {_e(preview.locale)}</span>")
        + "<main>"
        + f'<nav class="other">Locale: {other_locales}</nav>'
        + f'<nav class="other">Kind: {other_kinds}</nav>'
        + notes
        + f'<dl class="meta">{meta_html}</dl>'
        + '<div class="parts">'
        + part("HTML", "html", html_part)
        + part("Text", "text", text_part)
        + part("SMS", "sms", sms_part)
        + "</div>"
        + f"<details><summary>Sample context ({source})</summary><pre>{_e(context)}</pre>"
        + "</details></main>"
    )
    return _page(f"{tenant.name}: {preview.kind} ({preview.locale})", body)


def _message_page(status: HTTPStatus, message: str) -> str:
    return _page(
        f"{status.value} {status.phrase}",
        _header("") + f"<main><h2>{status.value} {_e(status.phrase)}</h2>{_error(message)}</main>",
    )


# --- the server -------------------------------------------------------------------------

_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # srcdoc frames inherit this policy: no script anywhere, inline styles and
    # remote images (logos) allowed as in a mail client.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; "
        "frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: PreviewServer
    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        try:
            status, page = self._route()
        except Exception as err:  # a bug here must not take the server down
            self.server.log.exception("preview_failed", path=self.path)
            status, page = (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                _message_page(HTTPStatus.INTERNAL_SERVER_ERROR, _describe(err)),
            )
        body = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self) -> tuple[HTTPStatus, str]:
        if self.server.loopback_only:
            host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
            if not _is_loopback(host):
                return HTTPStatus.FORBIDDEN, _message_page(
                    HTTPStatus.FORBIDDEN, "This server only answers requests for a loopback host."
                )
        url = urlsplit(self.path)
        previewer = self.server.previewer
        if url.path == "/":
            return HTTPStatus.OK, index_page(previewer)
        if url.path == "/preview":
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            tenant_id, kind = query.get("tenant", ""), query.get("kind", "")
            if not tenant_id or not kind:
                return HTTPStatus.BAD_REQUEST, _message_page(
                    HTTPStatus.BAD_REQUEST, "tenant and kind are required"
                )
            try:
                tenant = previewer.tenants.get(tenant_id) or previewer.dispatcher.tenants.get(
                    tenant_id
                )
                preview = previewer.render(tenant_id, kind, query.get("locale") or tenant.locale)
            except NotifyError as err:
                status = (
                    HTTPStatus.NOT_FOUND
                    if isinstance(err, UnknownTenantError)
                    else HTTPStatus.BAD_REQUEST
                )
                return status, _message_page(status, _describe(err))
            return HTTPStatus.OK, preview_page(previewer, preview)
        return HTTPStatus.NOT_FOUND, _message_page(HTTPStatus.NOT_FOUND, f"no page {url.path!r}")

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log.info("preview_request", request=format % args)


class PreviewServer(ThreadingHTTPServer):
    """The preview web server; :attr:`url` is where it listens.

    Use :func:`make_server` to build one, ``serve_forever()`` to run it and
    ``shutdown()`` and ``server_close()`` (or ``with``) to stop it.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], previewer: Previewer) -> None:
        self.previewer = previewer
        self.log = get_logger()
        self.loopback_only = _is_loopback(address[0])
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """``http://host:port/``, with the port actually bound."""
        host, port = self.server_address[:2]
        shown = str(host)
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{port}/"


def make_server(
    notifier: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8025,
    tenants: Iterable[Tenant] | None = None,
) -> PreviewServer:
    """Build a preview server for a :class:`~tenant_notify.notifier.Notifier`.

    Args:
        notifier: Its dispatcher renders the previews.
        host: Address to listen on; keep the loopback default.
        port: Port to listen on; 0 picks a free one (see :attr:`PreviewServer.url`).
        tenants: The tenants to list; defaults to the settings' ``[tenants.*]`` tables.
    """
    listed = list(tenants) if tenants is not None else list(notifier.settings.tenants.values())
    previewer = Previewer(notifier.dispatcher, {tenant.id: tenant for tenant in listed})
    return PreviewServer((host, port), previewer)


def serve_in_thread(server: PreviewServer) -> threading.Thread:
    """Run ``server`` in a daemon thread (tests, notebooks); stop it with ``shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, name="tenant-notify-preview")
    thread.daemon = True
    thread.start()
    return thread
