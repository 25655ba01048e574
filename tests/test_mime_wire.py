"""wire_bytes (the SMTP provider's fast MIME writer) against build_mime: same meaning.

Every message is written both ways, parsed back with the email package, and compared
header by header and part by part; the fast output must also be 7-bit clean, CRLF only,
folded within 78 characters, and free of parser defects.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import itertools
import random
from typing import Any

import pytest

from tenant_notify._mime import (
    _base64_size,
    _fast_wire_bytes,
    _Unusual,
    build_mime,
    mime_bytes,
    wire_bytes,
)
from tenant_notify.errors import HeaderInjectionError, NotifyError, ValidationError
from tenant_notify.models import Address, EmailMessage

MESSAGE_ID = "<fixed.123@acme.test>"

NAMES = [
    "",
    "Jane Doe",
    "Doe, Jane",
    'Jane "JD" Doe',
    "J. Smith",
    "O'Brien",
    "a\\b",
    "Jürgen Groß",
    "Globex Café",
    "Café, Bar",
    "東京 商店",
    "Émile Zola-Dupont (Paris)",
    "Zoë",
    "x" * 60,
    " ".join(["Ünïcödé"] * 9),
]
SUBJECTS = [
    "Hi",
    "Your order A-1001 is confirmed",
    "Ihre Bestellung ✓",
    " ".join(["word"] * 40),
    " ".join(["Grüße"] * 30),
    "Привет мир " * 10 + "!",
    "🎉 Party 🎉",
    "100% off — today only",
    "a_b=c?d",
]
TEXTS = [
    "Hello\n",
    "no final newline",
    "line\r\nCRLF\r\n",
    "long line " * 30,
    "Grüße\n",
    "Привет\n" * 20,
    ".leading dot\n..two\n",
    "trailing space  \n",
    "tab\there\n",
    "\n\n\nblank lines\n",
    "From the start\n",
    "x" * 200,
    "form\x0cfeed\n",
]
HTMLS = [None, "<p>Hi</p>", "<p>Grüße</p>" * 50]
HEADERS: list[dict[str, str]] = [
    {},
    {"X-Campaign": "spring"},
    {"X-Campaign": "frühling", "List-Unsubscribe": "<mailto:u@acme.test>"},
]
RECIPIENTS = [
    (Address("jane@example.com", "Jane Doe"),),
    (
        Address("a@example.com", "Doe, Jane"),
        Address("b@bücher.example", "Jürgen Groß"),
        Address("c.d+tag@example.com"),
    ),
]


def make(**fields: Any) -> EmailMessage:
    base: dict[str, Any] = {
        "from_addr": Address("orders@acme.test", "Acme Shop"),
        "to": (Address("jane@example.com", "Jane Doe"),),
        "subject": "Your order",
        "text": "Thanks.\n",
        "notification_id": "n-1",
        "tenant_id": "acme",
        "kind": "order_confirmation",
    }
    base.update(fields)
    return EmailMessage(**base)


def summary(raw: bytes) -> dict[str, Any]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    defects = list(msg.defects)
    out: dict[str, Any] = {}
    for name, value in msg.items():
        defects.extend(getattr(value, "defects", ()))
        key = name.lower()
        if key in ("from", "to", "cc", "reply-to"):
            out[key] = [(a.display_name, a.addr_spec) for a in value.addresses]
        elif key == "date":
            out[key] = value.datetime is not None
        elif key == "content-type":
            out[key] = msg.get_content_type()
        else:
            out[key] = str(value)
    parts = list(msg.iter_parts()) if msg.is_multipart() else [msg]
    out["parts"] = []
    for part in parts:
        defects.extend(part.defects)
        content = part.get_content()
        out["parts"].append(
            (
                part.get_content_type(),
                part.get_content_charset(),
                part["Content-Transfer-Encoding"],
                content.replace("\r\n", "\n"),
            )
        )
    assert defects == [], defects
    return out


def check_wire_form(raw: bytes) -> None:
    assert all(byte < 128 for byte in raw), "not 7-bit clean"
    assert b"\r" not in raw.replace(b"\r\n", b""), "a bare CR"
    assert b"\n" not in raw.replace(b"\r\n", b""), "a bare LF"
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert len(line) <= 78 or b"<" in line, line
        assert line.strip(), "a whitespace-only header line"
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998


def compare(message: EmailMessage) -> bool:
    """Assert both writers mean the same; return whether the fast path took it."""
    slow = mime_bytes(build_mime(message, message_id=MESSAGE_ID))
    fast, message_id = wire_bytes(message, message_id=MESSAGE_ID)
    assert message_id == MESSAGE_ID.strip("<>")
    check_wire_form(fast)
    assert summary(fast) == summary(slow)
    try:
        _fast_wire_bytes(message, MESSAGE_ID)
    except _Unusual:
        return False
    return True


def test_the_corpus_means_the_same_both_ways() -> None:
    fast = compared = 0
    combinations = itertools.product(NAMES, SUBJECTS, TEXTS, HTMLS)
    # Every 17th combination (17 is prime to each list's length, so every value of
    # every list is met with many of the others).
    for cases, (name, subject, text, html) in enumerate(
        itertools.islice(combinations, 0, None, 17)
    ):
        compared += 1
        message = make(
            from_addr=Address("orders@acme.test", name),
            subject=subject,
            text=text,
            html=html,
            reply_to=Address("help@acme.test", name) if cases % 2 else None,
            to=RECIPIENTS[cases % 2],
            headers=HEADERS[cases % 3],
        )
        fast += compare(message)
    assert compared > 300
    assert fast > compared * 0.9  # the ordinary cases do take the fast path


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "tab\tinside"},
        {"subject": "=?utf-8?q?looks_encoded?="},
        {"subject": "  leading spaces"},
        {"subject": "double  space"},
        {"subject": "w" * 120},
        {"subject": "zero\u200bwidth"},
        {"from_addr": Address('"quoted local"@acme.test', "Q")},
        {"headers": {"Content-Disposition": "inline"}},
        {"headers": {"X-Empty": ""}},
        {"notification_id": "has space"},
    ],
)
def test_unusual_messages_are_left_to_the_email_package(changes: dict[str, Any]) -> None:
    message = make(**changes)
    try:
        slow = mime_bytes(build_mime(message, message_id=MESSAGE_ID))
    except NotifyError as err:
        with pytest.raises(type(err)):
            wire_bytes(message, message_id=MESSAGE_ID)
        return
    fast, _ = wire_bytes(message, message_id=MESSAGE_ID)
    assert summary(fast) == summary(slow)


def test_random_names_and_subjects() -> None:
    rng = random.Random(20261129)
    alphabet = [*" \"\\,.()<>@:;[]aZ0_-=?'é✓東🎉", "ab", "xyz", "Groß"]
    fast = 0
    for _ in range(250):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        subject = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        message = make(from_addr=Address("orders@acme.test", name), subject=subject)
        try:
            build_mime(message, message_id=MESSAGE_ID)
        except NotifyError:
            continue
        fast += compare(message)
    assert fast > 60


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"subject": "Hi\nBcc: x@evil.test"}, HeaderInjectionError),
        ({"subject": "=?utf-8?q?=0A?=Bcc: x@evil.test"}, HeaderInjectionError),
        ({"from_addr": Address("a@acme.test", "A\r\nB")}, HeaderInjectionError),
        ({"headers": {"Bad Name": "x"}}, HeaderInjectionError),
        ({"headers": {"Subject": "x"}}, ValidationError),
        ({"headers": {"X-Ok": "a\nb"}}, HeaderInjectionError),
        ({"to": ()}, ValidationError),
        ({"to": (Address("jörg@example.com"),)}, ValidationError),
    ],
)
def test_the_same_checks_refuse_the_same_messages(changes: dict[str, Any], error: type) -> None:
    message = make(**changes)
    with pytest.raises(error):
        build_mime(message)
    with pytest.raises(error):
        wire_bytes(message)


def test_a_message_id_is_its_notifications_and_fresh_without_one() -> None:
    # Every attempt of a notification carries one Message-ID (a copy sent again in
    # the provider-side window is the same message where it arrives).
    _, first = wire_bytes(make())
    _, again = wire_bytes(make())
    _, other = wire_bytes(make(notification_id="n-2"))
    assert first == again == "n-1@acme.test" and other == "n-2@acme.test"
    assert build_mime(make())["Message-ID"] == "<n-1@acme.test>"  # the slow path agrees
    # No notification id (or one that cannot be a Message-ID's left part): a new one each time.
    for notification_id in ("", "a b", "x@y", "a..b"):
        _, one = wire_bytes(make(notification_id=notification_id))
        _, two = wire_bytes(make(notification_id=notification_id))
        assert one != two and one.endswith("@acme.test")


@pytest.mark.parametrize("recipients", RECIPIENTS)
def test_cc_is_written_the_same_both_ways_and_bcc_never(recipients) -> None:
    message = make(cc=recipients, bcc=(Address("hidden@example.com", "Hidden"),))
    assert compare(message), "cc stays on the fast path"
    fast, _ = wire_bytes(message, message_id=MESSAGE_ID)
    assert b"hidden@example.com" not in fast and b"Bcc" not in fast


@pytest.mark.parametrize("size", [0, 1, 2, 3, 56, 57, 58, 113, 114, 115, 1000, 4096])
def test_base64_size_is_what_encodebytes_writes(size: int) -> None:
    assert _base64_size(size) == len(base64.encodebytes(b"x" * size))


def _bodies(count: int) -> list[str]:
    rng = random.Random(1201)
    alphabet = ["a", "b", " ", "\t", "=", ".", "é", "ü", "\u2013", "☕", "\n"]
    bodies = []
    for _ in range(count):
        # The share of non-ASCII text moves the choice between quoted-printable
        # and base64 through its tie; line lengths cross 76 and 78.
        weights = [rng.random() for _ in alphabet]
        size = rng.choice([1, 10, 77, 78, 79, 200, 1500])
        body = "".join(rng.choices(alphabet, weights, k=size))
        bodies.append(rng.choice([body, body + "\n", body.replace("\n", "\r\n"), body + " "]))
    return bodies


def test_text_parts_choose_the_encoding_body_cte_chooses() -> None:
    from tenant_notify._mime import _body_cte, _text_part

    for body in _bodies(4000):
        if not body.strip():
            continue
        headers, payload = _text_part(body, "plain")
        assert headers[1] == f"Content-Transfer-Encoding: {_body_cte(body)}", repr(body)
        part = email.message_from_bytes(
            b"\r\n".join(h.encode() for h in headers) + b"\r\n\r\n" + payload
        )
        lines = body.splitlines()
        assert part.get_payload(decode=True).decode().splitlines() == lines


def test_quoted_printable_line_by_line_is_binascii_on_the_whole_body() -> None:
    # _text_part encodes a body line by line, caching each line's encoding; the
    # result must be binascii's encoding of the whole body, every time.
    import binascii

    from tenant_notify._mime import _QP_CACHED_LINE, _quoted_printable

    edge_lines = [
        "",
        ".",
        "..",
        ". ",
        " ",
        "\t",
        "trailing space ",
        "trailing tab\t",
        "=",
        "=3D",
        "_under_score",
        "x" * 75,
        "x" * 76,
        "x" * 77,
        "x" * 73 + "=",
        "x" * 74 + "é",
        "x" * 75 + " ",
        "é" * 40,
        "\x00nul",
        "\x7fdel",
        "From me",
        "y" * (_QP_CACHED_LINE + 1),
    ]
    rng = random.Random(1202)
    bodies = _bodies(3000)
    bodies += ["\n".join(rng.choices(edge_lines, k=rng.randint(1, 12))) for _ in range(500)]
    for body in bodies:
        lines = body.encode("utf-8").splitlines()
        whole = binascii.b2a_qp(b"\n".join(lines) + b"\n", istext=True)
        assert _quoted_printable(lines) == whole, repr(body)
        assert _quoted_printable(lines) == whole, repr(body)  # from the cache
