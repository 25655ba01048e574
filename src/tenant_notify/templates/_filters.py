"""The library's own template filters: ``money`` (and :func:`format_money`) and ``css_color``.

Money formatting
----------------
:func:`format_money` (and the ``money`` filter, which reads the ``locale``
template variable) rounds half up to the currency's minor units (JPY 0, BHD 3).
The sign is the currency's symbol when it has a non-alphabetic one (``$``, ``€``,
``£``, ``¥``, ...), otherwise the ISO code. German (``de``) puts it after the
number with a space and uses ``.`` for thousands and ``,`` for decimals:
``1.234,50 €``, ``99,99 $``, ``10,00 CHF``. Every other language uses the English
form: the symbol right before the number (``$1,234.50``), or the code and a space
(``CHF 10.00``).
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

import jinja2
from jinja2.runtime import Context

from .._currencies import MINOR_UNITS, SYMBOLS
from ..errors import InvalidAmountError, InvalidCurrencyError
from ._locale import locale_folders

_DE_SEPARATORS = str.maketrans(",.", ".,")


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
    """Format an amount of money for people to read.

    Rounds half up to the currency's minor units. German puts the sign after the
    number (``1.234,50 €``); every other language gets the English form
    (``$1,234.50``, ``CHF 10.00``). See the module docstring for the full rule.

    Args:
        amount: The amount, as a Decimal, an int, a numeric string or a float.
        currency: An ISO 4217 code (case-insensitive).
        locale: A locale such as ``"en"``, ``"de"`` or ``"de-AT"``; anything
            unrecognised formats as English.

    Returns:
        The formatted amount, e.g. ``"$99.99"`` or ``"99,99 $"``.

    Raises:
        InvalidCurrencyError: ``currency`` is not an ISO 4217 code.
        InvalidAmountError: ``amount`` is not a finite number, or too large to format.
    """
    code = currency.strip().upper() if isinstance(currency, str) else ""
    minor = MINOR_UNITS.get(code)
    if minor is None:
        raise InvalidCurrencyError(
            f"{currency!r} is not an ISO 4217 currency code", field="currency"
        )
    value = _to_decimal(amount)
    with localcontext() as ctx:
        ctx.prec = 60
        try:
            value = value.quantize(Decimal(1).scaleb(-minor), rounding=ROUND_HALF_UP)
        except InvalidOperation as err:
            raise InvalidAmountError("is too large to format", field="amount") from err
    sign = "-" if value < 0 else ""
    number = f"{abs(value):,.{minor}f}"
    symbol = SYMBOLS.get(code, "")
    # "CHF", "kr", "zł": letters read better as the ISO code.
    mark = symbol if symbol and not symbol.isalpha() else ""
    dirs = locale_folders(locale) if isinstance(locale, str) else ()
    if dirs and dirs[-1] == "de":
        return f"{sign}{number.translate(_DE_SEPARATORS)} {mark or code}"
    if mark:
        return f"{sign}{mark}{number}"
    return f"{sign}{code} {number}"


@jinja2.pass_context
def money_filter(context: Context, amount: Any, currency: Any) -> str:
    locale = context.get("locale")
    return format_money(amount, currency, locale if isinstance(locale, str) else None)


_CSS_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})|[a-zA-Z]{3,20}")


def css_color_filter(value: Any, default: str = "#1f2937") -> str:
    if isinstance(value, str) and _CSS_COLOR.fullmatch(value.strip()):
        return value.strip()
    return default
