"""Built-in templates render outside the sandbox, translated when compiled; tenants' do not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest

from tenant_notify.errors import TemplateLimitError, TemplateSecurityError
from tenant_notify.templates import TemplateRenderer
from tenant_notify.templates._filters import css_color_filter, money_filter
from tenant_notify.templates._i18n import catalog_locales, translations
from tenant_notify.templates._loader import BUILTIN_DIR
from tenant_notify.templates._sandbox import SandboxTemplate
from tenant_notify.templates._trusted import TrustedEnvironment

from .test_renderer import write

KINDS = ("order_confirmation", "welcome", "email", "sms")
PARTS = ("subject.txt", "body.txt", "body.html", "sms.txt")
# Regional locales read two catalogs (or fall back to one), unknown ones none.
LOCALES = (*catalog_locales(), "de-AT", "fr-CA", "xx")


def _context(kind: str, locale: str) -> dict[str, Any]:
    sample = json.loads((BUILTIN_DIR / kind / "sample.json").read_text())
    return {
        **sample,
        # Markup in every value a template prints: escaped in HTML parts, only there.
        "customer_name": "<b>Ann</b> & Co",
        "user_name": "<b>Ann</b> & Co",
        "tenant": {
            "id": "t",
            "name": "Tom & <Jerry>",
            "branding": {
                "support_email": "help@example.com",
                "website_url": "https://example.com/?a=1&b=2",
                "primary_color": "#123456",
            },
        },
        "locale": locale,
    }


def _jinja_reference(locale: str) -> jinja2.Environment:
    """Jinja's own i18n extension at render time: what the compiled-in words replace."""
    env = jinja2.Environment(
        loader=jinja2.PrefixLoader(
            {"builtin": jinja2.FileSystemLoader(BUILTIN_DIR)}, delimiter=":"
        ),
        autoescape=lambda name: name is not None and name.endswith(".html"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
    env.filters["money"] = money_filter
    env.filters["css_color"] = css_color_filter
    return env


@pytest.mark.parametrize("locale", LOCALES)
def test_built_in_templates_render_as_jinjas_i18n_does(locale: str) -> None:
    renderer = TemplateRenderer()
    reference = _jinja_reference(locale)
    rendered = 0
    for kind in KINDS:
        for part in PARTS:
            if not (BUILTIN_DIR / kind / part).is_file():
                continue
            context = _context(kind, locale)
            want = reference.get_template(f"builtin:{kind}/{part}").render(context)
            assert renderer.render(kind, part, context, locale=locale) == want, (kind, part)
            rendered += 1
    assert rendered >= 10


def test_the_words_are_the_locales() -> None:
    renderer = TemplateRenderer()
    context = _context("order_confirmation", "de")
    german = renderer.render_email("order_confirmation", context, locale="de")
    english = renderer.render_email("order_confirmation", {**context, "locale": "en"})
    assert german.subject.startswith("Bestätigung Ihrer Bestellung A-1001")
    assert english.subject.startswith("Order confirmation A-1001")
    # Values escaped in HTML, not in text; the words' own markup kept.
    assert "Tom &amp; &lt;Jerry&gt;" in german.html  # type: ignore[operator]
    assert "<strong>A-1001</strong>" in german.html  # type: ignore[operator]
    assert "Tom & <Jerry>" in german.text


def test_built_in_templates_are_not_sandboxed_and_tenant_ones_are(tmp_path: Path) -> None:
    renderer = TemplateRenderer()
    context = _context("order_confirmation", "en")
    renderer.render_email("order_confirmation", context)
    write(tmp_path, "order_confirmation/subject.txt", "{{ tenant.name }}")
    renderer.render_email("order_confirmation", context, templates_dir=tmp_path)
    compiled = {
        name: type(template.environment)
        for (_, name), template in renderer._env.cache._data.items()  # type: ignore[attr-defined]
    }
    assert compiled["builtin:order_confirmation/body.html"] is TrustedEnvironment
    assert compiled["builtin:_layout.html"] is TrustedEnvironment
    tenant_subject = next(
        name for name in compiled if name.endswith("tenant:order_confirmation/subject.txt")
    )
    assert compiled[tenant_subject] is not TrustedEnvironment


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{{ ''.__class__.__mro__ }}", TemplateSecurityError),
        ("{{ tenant.name.format.__globals__ }}", TemplateSecurityError),
        ("{{ 'x' * 10000000 }}", TemplateLimitError),
    ],
    ids=["dunder", "globals", "size"],
)
def test_a_tenant_template_is_still_sandboxed(tmp_path: Path, source: str, error: type) -> None:
    renderer = TemplateRenderer()
    renderer.render_email("order_confirmation", _context("order_confirmation", "en"))  # warm
    write(tmp_path, "order_confirmation/subject.txt", source)
    with pytest.raises(error):
        renderer.render_email(
            "order_confirmation", _context("order_confirmation", "en"), templates_dir=tmp_path
        )


def test_a_tenant_template_extending_the_built_in_layout_stays_sandboxed(
    tmp_path: Path,
) -> None:
    renderer = TemplateRenderer()
    context = _context("order_confirmation", "en")
    renderer.render_email("order_confirmation", context)  # the trusted layout compiled first
    write(
        tmp_path,
        "order_confirmation/body.html",
        '{% extends "builtin:_layout.html" %}{% block content %}'
        "{{ ''.__class__.__mro__ }}{% endblock %}",
    )
    with pytest.raises(TemplateSecurityError):
        renderer.render_email("order_confirmation", context, templates_dir=tmp_path)
    layouts = [
        template
        for (_, name), template in renderer._env.cache._data.items()  # type: ignore[attr-defined]
        if name == "builtin:_layout.html"
    ]
    # The layout twice: once for built-in templates, once (sandboxed) for the tenant's.
    assert {type(t.environment) for t in layouts} == {TrustedEnvironment, type(renderer._env)}
    assert any(isinstance(t, SandboxTemplate) for t in layouts)


def test_built_in_templates_reach_only_built_in_templates(tmp_path: Path) -> None:
    renderer = TemplateRenderer()
    # A tenant's _layout.html changes nothing for the built-in kinds.
    write(tmp_path, "_layout.html", "HIJACKED {% block content %}{% endblock %}")
    context = _context("order_confirmation", "en")
    email = renderer.render_email("order_confirmation", context, templates_dir=tmp_path)
    assert "HIJACKED" not in (email.html or "")
    env = renderer._builtin.get("en")
    with pytest.raises(jinja2.TemplateNotFound):
        env.get_template("1|tenant:_layout.html")
    with pytest.raises(jinja2.TemplateNotFound):
        env.get_template("app:_layout.html")
    assert env.join_path("_layout.html", "builtin:x") == "builtin:_layout.html"


def test_built_in_output_is_still_capped() -> None:
    renderer = TemplateRenderer(max_output_chars=2_000)
    context = _context("order_confirmation", "en")
    context["items"] = [{"name": "x" * 50, "quantity": 1, "unit_price": 1}] * 100
    with pytest.raises(TemplateLimitError, match="over the limit"):
        renderer.render_email("order_confirmation", context)


def test_built_in_templates_are_not_held_to_the_time_limit_and_tenant_ones_are(
    tmp_path: Path,
) -> None:
    # A cold render compiles the templates first; on a loaded machine that can take
    # longer than the limit, and a built-in email must not fail for it.
    renderer = TemplateRenderer(render_timeout=1e-9)
    email = renderer.render_email("order_confirmation", _context("order_confirmation", "de"))
    assert email.subject.startswith("Bestätigung")
    write(tmp_path, "order_confirmation/subject.txt", "{% for i in range(3) %}{{ i }}{% endfor %}")
    with pytest.raises(TemplateLimitError, match="time limit"):
        renderer.render_email(
            "order_confirmation", _context("order_confirmation", "de"), templates_dir=tmp_path
        )


@pytest.mark.parametrize(
    ("obj", "attribute"),
    [
        ({"name": "Acme"}, "name"),
        ({"name": "Acme"}, "missing"),
        ({"items": "a key", "name": "x"}, "items"),  # the method, as Jinja has it
        ({"get": 1}, "get"),
        ({}, "__class__"),
        ({"x": None}, "x"),
        (type("Obj", (), {"name": "attr"})(), "name"),
        (["a"], "name"),
        ("text", "upper"),
    ],
)
def test_attribute_lookups_are_jinjas(obj: Any, attribute: str) -> None:
    env = TemplateRenderer()._builtin.get("en")
    want = jinja2.Environment(undefined=jinja2.StrictUndefined).getattr(obj, attribute)
    got = env.getattr(obj, attribute)
    if isinstance(want, jinja2.Undefined):
        assert isinstance(got, jinja2.StrictUndefined)
        assert got._undefined_obj is obj and got._undefined_name == attribute
        with pytest.raises(jinja2.UndefinedError, match=attribute):
            str(got)
    else:
        assert got == want


@pytest.mark.parametrize("locale", ["en", "de"])
def test_built_in_templates_without_branding_render_as_jinja_does(locale: str) -> None:
    renderer = TemplateRenderer()
    reference = _jinja_reference(locale)
    for kind in KINDS:
        for part in PARTS:
            if not (BUILTIN_DIR / kind / part).is_file():
                continue
            context = {**_context(kind, locale), "tenant": {"id": "t", "name": "T", "branding": {}}}
            want = reference.get_template(f"builtin:{kind}/{part}").render(context)
            assert renderer.render(kind, part, context, locale=locale) == want, (kind, part)


@pytest.mark.parametrize(
    "source",
    [
        '{{ _("Hi %(name)s, 100%% off!", name=who) }}',
        '{{ _("%(name)s", name=who) }}|{{ _("plain words") }}',
        "{% trans %}Dear {{ who }}, thanks{% endtrans %}",
        '{{ _("%(a)s and %(b)s", a=who, b=n) }}',
        # Left to %-formatting: other formats, a variable printed twice or not at
        # all (still evaluated), a name the call does not give (KeyError).
        '{{ _("%(n)d items", n=n) }}',
        '{{ _("%(name)s, %(name)s", name=who) }}',
        '{{ _("nothing printed", name=who) }}',
        '{{ _("%(name)-8s|", name=who) }}',
        '{{ _("50%", name=who) }}',
        '{{ _("a %(missing)s", name=who) }}',
        '{% set x = _("Hi %(name)s", name=who) %}{{ x }}',
    ],
)
@pytest.mark.parametrize("html", [True, False])
def test_translated_words_print_as_jinjas_i18n_prints_them(source: str, html: bool) -> None:
    # Printed translations are compiled to their words and variables (no Markup %):
    # the same text as Jinja's newstyle gettext, and the same errors.
    import gettext

    from tenant_notify.templates._loader import ChainLoader

    trusted = TrustedEnvironment(
        ChainLoader([], auto_reload=False, cache_size=8),
        catalog=gettext.NullTranslations(),
        autoescape=lambda name: html,
        auto_reload=False,
        cache=None,
    )
    reference = jinja2.Environment(
        autoescape=html, undefined=jinja2.StrictUndefined, extensions=["jinja2.ext.i18n"]
    )
    reference.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    context = {"who": "<b>Ann</b> & Co", "n": 3.5}
    try:
        want: str | type[Exception] = reference.from_string(source).render(context)
    except Exception as err:
        want = type(err)
    try:
        got: str | type[Exception] = trusted.from_string(source).render(context)
    except Exception as err:
        got = type(err)
    assert got == want


def test_clear_cache_forgets_the_built_in_templates_held() -> None:
    # Held only without auto_reload (production's setting), and forgotten with the rest.
    assert not _held_after_a_render(TemplateRenderer(auto_reload=True))
    renderer = TemplateRenderer(auto_reload=False)
    context = _context("order_confirmation", "en")
    renderer.render_email("order_confirmation", context)
    env = renderer._builtin.get("en")
    assert env._held
    renderer.clear_cache()
    assert not env._held
    renderer.render_email("order_confirmation", context)
    assert env._held


def _held_after_a_render(renderer: TemplateRenderer) -> bool:
    renderer.render_email("order_confirmation", _context("order_confirmation", "en"))
    return bool(renderer._builtin.get("en")._held)
