"""Input checks run in the caller's thread, before anything is queued.

The recipient checks are cached: the same addresses come back again and again,
and email-validator and phonenumbers are the most expensive part of a send.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import email_validator
import phonenumbers

from ._currencies import is_active_currency
from ._headers import check_header_value
from .errors import (
    InvalidAmountError,
    InvalidContextError,
    InvalidCurrencyError,
    InvalidRecipientError,
    ValidationError,
)

#: A locale as the library accepts it: a language, optionally ``-`` or ``_`` and one subtag.
LOCALE_PATTERN = re.compile(r"^([a-zA-Z]{2,3})(?:[-_]([a-zA-Z0-9]{2,8}))?$")
_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
MAX_SMS_CHARS = 1600  # what Twilio accepts in one message (it splits into segments)


# The address every send of an order confirmation or a welcome carries is plain:
# an ASCII dot-atom local part and an ASCII host name with a dot and a top level
# ending in a letter. For that form email-validator's answer is known without
# running its full pipeline (quote-aware splitting, UTS-46 remapping, IDNA, the
# special-use and globally-deliverable rules), which costs about as much as the
# rest of a send in the caller's thread: the address is valid, and its normal
# form is the domain in lower case (and, like email-validator, a case-insensitive
# mailbox name such as Info@ in lower case). Anything else, or anything near a
# rule (a length limit, "--" in a label, a reserved name), goes through
# email-validator in full. tests/test_validation.py checks that both agree.
_PLAIN_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
)
_MAX_EMAIL_LENGTH = 254  # RFC 5321 4.5.3.1.3, as email-validator counts it
_MAX_DOMAIN_LENGTH = 253
# test_environment=True below: *.test is allowed. They are top-level names today,
# so the last label tells; a dotted entry in a later email-validator is matched whole.
_RESERVED_DOMAINS = frozenset(d for d in email_validator.SPECIAL_USE_DOMAIN_NAMES if d != "test")
_RESERVED_DOTTED = tuple(d for d in _RESERVED_DOMAINS if "." in d)
try:
    from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

    _CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)
except ImportError:  # pragma: no cover - an email-validator that does not lower-case them
    _CASE_INSENSITIVE = frozenset()


def _plain_email(address: str) -> str | None:
    """The normal form of a plain address, or None to ask email-validator."""
    match = _PLAIN_EMAIL.fullmatch(address)
    if match is None or len(address) > _MAX_EMAIL_LENGTH:
        return None
    local, domain = match.group("local", "domain")
    domain = domain.lower()
    if (
        len(domain) > _MAX_DOMAIN_LENGTH
        or "--" in domain  # R-LDH labels and Punycode: email-validator's rules
        or not domain[-1].isalpha()
        or domain.rpartition(".")[2] in _RESERVED_DOMAINS
        or any(domain == d or domain.endswith("." + d) for d in _RESERVED_DOTTED)
    ):
        return None
    if local.lower() in _CASE_INSENSITIVE:
        local = local.lower()
    return f"{local}@{domain}"


@functools.lru_cache(maxsize=8192)
def _normalize_email(address: str) -> str:
    plain = _plain_email(address)
    if plain is not None:
        return plain
    info = email_validator.validate_email(
        address,
        check_deliverability=False,
        # Reserved names such as *.test are fine for a sending library: tests and
        # staging use them, and deliverability is the receiving side's business.
        test_environment=True,
        # The message goes out 7-bit clean; an internationalised local part would
        # need SMTPUTF8, which the library does not use.
        allow_smtputf8=False,
    )
    return str(info.ascii_email or info.normalized)


def normalize_email(address: object, field: str) -> str:
    """Return the normalised address or raise :class:`InvalidRecipientError`."""
    if not isinstance(address, str):
        raise InvalidRecipientError("must be an email address string", field=field)
    try:
        return _normalize_email(address.strip())
    except email_validator.EmailNotValidError as err:
        raise InvalidRecipientError(
            f"{address!r} is not a valid email address: {err}", field=field
        ) from None  # its text is in the message; its chain would add the address


@functools.lru_cache(maxsize=8192)
def _normalize_phone(number: str) -> str | None:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def normalize_phone(number: object, field: str) -> str:
    """Return the number in E.164 form or raise :class:`InvalidRecipientError`.

    The number must be international (leading ``+``) and of a possible length for
    its country; whether it is assigned is the provider's business.
    """
    if not isinstance(number, str) or not number.strip().startswith("+"):
        raise InvalidRecipientError(
            f"{number!r} is not an E.164 phone number (expected +<country><number>)",
            field=field,
        )
    normalized = _normalize_phone(number.strip())
    if normalized is None:
        raise InvalidRecipientError(f"{number!r} is not a valid E.164 phone number", field=field)
    return normalized


def normalize_sender_number(value: str) -> str:
    """An SMS sender: an E.164 number or an alphanumeric sender id (up to 11 chars)."""
    if _ALPHANUMERIC_SENDER.match(value):
        return value
    return normalize_phone(value, "sms_from")


def normalize_locale(value: object, field: str) -> str:
    """``"de_AT"`` -> ``"de-AT"``; raises ValidationError for anything else."""
    match = LOCALE_PATTERN.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValidationError(f"{value!r} is not a locale such as 'en' or 'de-AT'", field=field)
    lang, region = match.groups()
    return f"{lang.lower()}-{subtag_case(region)}" if region else lang.lower()


def subtag_case(region: str) -> str:
    """A subtag in BCP 47 case: regions upper (``AT``, ``419``), scripts title (``Latn``)."""
    return region.upper() if len(region) == 2 or region.isdigit() else region.title()


def check_currency(value: object, field: str = "currency") -> str:
    """Return the upper-case ISO 4217 code of a currency in use, or raise
    :class:`InvalidCurrencyError` (Babel's CLDR data decides which are in use)."""
    code = value.strip().upper() if isinstance(value, str) else ""
    if not is_active_currency(code):
        raise InvalidCurrencyError(
            f"{value!r} is not the ISO 4217 code of a currency in use", field=field
        )
    return code


#: The largest amount of money a send takes: far over any order (10**15 VND is
#: 40 billion dollars), and well within what the templates can format.
MAX_AMOUNT = Decimal(10) ** 15


def check_amount(value: object, field: str) -> Decimal:
    """Return a finite Decimal from 0 to :data:`MAX_AMOUNT`, or raise
    :class:`InvalidAmountError`."""
    if isinstance(value, bool):
        raise InvalidAmountError(f"{value!r} is not a number", field=field)
    try:
        if isinstance(value, float):
            amount = Decimal(repr(value))
        elif isinstance(value, Decimal | int | str):
            amount = Decimal(value)
        else:
            raise InvalidAmountError(f"{value!r} is not a number", field=field)
    except InvalidOperation as err:
        raise InvalidAmountError(f"{value!r} is not a number", field=field) from err
    if not amount.is_finite():
        raise InvalidAmountError(f"{value!r} is not a finite number", field=field)
    if amount < 0:
        raise InvalidAmountError(f"{value!r} is negative", field=field)
    if amount > MAX_AMOUNT:
        raise InvalidAmountError(f"{value!r} is over the largest amount, 10**15", field=field)
    # 10**15 with this many decimal places still formats (and travels) in full.
    if amount.as_tuple().exponent < -MAX_DECIMAL_PLACES:  # type: ignore[operator]
        raise InvalidAmountError(
            f"{value!r} has more than {MAX_DECIMAL_PLACES} decimal places", field=field
        )
    return amount


MAX_DECIMAL_PLACES = 30


def check_text(value: object, field: str, *, header: bool = False, max_chars: int = 0) -> str:
    """A non-empty string; with ``header`` also safe as a header value."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("must be a non-empty string", field=field)
    if max_chars and len(value) > max_chars:
        raise ValidationError(f"is longer than {max_chars} characters", field=field)
    if header:
        check_header_value(value, field)
    return value


def check_identifier(value: object, field: str) -> str:
    """Ids (order ids, tenant ids): a non-empty string or an int, as a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 64:
            raise ValidationError("is an integer beyond 64 bits; pass it as a string", field=field)
        return str(value)
    return check_text(value, field, header=True, max_chars=256)


#: The most of one item an order line may hold: with MAX_AMOUNT, a line total
#: the templates still format.
MAX_QUANTITY = 10**9


def check_items(items: object, field: str = "items") -> list[dict[str, Any]]:
    """Order lines: ``[{"name": str, "quantity": int, "unit_price": amount}, ...]``."""
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise InvalidContextError("must be a list of order lines", field=field)
    lines = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidContextError(
                "must be a mapping with name, quantity, unit_price", field=where
            )
        quantity = item.get("quantity", 1)
        if (
            not isinstance(quantity, int)
            or isinstance(quantity, bool)
            or not 1 <= quantity <= MAX_QUANTITY
        ):
            raise InvalidContextError(
                f"quantity must be an integer from 1 to {MAX_QUANTITY:,}", field=f"{where}.quantity"
            )
        line = dict(item)
        line["name"] = check_text(item.get("name"), f"{where}.name", max_chars=500)
        line["quantity"] = quantity
        line["unit_price"] = check_amount(item.get("unit_price"), f"{where}.unit_price")
        lines.append(line)
    return lines
