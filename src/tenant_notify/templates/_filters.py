"""The library's own template filters: ``money``, ``number``, ``date``, ``datetime``, ``css_color``.

Locale-aware formatting
-----------------------
Every formatting filter reads the ``locale`` template variable (the notification's
locale) and formats as Babel does for it, in every locale Babel's CLDR data knows
(a locale it does not know formats as its language, then as English):

* ``{{ total|money(currency) }}``: :func:`format_money`, Babel's
  ``format_currency``: ``1 234 567,50 €`` in ``fr``, ``€ 1.234.567,50`` in ``nl``,
  ``€12,34,567.50`` in ``en-IN``. Rounded half up to the currency's minor units
  (CLDR's: JPY 0, BHD 3).
* ``{{ count|number }}``: Babel's ``format_decimal`` (``1.234,5`` in ``de``).
* ``{{ when|date }}`` and ``{{ when|datetime }}``: Babel's ``format_date`` and
  ``format_datetime``; the optional argument is ``"short"``, ``"medium"`` (the
  default), ``"long"``, ``"full"`` or a CLDR pattern. An aware datetime is shown
  in its own time zone.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import re
from decimal import (
    ROUND_HALF_UP,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from decimal import Context as DecimalContext
from typing import Any, cast

import babel
import jinja2
from babel.dates import format_date, format_datetime
from babel.numbers import (
    NumberPattern,
    format_currency,
    format_decimal,
    get_currency_symbol,
    get_decimal_symbol,
    get_group_symbol,
)
from jinja2.runtime import Context

from .._currencies import is_active_currency, minor_units
from ..errors import InvalidAmountError, InvalidCurrencyError
from ._locale import babel_locale


def _to_decimal(amount: object) -> Decimal:
    if isinstance(amount, bool):
        raise InvalidAmountError("is not a number", field="amount")
    try:
        if isinstance(amount, Decimal):
            value = amount
        elif isinstance(amount, int):
            value = Decimal(amount)
        elif isinstance(amount, float):
            value = Decimal(repr(amount))
        elif isinstance(amount, str):
            value = Decimal(amount.strip())
        else:
            raise InvalidAmountError(
                f"{type(amount).__name__} is not an amount; use Decimal, int or str",
                field="amount",
            )
    except InvalidOperation as err:
        raise InvalidAmountError(f"{amount!r} is not a number", field="amount") from err
    if not value.is_finite():
        raise InvalidAmountError("is not a finite number", field="amount")
    return value


def format_money(
    amount: Decimal | int | str | float, currency: str, locale: str | None = "en"
) -> str:
    """Format an amount of money for people to read, as Babel's ``format_currency`` does.

    Rounds half up to the currency's minor units (Babel's CLDR data: JPY 0, BHD 3).

    Args:
        amount: The amount, as a Decimal, an int, a numeric string or a float.
        currency: An ISO 4217 code (case-insensitive) of a currency in use.
        locale: A locale such as ``"en"``, ``"fr"`` or ``"de-CH"``; one Babel does
            not know formats as its language, then as English.

    Returns:
        The formatted amount, e.g. ``"$99.99"`` (``en``) or ``"99,99 $US"`` (``fr``).

    Raises:
        InvalidCurrencyError: ``currency`` is not the code of a currency in use.
        InvalidAmountError: ``amount`` is not a finite number, or too large to format.
    """
    code = currency.strip().upper() if isinstance(currency, str) else ""
    if not is_active_currency(code):
        raise InvalidCurrencyError(
            f"{currency!r} is not the ISO 4217 code of a currency in use", field="currency"
        )
    value = _to_decimal(amount)
    # Rounded here, half up as money is, to the digits Babel will show (it would
    # round half to even); a negative amount that rounds to zero shows as zero.
    try:
        value = value.quantize(_quantum(code), ROUND_HALF_UP, context=_MONEY_CONTEXT)
    except InvalidOperation as err:
        raise InvalidAmountError("is too large to format", field="amount") from err
    if value.is_zero():
        value = value.copy_abs()
    return _formatted(value, code, babel_locale(locale))


#: Sixty digits: any amount a shop shows, and a refusal (not a rounding) beyond.
_MONEY_CONTEXT = DecimalContext(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow])


@functools.lru_cache(maxsize=512)
def _quantum(code: str) -> Decimal:
    """``Decimal("0.01")`` for a currency with two minor units, ``Decimal("1")`` for none."""
    return Decimal(1).scaleb(-minor_units(code))


@functools.lru_cache(maxsize=1024)
def _formatted(value: Decimal, code: str, locale: babel.Locale) -> str:
    # An email formats its total in the text and again in the HTML: the second is
    # a lookup. The value is already rounded, so equal keys print alike.
    money = _money_format(code, locale)
    if money is not None and abs(value.adjusted()) <= _PLAIN_DIGITS:
        return money.apply(value)
    pattern = _currency_pattern(code, locale)
    if pattern is None:
        return str(format_currency(value, code, locale=locale))
    return str(pattern.apply(value, locale))


#: Amounts of up to this many digits before the point are formatted by _MoneyFormat;
#: longer ones by Babel (whose decimal context, 28 digits, may round them).
_PLAIN_DIGITS = 15


class _MoneyFormat:
    """What ``NumberPattern.apply`` does with a plain currency pattern (no scientific
    notation, no significant digits, no quotes in its affixes), worked out once.

    Babel's ``apply`` looks the group and decimal symbols up in the locale's data
    for every number and goes through its general path (normalise, quantize,
    partition, regular expression for quotes): about 20 µs for an amount. An amount
    already rounded to the currency's digits (``format_money`` rounds half up
    first) needs only its digits grouped. tests/templates/test_filters.py compares
    the result with ``format_currency`` in every locale Babel knows.
    """

    __slots__ = ("decimal", "digits", "group", "grouping", "int_min", "prefix", "suffix")

    def __init__(self, pattern: NumberPattern, locale: babel.Locale) -> None:
        self.prefix: tuple[str, str] = pattern.prefix
        self.suffix: tuple[str, str] = pattern.suffix
        self.digits: int = pattern.frac_prec[1]
        self.int_min: int = pattern.int_prec[0]
        self.grouping: tuple[int, int] = pattern.grouping
        self.group: str = get_group_symbol(locale, numbering_system="latn")
        self.decimal: str = get_decimal_symbol(locale, numbering_system="latn")

    @classmethod
    def of(cls, pattern: NumberPattern, locale: babel.Locale) -> _MoneyFormat | None:
        affixes = (*pattern.prefix, *pattern.suffix)
        plain = (
            pattern.scale == 0
            and not pattern.exp_prec
            and "@" not in pattern.pattern
            and pattern.number_pattern != ""
            and pattern.frac_prec[0] == pattern.frac_prec[1]
            and not any("'" in affix or "¤" in affix for affix in affixes)
            and all(size > 0 for size in pattern.grouping)
        )
        if not plain:
            return None
        money = cls(pattern, locale)
        # Babel removes quotes from the whole text, the number's symbols included.
        return None if "'" in money.group + money.decimal else money

    def apply(self, value: Decimal) -> str:
        """``value`` (finite, rounded to ``digits``) as ``NumberPattern.apply`` has it."""
        negative = int(value.is_signed())
        whole, _, fraction = f"{abs(value).quantize(_QUANTA[self.digits]):f}".partition(".")
        if len(whole) < self.int_min:
            whole = "0" * (self.int_min - len(whole)) + whole
        size, groups = self.grouping[0], []
        while len(whole) > size:
            groups.append(whole[-size:])
            whole = whole[:-size]
            size = self.grouping[1]
        number = self.group.join([whole, *reversed(groups)])
        if self.digits:
            number += self.decimal + fraction
        return self.prefix[negative] + number + self.suffix[negative]


#: Decimal("1"), Decimal("0.1"), ...: the quanta of 0 to 8 fractional digits.
_QUANTA = [Decimal(1).scaleb(-digits) for digits in range(9)]


@functools.lru_cache(maxsize=1024)
def _money_format(code: str, locale: babel.Locale) -> _MoneyFormat | None:
    pattern = _currency_pattern(code, locale)
    if pattern is None or pattern.frac_prec[1] >= len(_QUANTA):
        return None
    return _MoneyFormat.of(pattern, locale)


@functools.lru_cache(maxsize=1024)
def _currency_pattern(code: str, locale: babel.Locale) -> NumberPattern | None:
    """The locale's currency pattern with ``code``'s symbol and digits filled in, or None.

    ``format_currency`` looks the pattern, the symbol, the currency's digits and
    its plural name (which the standard patterns never show) up for every amount,
    about half its time. Filled in once per (currency, locale), ``apply`` does the
    rest as ``format_currency`` would: the same number formatting, then the same
    removal of quotes. Patterns it could not fill in alike (a plural name ``¤¤¤``,
    a quote in the symbol) are left to ``format_currency``; a test compares both.
    """
    pattern = locale.currency_formats["standard"]
    symbol = str(get_currency_symbol(code, locale=locale))
    affixes = (*pattern.prefix, *pattern.suffix)
    if any("¤¤¤" in affix for affix in affixes) or "'" in symbol or "¤" in symbol:
        return None
    filled = copy.copy(pattern)
    filled.prefix = tuple(_fill(affix, code, symbol) for affix in pattern.prefix)
    filled.suffix = tuple(_fill(affix, code, symbol) for affix in pattern.suffix)
    digits = minor_units(code)
    filled.frac_prec = (digits, digits)
    return cast(NumberPattern, filled)


def _fill(affix: str, code: str, symbol: str) -> str:
    return affix.replace("¤¤", code).replace("¤", symbol)


def _context_locale(context: Context) -> str | None:
    locale = context.get("locale")
    return locale if isinstance(locale, str) else None


@jinja2.pass_context
def money_filter(context: Context, amount: Any, currency: Any) -> str:
    return format_money(amount, currency, _context_locale(context))


@jinja2.pass_context
def number_filter(context: Context, value: Any) -> str:
    number = value if isinstance(value, int | float | Decimal) else _to_decimal(value)
    return str(format_decimal(number, locale=babel_locale(_context_locale(context))))


def _when(value: Any, wanted: type) -> Any:
    if isinstance(value, str):
        try:
            value = (dt.datetime if wanted is dt.datetime else dt.date).fromisoformat(value)
        except ValueError:
            raise jinja2.TemplateRuntimeError(f"{value!r} is not an ISO 8601 date") from None
    if not isinstance(value, dt.date):
        raise jinja2.TemplateRuntimeError(f"{type(value).__name__} is not a date or datetime")
    return value


@jinja2.pass_context
def date_filter(context: Context, value: Any, format: str = "medium") -> str:
    when = _when(value, dt.date)
    day = when.date() if isinstance(when, dt.datetime) else when
    return str(format_date(day, format=format, locale=babel_locale(_context_locale(context))))


@jinja2.pass_context
def datetime_filter(context: Context, value: Any, format: str = "medium") -> str:
    when = _when(value, dt.datetime)
    if not isinstance(when, dt.datetime):
        when = dt.datetime.combine(when, dt.time())
    return str(
        format_datetime(
            when,
            format=format,
            tzinfo=when.tzinfo,
            locale=babel_locale(_context_locale(context)),
        )
    )


_CSS_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})|[a-zA-Z]{3,20}")


def css_color_filter(value: Any, default: str = "#1f2937") -> str:
    if isinstance(value, str) and _CSS_COLOR.fullmatch(value.strip()):
        return value.strip()
    return default


#: The filters every environment of the library has, the trusted built-in one and
#: the tenants' sandbox alike (``env.filters.update(FILTERS)``).
FILTERS: dict[str, Any] = {
    "money": money_filter,
    "number": number_filter,
    "date": date_filter,
    "datetime": datetime_filter,
    "css_color": css_color_filter,
}
