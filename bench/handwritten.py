"""What a competent host application writes by hand: the pieces fair baselines share.

The fair baselines (bench/bench_inprocess.py's hand-written queues,
bench/handwritten_app.py's fair Celery task) send **the same email** as the
library: the library's own built-in ``order_confirmation`` templates (subject,
text and HTML with the layout, German for the German tenant), rendered with plain
Jinja2 (no sandbox, no limits), compiled once and held, as a careful hand-writer
would. Their ``money`` filter calls the library's public ``format_money``, so both
sides print the same amounts.

They build MIME with the fastest way the standard library offers: ``email.mime``
with the ``compat32`` policy, about three times cheaper than
``email.message.EmailMessage`` with the default policy (the seed's way, kept in
:func:`seed_message` for the baseline that shows what we grew out of).

Nothing here validates an address, records a status, reserves an idempotency key
or retries: the baselines that use it say so in the guarantee they are listed with.
"""

from __future__ import annotations

import email.policy
import gettext
import re
from decimal import Decimal
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Any

import jinja2

import tenant_notify
from tenant_notify.templates import format_money

# The built-in templates (templates/builtin/; default_templates/ in older installs).
_PACKAGE = Path(tenant_notify.__file__).resolve().parent
TEMPLATES = next(
    path
    for path in (_PACKAGE / "templates" / "builtin", _PACKAGE / "default_templates")
    if path.is_dir()
)
KIND = "order_confirmation"
_LOCALES = str(_PACKAGE / "templates" / "locale")
_DOMAIN = "tenant_notify"
PARTS = ("subject.txt", "body.txt", "body.html")

#: The two tenants every delivery benchmark sends for (settings form).
TENANTS: dict[str, dict[str, Any]] = {
    "acme": {"name": "Acme Shop", "email_from": "Acme Shop <orders@acme.test>"},
    "globex": {"name": "Globex Café", "email_from": "hello@globex.test", "locale": "de"},
}
SENDERS = {
    "acme": ("orders@acme.test", "Acme Shop"),
    "globex": ("hello@globex.test", "Globex Café"),
}
LOCALES = {"acme": "en", "globex": "de"}

_COLOR = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?|[a-zA-Z]{3,20}")
_CRLF = email.policy.compat32.clone(linesep="\r\n")


@jinja2.pass_context
def _money(context: Any, amount: Decimal, currency: str) -> str:
    return format_money(amount, currency, context.get("locale"))


def _css_color(value: object, default: str) -> str:
    return value if isinstance(value, str) and _COLOR.fullmatch(value) else default


class Renderer:
    """The built-in templates under plain Jinja2, compiled once per (locale, part)."""

    def __init__(self) -> None:
        loader = jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({"builtin": jinja2.FileSystemLoader(TEMPLATES)}, delimiter=":"),
                jinja2.FileSystemLoader(TEMPLATES),
            ]
        )
        self.templates = {}
        for locale in ("en", "de"):
            env = jinja2.Environment(
                loader=loader,
                autoescape=jinja2.select_autoescape(["html"]),
                trim_blocks=True,
                lstrip_blocks=True,
                undefined=jinja2.StrictUndefined,
                extensions=["jinja2.ext.i18n"],
            )
            env.policies["ext.i18n.trimmed"] = True  # as the library installs it
            env.filters["money"] = _money
            env.filters["css_color"] = _css_color
            # The built-in templates' words are gettext catalogs shipped with the package.
            env.install_gettext_translations(  # type: ignore[attr-defined]
                gettext.translation(_DOMAIN, _LOCALES, languages=[locale], fallback=True),
                newstyle=True,
            )
            for part in PARTS:
                # Older installs kept a folder of templates per locale.
                names = [f"{locale}/{KIND}/{part}", f"{KIND}/{part}"] if locale != "en" else []
                self.templates[locale, part] = env.get_or_select_template(
                    [*names, f"{KIND}/{part}"]
                )

    def render(self, tenant_id: str, order: dict[str, Any]) -> tuple[str, str, str]:
        """Subject, text and HTML of ``order`` for ``tenant_id``."""
        locale = LOCALES[tenant_id]
        context = {
            **order,
            "tenant": {
                "id": tenant_id,
                "name": SENDERS[tenant_id][1],
                "locale": locale,
                "branding": {},
            },
            "locale": locale,
        }
        subject, text, html = (self.templates[locale, part].render(context) for part in PARTS)
        return subject.strip(), text.strip(), html


def order(i: int, run: str, tenant_id: str) -> dict[str, Any]:
    """The order confirmation of message ``i``: a distinct order and customer each."""
    return {
        "order_id": f"{run}-{i}",
        "customer_email": f"customer{i}@example.com",
        # Totals differ from order to order, as they do in a shop (no formatting cache
        # sees the same amount twice in a row).
        "order_total": Decimal(f"{10 + i % 990}.{i % 97:02d}") if i >= 0 else Decimal("99.99"),
        "currency": "USD",
        "tenant_id": tenant_id,
    }


def fast_mime(tenant_id: str, to: str, subject: str, text: str, html: str) -> bytes:
    """The fastest standard-library MIME: ``email.mime`` under ``compat32``, CRLF lines."""
    address, name = SENDERS[tenant_id]
    message = MIMEMultipart("alternative", policy=_CRLF)
    message["From"] = formataddr((name, address), "utf-8")
    message["To"] = to
    message["Subject"] = Header(subject, "utf-8")
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain=address.partition("@")[2])
    message.attach(MIMEText(text, "plain", "utf-8", policy=_CRLF))
    message.attach(MIMEText(html, "html", "utf-8", policy=_CRLF))
    return message.as_bytes()


def seed_message(tenant_id: str, to: str, subject: str, text: str, html: str) -> EmailMessage:
    """The seed's way: ``email.message.EmailMessage`` with the default policy."""
    address, name = SENDERS[tenant_id]
    message = EmailMessage()
    message["From"] = f"{name} <{address}>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=address.partition("@")[2])
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message
