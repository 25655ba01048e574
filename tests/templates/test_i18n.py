"""Gettext catalogs for the built-in templates: complete, compiled, and used per locale."""

from __future__ import annotations

import gettext
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from tenant_notify.errors import TemplateSecurityError
from tenant_notify.templates import TemplateRenderer, format_money
from tenant_notify.templates._i18n import DOMAIN, LOCALE_DIR, catalog_locales, translations
from tenant_notify.templates._loader import BUILTIN_DIR

from .test_renderer import write

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ("de", "es", "fr", "nl")


def po(language: str) -> Catalog:
    with (LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as file:
        return read_po(file, locale=language)


def extracted() -> set[tuple[Any, str | None]]:
    """What the templates ask the catalogs for, as Babel's extractor finds it."""
    with (ROOT / "babel.cfg").open(encoding="utf-8") as file:
        method_map, options_map = parse_mapping_cfg(file)
    found = set()
    for _, _, message, _, context in extract_from_dir(BUILTIN_DIR, method_map, options_map):
        found.add((message, context))
    return found


def ids(catalog: Catalog) -> set[tuple[Any, str | None]]:
    return {(m.id, m.context) for m in catalog if m.id}


# --- the catalogs themselves -------------------------------------------------------------


def test_the_five_languages_are_shipped():
    assert catalog_locales() == ("en", "de", "es", "fr", "nl")


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_catalog_translates_every_message_of_the_templates(language):
    catalog = po(language)
    assert ids(catalog) == extracted()
    untranslated = [m.id for m in catalog if m.id and (m.fuzzy or not all(_strings(m)))]
    assert untranslated == []
    # Babel's own checks: the same %(name)s placeholders as the msgid, plural counts.
    problems = [(m.id, errors) for m, errors in catalog.check()]
    assert problems == []


def _strings(message: Any) -> list[str]:
    return list(message.string) if isinstance(message.string, tuple) else [message.string]


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_catalogs_plural_rule_is_cldrs(language):
    assert po(language).plural_forms == Catalog(locale=language).plural_forms


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_shipped_mo_is_the_po_compiled(language):
    compiled = io.BytesIO()
    write_mo(compiled, po(language))
    compiled.seek(0)
    fresh = gettext.GNUTranslations(compiled)
    shipped = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo"
    with shipped.open("rb") as file:
        assert gettext.GNUTranslations(file)._catalog == fresh._catalog  # type: ignore[attr-defined]


def test_the_template_catalog_is_current():
    with (LOCALE_DIR / f"{DOMAIN}.pot").open("rb") as file:
        assert ids(read_po(file)) == extracted()


# --- rendering from the catalogs ---------------------------------------------------------

TENANT = {"name": "Acme Shop", "branding": {"support_email": "help@acme.test"}}
ORDER = {
    "tenant": TENANT,
    "order_id": "A-1",
    "customer_name": "Jane",
    "order_total": Decimal("21.00"),
    "currency": "EUR",
    "items": [{"name": "Mug", "quantity": 2, "unit_price": Decimal("10.50")}],
    "order_url": "https://acme.test/orders/A-1",
}
WELCOME = {
    "tenant": TENANT,
    "user_name": "Max",
    "user_email": "max@example.com",
    "login_url": "https://acme.test/login",
}


@pytest.fixture
def renderer() -> TemplateRenderer:
    return TemplateRenderer()


def _(locale: str, message: str, **variables: Any) -> str:
    return translations(locale).gettext(message) % variables


@pytest.mark.parametrize("locale", catalog_locales())
def test_the_order_confirmation_renders_from_the_catalog(renderer, locale):
    email = renderer.render_email("order_confirmation", ORDER, locale=locale)
    shop, number = "Acme Shop", "A-1"
    assert email.subject == _(
        locale,
        "Order confirmation %(number)s \u2013 %(shop)s",
        number=number,
        shop=shop,
    )
    assert email.text.startswith(_(locale, "Hello %(name)s,", name="Jane") + "\n\n")
    items = translations(locale).ngettext(
        "Your order has %(num)d item:", "Your order has %(num)d items:", 2
    ) % {"num": 2}
    for line in (
        _(locale, "Order number: %(number)s", number=number),
        items,
        _(locale, "Kind regards,"),
        _(locale, "Questions? Write to %(email)s", email="help@acme.test"),
    ):
        assert line in email.text
    assert email.html is not None
    assert f'<html lang="{locale}">' in email.html
    assert f">{_(locale, 'Thank you for your order')}</h1>" in email.html
    assert _(locale, "View your order") in email.html
    sms = renderer.render_sms("order_confirmation", ORDER, locale=locale)
    total = format_money(ORDER["order_total"], "EUR", locale)
    said = _(locale, "%(shop)s: thank you for your order %(number)s (%(total)s).",
             shop=shop, number=number, total=total)  # fmt: skip
    assert sms == plain(f"{said} {ORDER['order_url']}")


def plain(text: str) -> str:
    return text.replace("\u00a0", " ").replace("\u202f", " ")


@pytest.mark.parametrize("locale", catalog_locales())
def test_the_welcome_renders_from_the_catalog(renderer, locale):
    email = renderer.render_email("welcome", WELCOME, locale=locale)
    assert email.subject == _(locale, "Welcome to %(shop)s", shop="Acme Shop")
    assert _(locale, "Sign in here: %(url)s", url="https://acme.test/login") in email.text
    assert email.html is not None and _(locale, "Sign in") in email.html
    sms = renderer.render_sms("welcome", WELCOME, locale=locale)
    assert sms.startswith(
        _(
            locale,
            "Welcome to %(shop)s, %(name)s! Your account is ready.",
            shop="Acme Shop",
            name="Max",
        )
    )


@pytest.mark.parametrize("locale", LANGUAGES)
def test_no_english_is_left_in_another_language(renderer, locale):
    english = renderer.render_email("order_confirmation", ORDER, locale="en")
    other = renderer.render_email("order_confirmation", ORDER, locale=locale)
    for phrase in ("Thank you", "Order number", "Kind regards", "Questions?", "View your order"):
        assert phrase in english.text + (english.html or "")
        assert phrase not in other.text + (other.html or "")


def test_a_regional_locale_uses_its_languages_catalog(renderer):
    austrian = renderer.render_email("welcome", WELCOME, locale="de-AT")
    assert austrian.subject == renderer.render_email("welcome", WELCOME, locale="de").subject
    unknown = renderer.render_email("welcome", WELCOME, locale="fi")
    assert unknown.subject == "Welcome to Acme Shop"  # no Finnish catalog: the English


@pytest.mark.parametrize(
    ("locale", "counts"),
    [
        ("en", {1: "1 item:", 2: "2 items:"}),
        ("de", {1: "1 Artikel:", 2: "2 Artikel:"}),
        ("fr", {1: "1 article :", 2: "2 articles :"}),
        ("nl", {1: "1 artikel:", 3: "3 artikelen:"}),
        ("es", {1: "1 artículo:", 5: "5 artículos:"}),
    ],
)
def test_the_item_count_takes_the_languages_plural_form(renderer, locale, counts):
    for quantity, phrase in counts.items():
        items = [{"name": "Mug", "quantity": quantity, "unit_price": Decimal("1")}]
        text = renderer.render_email("order_confirmation", {**ORDER, "items": items}, locale=locale)
        assert phrase in text.text


def test_french_counts_zero_as_singular():
    # CLDR's French rule: 0 and 1 take the singular (German and English say plural).
    singular = "Your order has %(num)d item:"
    plural = "Your order has %(num)d items:"
    assert translations("fr").ngettext(singular, plural, 0) == translations("fr").ngettext(
        singular, plural, 1
    )
    assert translations("de").ngettext(singular, plural, 0) == translations("de").ngettext(
        singular, plural, 2
    )


# --- tenants and the sandbox ---------------------------------------------------------------


def test_a_tenant_still_overrides_any_part_in_any_locale(renderer, tmp_path):
    write(tmp_path, "fr/welcome/subject.txt", "Salut de {{ tenant.name }}")
    write(tmp_path, "welcome/sms.txt", "{{ _('Welcome to %(shop)s', shop=tenant.name) }}!")
    french = renderer.render_email("welcome", WELCOME, templates_dir=tmp_path, locale="fr")
    assert french.subject == "Salut de Acme Shop"
    assert french.text == renderer.render_email("welcome", WELCOME, locale="fr").text
    german = renderer.render_email("welcome", WELCOME, templates_dir=tmp_path, locale="de")
    assert german.subject == _("de", "Welcome to %(shop)s", shop="Acme Shop")
    # A tenant's own template reads the library's catalogs too.
    sms = renderer.render_sms("welcome", WELCOME, templates_dir=tmp_path, locale="nl")
    assert sms == "Welkom bij Acme Shop!"


def test_translated_variables_are_escaped_in_html(renderer):
    shady = {**WELCOME, "user_name": "<script>alert(1)</script>"}
    html = renderer.render_email("welcome", shady, locale="fr").html
    assert html is not None
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_trans_runs_inside_the_sandbox(renderer, tmp_path):
    write(tmp_path, "probe/sms.txt", "{% trans x=().__class__.__mro__ %}{{ x }}{% endtrans %}")
    with pytest.raises(TemplateSecurityError):
        renderer.render_sms("probe", {"tenant": TENANT}, templates_dir=tmp_path, locale="de")
