"""The one scrubbing path: secrets out, recipients masked, exception chains cleaned."""

from __future__ import annotations

import smtplib
import traceback

import pytest

from tenant_notify._redact import (
    MIN_SECRET_CHARS,
    Redacted,
    clean_chain,
    mask_recipients,
    redact,
    redact_secrets,
    redacted_exception,
    register_secret,
    register_url_secrets,
)
from tenant_notify.errors import PermanentDeliveryError


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("550 5.1.1 <jane.doe@example.com>: unknown", "550 5.1.1 <j***@example.com>: unknown"),
        ("'jane doe@exa mple.com' is not valid", "'j***@exa mple.com' is not valid"),
        ("to jane@bücher.de failed", "to j***@bücher.de failed"),
        ("The 'To' number +15005550001 is invalid", "The 'To' number +1********01 is invalid"),
        ("call +1 (555) 123-4567 now", "call +1********67 now"),
        ("+44 20 7946 0958", "+4*********58"),
        # Not recipients: ids, codes, times, versions.
        ("id 4f3a2b1c9d8e7f6a error 21211", "id 4f3a2b1c9d8e7f6a error 21211"),
        ("at 2026-12-01T10:00:00+00:00, 5.1.1", "at 2026-12-01T10:00:00+00:00, 5.1.1"),
    ],
)
def test_recipients_are_masked_wherever_they_are_quoted(text: str, masked: str) -> None:
    assert mask_recipients(text) == masked
    assert mask_recipients(masked) == masked  # masking twice changes nothing


def test_registered_secrets_are_redacted_from_every_text() -> None:
    register_secret("hunter2-for-the-test")
    register_secret("abc")  # shorter than MIN_SECRET_CHARS: not searched for
    assert MIN_SECRET_CHARS == 4
    assert redact_secrets("AUTH hunter2-for-the-test abc") == "AUTH *** abc"
    assert redact_secrets("x", secrets=["x"]) == "***"  # a provider's own, any length
    register_url_secrets("amqp://app:p%40ss-word-url@rabbit//?token=tok-en-value")
    assert redact("p@ss-word-url p%40ss-word-url tok-en-value") == "*** *** ***"


class _Picky(Exception):
    """An exception whose text needs an attribute only its __init__ sets."""

    def __init__(self, code: int, reply: str) -> None:
        super().__init__(code, reply)
        self.reply = reply

    def __str__(self) -> str:
        return f"{self.args[0]} {self.reply}"


def test_a_chain_is_cleaned_in_place_keeping_types_and_tracebacks() -> None:
    # In variables: a printed traceback shows the source lines, which hold no secret.
    secret, address = "s3cret-in-the-reply", "jane@example.com"
    register_secret(secret)
    try:
        try:
            raise _Picky(535, f"bad password {secret}")
        except _Picky as picky:
            raise smtplib.SMTPAuthenticationError(535, secret.encode()) from picky
    except smtplib.SMTPException as err:
        try:
            raise PermanentDeliveryError(f"refused {address}") from err
        except PermanentDeliveryError as caught:
            error = caught
    clean_chain(error)
    assert str(error) == "refused j***@example.com"
    cause = error.__cause__
    assert type(cause) is smtplib.SMTPAuthenticationError  # still what an error tracker groups
    assert cause.__traceback__ is not None
    assert not hasattr(cause, "smtp_error")  # the raw reply is not carried over
    assert type(cause.__cause__) is Redacted  # _Picky cannot be copied with one argument
    assert cause.__cause__.original_type.endswith("_Picky")
    printed = "".join(traceback.format_exception(error))
    assert secret not in printed and address not in printed
    assert "SMTPAuthenticationError" in printed


def test_the_librarys_own_errors_stay_in_the_chain_and_cycles_end() -> None:
    inner = PermanentDeliveryError("inner")
    outer = ValueError("outer with jane@example.com")
    outer.__cause__ = inner
    inner.__context__ = outer  # a cycle
    stand_in = redacted_exception(outer)
    assert type(stand_in) is ValueError and str(stand_in) == "outer with j***@example.com"
    assert stand_in.__cause__ is inner
    assert type(inner.__context__) is ValueError and inner.__context__ is not outer
