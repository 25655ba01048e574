"""Locale lookup: which template folders a locale reads, most specific first."""

from __future__ import annotations

import functools

from .._validation import LOCALE_PATTERN, subtag_case


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
