from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tenant_notify.errors import InvalidAmountError, InvalidCurrencyError
from tenant_notify.templates import TemplateRenderer, format_money

from .test_renderer import write


@pytest.fixture
def renderer() -> TemplateRenderer:
    return TemplateRenderer()


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        (Decimal("99.99"), "USD", "en", "$99.99"),
        (Decimal("99.99"), "USD", "de", "99,99 $"),
        (Decimal("1234.5"), "EUR", "en", "€1,234.50"),
        (Decimal("1234.5"), "EUR", "de", "1.234,50 €"),
        (Decimal("1234.5"), "EUR", "de-AT", "1.234,50 €"),
        (Decimal("1234.5"), "JPY", "en", "¥1,235"),
        (Decimal("1234.4"), "JPY", "de", "1.234 ¥"),
        (Decimal("1.2345"), "BHD", "en", "BHD 1.235"),
        (Decimal("1234.0005"), "BHD", "de", "1.234,001 BHD"),
        ("10", "chf", "en", "CHF 10.00"),
        (10, "CHF", "de", "10,00 CHF"),
        (Decimal("0.005"), "USD", "en", "$0.01"),
        (Decimal("2.675"), "GBP", "en", "£2.68"),
        (Decimal("-5"), "USD", "en", "-$5.00"),
        (Decimal("-5"), "EUR", "de", "-5,00 €"),
        (Decimal("-0.001"), "USD", "en", "$0.00"),
        (1234567, "USD", "fr", "$1,234,567.00"),
        (0.1, "USD", None, "$0.10"),
    ],
)
def test_format_money(amount: Any, currency: str, locale: str | None, expected: str) -> None:
    assert format_money(amount, currency, locale) == expected


@pytest.mark.parametrize("amount", ["abc", "NaN", Decimal("Infinity"), True, None, "1e100"])
def test_format_money_refuses_bad_amounts(amount: Any) -> None:
    with pytest.raises(InvalidAmountError):
        format_money(amount, "USD")


def test_format_money_refuses_unknown_currency() -> None:
    with pytest.raises(InvalidCurrencyError):
        format_money(1, "XXX")


def test_money_filter_follows_the_locale(renderer: TemplateRenderer, tmp_path: Path) -> None:
    write(
        tmp_path,
        "prices/sms.txt",
        "{{ a|money('JPY') }} | {{ a|money('BHD') }} | {{ a|money('EUR') }}",
    )
    context = {"a": Decimal("1234.5675")}

    def sms(locale: str, extra: dict[str, Any] | None = None) -> str:
        variables = {**context, **(extra or {})}
        return renderer.render_sms("prices", variables, templates_dir=tmp_path, locale=locale)

    assert sms("en") == "¥1,235 | BHD 1,234.568 | €1,234.57"
    assert sms("de") == "1.235 ¥ | 1.234,568 BHD | 1.234,57 €"
    # The context's own `locale` (what the dispatcher passes) is what counts.
    assert sms("en", {"locale": "de"}) == "1.235 ¥ | 1.234,568 BHD | 1.234,57 €"
