"""Recipient validation: the plain-address fast path against email-validator itself.

``_validation._plain_email`` answers for the common form of address without
running email-validator. It must never disagree with it: every address it
answers for, email-validator accepts with the same normal form; every address
email-validator refuses, it leaves alone. Checked over a seeded random corpus
built to hit the rules (lengths, hyphens, dots, reserved names, case-insensitive
mailbox names, characters outside the plain form).
"""

from __future__ import annotations

import random

import email_validator

from tenant_notify._validation import _plain_email, normalize_email
from tenant_notify.errors import InvalidRecipientError

ATEXT = "abcxyzABCXYZ0189!#$%&'*+/=?^_`{|}~-"
TRICKY = ATEXT + '."()<>[]:;@\\, \t\u00e9\u00df\u2013\uff0e'


def reference(address: str) -> str | None:
    """What the library's settings of email-validator make of ``address``."""
    try:
        info = email_validator.validate_email(
            address, check_deliverability=False, test_environment=True, allow_smtputf8=False
        )
    except email_validator.EmailNotValidError:
        return None
    return str(info.ascii_email or info.normalized)


def label(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.1:
        return rng.choice(["xn--bcher-kva", "ab--cd", "a-b", "-ab", "ab-", "a" * 63, "a" * 64])
    size = rng.choice([1, 2, 3, 5, 10, 40, 61, 62, 63, 64])
    return "".join(rng.choice("abcXYZ019-") for _ in range(size))


def domain(rng: random.Random) -> str:
    top = rng.choice(
        ["com", "COM", "test", "local", "localhost", "invalid", "onion", "arpa", "de", "c0m",
         "x1", "1", "museum", "a" * 63, label(rng)]
    )  # fmt: skip
    return ".".join([label(rng) for _ in range(rng.choice([0, 1, 1, 2, 3, 5]))] + [top])


def local_part(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return rng.choice(["Info", "POSTMASTER", "support", "Abuse", "www", "infos", "in.fo"])
    alphabet = TRICKY if kind < 0.35 else ATEXT + "."
    size = rng.choice([1, 2, 5, 20, 64, 65, 200])
    return "".join(rng.choice(alphabet) for _ in range(size))


def corpus(count: int) -> list[str]:
    rng = random.Random(20261201)
    addresses = [f"{local_part(rng)}@{domain(rng)}" for _ in range(count)]
    # Around the total length limit of 254.
    addresses += [f"{'a' * n}@{'b' * 60}.{'c' * 60}.{'d' * 60}.com" for n in range(60, 75)]
    addresses += ["plain@example.com", "Jane.Doe@Example.COM", "a@b.c", "a@b", "@x.com", "a@.com"]
    return addresses


def library(address: str) -> str | None:
    try:
        return normalize_email(address, "to")
    except InvalidRecipientError:
        return None


def test_the_fast_path_never_disagrees_with_email_validator() -> None:
    addresses = corpus(6000)
    # Every address the fast path answers for, with email-validator's answer.
    wrong = [(a, p, reference(a)) for a in addresses if (p := _plain_email(a)) is not None]
    assert [w for w in wrong if w[1] != w[2]] == []
    # And the library as a whole (fast path or not) says what email-validator says.
    assert [a for a in addresses if library(a) != reference(a)] == []


def test_the_fast_path_takes_the_common_addresses() -> None:
    # Otherwise the test above would pass with a fast path that never answers.
    assert _plain_email("customer1234@example.com") == "customer1234@example.com"
    assert (
        _plain_email("Jane.Doe+orders@Mail.Example.CO.UK") == "Jane.Doe+orders@mail.example.co.uk"
    )
    assert _plain_email("Info@Acme.test") == "info@acme.test"
    taken = [a for a in corpus(2000) if _plain_email(a) is not None]
    assert len(taken) > 200
