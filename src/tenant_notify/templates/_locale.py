"""Locale lookup: which template folders a locale reads, most specific first."""

from __future__ import annotations

import functools

import babel

from .._validation import LOCALE_PATTERN, subtag_case

#: What formats a locale Babel does not know (``xx``), nor its language.
FALLBACK_LOCALE = "en"


@functools.lru_cache(maxsize=256)
def locale_folders(locale: str) -> tuple[str, ...]:
    """Template folders for a locale, most specific first: ``("de_AT", "de")``.

    Same forms as :func:`~tenant_notify._validation.normalize_locale` (``de``,
    ``de-AT``, ``de_AT``, ``sr-Latn``); anything else gives no folder at all.
    """
    match = LOCALE_PATTERN.match(locale.strip())
    if match is None:
        return ()
    lang, region = match.group(1).lower(), match.group(2)
    return (f"{lang}_{subtag_case(region)}", lang) if region else (lang,)


@functools.lru_cache(maxsize=256)
def babel_locale(locale: str | None) -> babel.Locale:
    """The Babel locale that formats for ``locale`` (``de-CH``, ``en_IN``, ``sr-Latn``).

    The most specific one Babel knows: ``de-XY`` formats as ``de``, and a locale
    Babel knows nothing of (or None) as English.
    """
    for candidate in locale_folders(locale) if isinstance(locale, str) else ():
        try:
            found = babel.Locale.parse(candidate)
        except (babel.UnknownLocaleError, ValueError):
            continue
        return _loaded(found)
    return _loaded(babel.Locale.parse(FALLBACK_LOCALE))


def _loaded(locale: babel.Locale) -> babel.Locale:
    # Babel reads a locale's CLDR data on first use; read it now, so that a
    # render calling this first (outside its time limit) never pays for it inside.
    _ = locale.number_symbols
    return locale
