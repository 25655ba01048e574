"""Currencies in use today and their minor units, from Babel's CLDR data.

Kept out of the code on purpose: CLDR follows ISO 4217 as currencies come and go
(BGN gave way to EUR in 2026), and Babel ships it.
"""

from __future__ import annotations

import datetime as dt
import functools
import time

from babel.core import get_global
from babel.numbers import get_currency_precision, get_territory_currencies

__all__ = ["is_active_currency", "minor_units"]

# CLDR's "unknown region": gold, silver, testing and accounting units (XAU, XTS, XXX,
# XDR, ...). ISO lists them, but no order is paid in them.
_NO_TERRITORY = "ZZ"
# ISO's "no currency", which CLDR gives territories without one (Antarctica).
_NO_CURRENCY = "XXX"


@functools.cache
def _active(today: dt.date) -> frozenset[str]:
    codes: set[str] = set()
    for territory in get_global("territory_currencies"):
        if territory != _NO_TERRITORY:
            # Legal tender and funds codes (BOV, CHE, USN, ...), as ISO 4217 lists them.
            codes.update(
                get_territory_currencies(
                    territory, start_date=today, end_date=today, tender=True, non_tender=True
                )
            )
    return frozenset(codes - {_NO_CURRENCY})


_today: tuple[float, dt.date] = (0.0, dt.date.min)


def _current_day() -> dt.date:
    # date.today() costs more than the set lookup it feeds: ask once a minute.
    global _today
    checked, day = _today
    now = time.monotonic()
    if now - checked > 60:
        _today = (now, day := dt.date.today())
    return day


def is_active_currency(code: str) -> bool:
    """True for an upper-case ISO 4217 code some territory uses today (``EUR``, ``XOF``)."""
    return code in _active(_current_day())


def minor_units(code: str) -> int:
    """Decimal places an amount in ``code`` is shown with (CLDR's: JPY 0, BHD 3)."""
    return int(get_currency_precision(code))
