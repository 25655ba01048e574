"""Gettext for templates: Jinja's i18n extension, with the catalog of the render's locale.

The built-in templates are written once, in English, with ``{% trans %}`` blocks
and ``_()``; their translations are gettext catalogs shipped in the package
(``templates/locale/<lang>/LC_MESSAGES/tenant_notify.po``, compiled to ``.mo``
in the repository: ``nox -s catalogs`` extracts, updates and compiles them). The
catalog is chosen per render from the ``locale`` template variable, most specific
first (``de_AT``, then ``de``); a locale with no catalog renders the English.
Plural forms follow each catalog's ``Plural-Forms`` header.

The callables are installed "newstyle": ``{% trans %}`` and ``_("...", name=x)``
format their variables themselves, escaping them in HTML parts, so a translation
cannot change what a variable does, and the sandbox's ``%`` operator is never
involved. A tenant's own templates may use the same tags, and the built-in
catalogs' strings.
"""

from __future__ import annotations

import functools
import gettext as _gettext
from pathlib import Path
from typing import Any

import jinja2
from jinja2.runtime import Context

from ._locale import locale_folders

__all__ = ["DOMAIN", "LOCALE_DIR", "catalog_locales", "install_gettext", "translations"]

#: The gettext domain of the built-in templates' catalogs.
DOMAIN = "tenant_notify"
#: Where the catalogs are, inside the package.
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
#: The language the built-in templates are written in (their msgids).
SOURCE_LOCALE = "en"


@functools.lru_cache(maxsize=256)
def translations(locale: str | None) -> _gettext.NullTranslations:
    """The catalog for ``locale``: its own (``de_AT``), else its language's, else none."""
    languages = list(locale_folders(locale)) if isinstance(locale, str) else []
    return _gettext.translation(DOMAIN, LOCALE_DIR, languages=languages, fallback=True)


def catalog_locales() -> tuple[str, ...]:
    """The locales the built-in templates render in: English and every shipped catalog."""
    shipped = sorted(
        path.parent.parent.name for path in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.mo")
    )
    return (SOURCE_LOCALE, *(name.replace("_", "-") for name in shipped))


def _catalog(context: Context) -> _gettext.NullTranslations:
    locale = context.get("locale")
    return translations(locale if isinstance(locale, str) else None)


@jinja2.pass_context
def _gettext_call(context: Context, message: str) -> str:
    return _catalog(context).gettext(message)


@jinja2.pass_context
def _ngettext_call(context: Context, singular: str, plural: str, number: int) -> str:
    return _catalog(context).ngettext(singular, plural, number)


@jinja2.pass_context
def _pgettext_call(context: Context, msgctxt: str, message: str) -> str:
    return _catalog(context).pgettext(msgctxt, message)


@jinja2.pass_context
def _npgettext_call(context: Context, msgctxt: str, singular: str, plural: str, number: int) -> str:
    return _catalog(context).npgettext(msgctxt, singular, plural, number)


def install_gettext(env: Any) -> None:
    """Give ``env`` (a sandboxed environment) the i18n extension and the catalogs."""
    env.add_extension("jinja2.ext.i18n")
    # {% trans %} blocks spread over lines read as one line: the msgid is stable
    # whatever the template's indentation.
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_callables(
        _gettext_call,
        _ngettext_call,
        newstyle=True,
        pgettext=_pgettext_call,
        npgettext=_npgettext_call,
    )
