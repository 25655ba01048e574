from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from babel import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, get_currency_precision

from tenant_notify._currencies import _active
from tenant_notify.errors import InvalidAmountError, InvalidCurrencyError
from tenant_notify.templates import TemplateRenderer, format_money

from .test_renderer import write


@pytest.fixture
def renderer() -> TemplateRenderer:
    return TemplateRenderer()


def babel_money(amount: str, currency: str, locale: str) -> str:
    """What Babel itself makes of an amount already rounded to the currency's digits."""
    return format_currency(Decimal(amount), currency, locale=Locale.parse(locale.replace("-", "_")))


@pytest.mark.parametrize("locale", ["fr", "es", "nl", "pl", "sv", "de-CH", "en-IN", "de", "en"])
@pytest.mark.parametrize("currency", ["EUR", "USD", "CHF", "PLN", "SEK", "INR", "JPY", "BHD"])
def test_money_reads_as_babel_formats_it(locale: str, currency: str) -> None:
    digits = get_currency_precision(currency)
    amount = Decimal("1234567.5").quantize(Decimal(1).scaleb(-digits))
    assert format_money(amount, currency, locale) == babel_money(str(amount), currency, locale)


#: Amounts from nothing to past the digits _MoneyFormat formats itself (16, then Babel).
AMOUNTS = (
    "0",
    "0.004",
    "-12.5",
    "7",
    "999.995",
    "1000",
    "-1234567.891",
    "100000000000.1",
    "9999999999999999.99",
    "12345678901234567.5",
)


def test_money_reads_as_babel_formats_it_in_every_locale_babel_knows() -> None:
    # format_money fills each (currency, locale) pattern in once instead of asking
    # format_currency every time, and groups the digits of a plain pattern itself
    # (_formatted, _MoneyFormat): the same text, everywhere.
    from babel.localedata import locale_identifiers

    from tenant_notify.templates._filters import _formatted

    differ = []
    for name in locale_identifiers():
        locale = Locale.parse(name)
        for currency in ("USD", "EUR", "JPY", "BHD", "INR", "AED"):
            digits = get_currency_precision(currency)
            for raw in AMOUNTS:
                amount = Decimal(raw).quantize(Decimal(1).scaleb(-digits))
                want = format_currency(amount, currency, locale=locale)
                if _formatted(amount, currency, locale) != want:
                    differ.append((name, currency, raw))
    assert differ == []


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "rounded"),
    [
        (Decimal("1234.5"), "JPY", "en", "1235"),  # no minor units
        (Decimal("1234.4"), "JPY", "de", "1234"),
        (Decimal("1.2345"), "BHD", "en", "1.235"),  # three
        (Decimal("0.005"), "USD", "en", "0.01"),  # half up, not Babel's half even
        (Decimal("0.125"), "USD", "fr", "0.13"),
        (Decimal("2.675"), "GBP", "en", "2.68"),
        (Decimal("-5"), "EUR", "de", "-5.00"),
        (Decimal("-0.001"), "USD", "en", "0.00"),  # no "-$0.00"
        ("10", "chf", "en", "10.00"),
        (1234567, "USD", "fr", "1234567.00"),
        (0.1, "USD", "en", "0.10"),
    ],
)
def test_format_money_rounds_half_up_to_the_minor_units(
    amount: Any, currency: str, locale: str, rounded: str
) -> None:
    assert format_money(amount, currency, locale) == babel_money(rounded, currency.upper(), locale)


@pytest.mark.parametrize(
    ("locale", "formats_as"),
    [("de-AT", "de_AT"), ("de-XY", "de"), ("xx", "en"), (None, "en"), ("sr-Latn", "sr_Latn")],
)
def test_a_locale_babel_does_not_know_formats_as_its_language_then_english(
    locale: str | None, formats_as: str
) -> None:
    assert format_money("1234.5", "EUR", locale) == babel_money("1234.50", "EUR", formats_as)


@pytest.mark.parametrize("amount", ["abc", "NaN", Decimal("Infinity"), True, None, "1e100"])
def test_format_money_refuses_bad_amounts(amount: Any) -> None:
    with pytest.raises(InvalidAmountError):
        format_money(amount, "USD")


@pytest.mark.parametrize("currency", ["XXX", "XAU", "XTS", "DEM", "EURO", ""])
def test_format_money_refuses_codes_of_no_currency_in_use(currency: str) -> None:
    # XXX, XAU and XTS are ISO codes but no money; DEM is history.
    with pytest.raises(InvalidCurrencyError, match="is not the ISO 4217 code of a currency"):
        format_money(1, currency)


def test_money_filter_follows_the_locale(renderer: TemplateRenderer, tmp_path: Path) -> None:
    write(
        tmp_path,
        "prices/sms.txt",
        "{{ a|money('JPY') }} | {{ a|money('BHD') }} | {{ a|money('EUR') }}",
    )
    context = {"a": Decimal("1234.5675")}

    def sms(locale: str, extra: dict[str, Any] | None = None) -> str:
        variables = {**context, **(extra or {})}
        return renderer.render(
            "prices", "sms.txt", variables, templates_dir=tmp_path, locale=locale
        )

    def expected(locale: str) -> str:
        return " | ".join(
            babel_money(rounded, code, locale)
            for rounded, code in (("1235", "JPY"), ("1234.568", "BHD"), ("1234.57", "EUR"))
        )

    assert sms("en") == expected("en")
    assert sms("fr") == expected("fr")
    # The context's own `locale` (what the dispatcher passes) is what counts.
    assert sms("en", {"locale": "nl"}) == expected("nl")


def test_the_currencies_in_use_follow_babels_calendar() -> None:
    # Bulgaria's lev gave way to the euro on 2026-01-01; funds codes stay in.
    before, after = _active(dt.date(2025, 6, 1)), _active(dt.date(2026, 6, 1))
    assert "BGN" in before and "BGN" not in after
    assert {"EUR", "USD", "XOF", "CHE", "CLF", "JPY", "BHD"} <= after
    assert {"XAU", "XTS", "XXX", "DEM"}.isdisjoint(after)


@pytest.mark.parametrize("locale", ["fr", "de-CH", "en-IN", "nl"])
def test_number_and_date_filters_read_as_babel_formats_them(
    renderer: TemplateRenderer, tmp_path: Path, locale: str
) -> None:
    write(
        tmp_path,
        "when/sms.txt",
        "{{ n|number }} | {{ day|date }} | {{ day|date('long') }} | {{ at|datetime('short') }}"
        " | {{ '2026-03-01'|date('full') }}",
    )
    at = dt.datetime(2026, 3, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    variables = {"n": Decimal("1234567.891"), "day": dt.date(2026, 3, 1), "at": at}
    text = renderer.render("when", "sms.txt", variables, templates_dir=tmp_path, locale=locale)
    babel = Locale.parse(locale.replace("-", "_"))
    assert text == " | ".join(
        [
            format_decimal(Decimal("1234567.891"), locale=babel),
            format_date(dt.date(2026, 3, 1), locale=babel),
            format_date(dt.date(2026, 3, 1), format="long", locale=babel),
            format_datetime(at, format="short", tzinfo=at.tzinfo, locale=babel),
            format_date(dt.date(2026, 3, 1), format="full", locale=babel),
        ]
    )


def test_an_sms_gets_plain_spaces_where_babel_writes_no_break_ones(
    renderer: TemplateRenderer, tmp_path: Path
) -> None:
    # One no-break space would make the whole SMS UCS-2 (70 characters a segment).
    write(tmp_path, "total/sms.txt", "Total {{ t|money('EUR') }}, {{ n|number }}")
    variables = {"t": Decimal("1234567.5"), "n": 1234567}
    sms = renderer.render_sms("total", variables, templates_dir=tmp_path, locale="fr")
    assert sms == "Total 1 234 567,50 €, 1 234 567"
