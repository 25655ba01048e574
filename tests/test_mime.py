from __future__ import annotations

import datetime as dt
import email
import email.message
import email.policy
import email.utils
import socket

import pytest

from tenant_notify._mime import (
    build_mime,
    envelope_address,
    make_message_id,
    mime_bytes,
    wire_bytes,
)
from tenant_notify.errors import HeaderInjectionError, InvalidRecipientError, ValidationError
from tenant_notify.models import Address, EmailMessage


def make_email(**changes: object) -> EmailMessage:
    fields: dict[str, object] = {
        "from_addr": Address("orders@acme.test", "Acme Shop"),
        "to": (Address("jane@example.com", "Jane Doe"),),
        "subject": "Your order 1001",
        "text": "Thanks for your order.\n",
        "notification_id": "n-123",
        "tenant_id": "acme",
        "kind": "order_confirmation",
    }
    fields.update(changes)
    return EmailMessage(**fields)  # type: ignore[arg-type]


def content(part: email.message.EmailMessage) -> str:
    """A text part's content with the wire's CRLF line ends made ``\n`` again."""
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def roundtrip(message: EmailMessage, **kwargs: object) -> tuple[bytes, email.message.EmailMessage]:
    raw = mime_bytes(build_mime(message, **kwargs))  # type: ignore[arg-type]
    assert all(byte < 128 for byte in raw), "serialised message is not 7-bit clean"
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return raw, parsed


def test_text_only_message_has_the_expected_headers_and_body() -> None:
    _, parsed = roundtrip(make_email())
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert not parsed.is_multipart()
    assert content(parsed) == "Thanks for your order.\n"
    assert parsed["From"].addresses[0].display_name == "Acme Shop"
    assert parsed["From"].addresses[0].addr_spec == "orders@acme.test"
    assert parsed["To"].addresses[0].addr_spec == "jane@example.com"
    assert parsed["Subject"] == "Your order 1001"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["X-Tenant-Notify-Id"] == "n-123"
    assert parsed["Reply-To"] is None
    assert parsed["Message-ID"].startswith("<")
    assert parsed["Message-ID"].endswith("@acme.test>")
    sent = email.utils.parsedate_to_datetime(parsed["Date"])
    assert sent.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - sent) < dt.timedelta(minutes=1)


def test_html_makes_multipart_alternative_with_text_first() -> None:
    message = make_email(html="<p>Thanks for <b>your</b> order.</p>\n")
    _, parsed = roundtrip(message)
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert content(parts[0]) == "Thanks for your order.\n"
    assert content(parts[1]) == "<p>Thanks for <b>your</b> order.</p>\n"
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    # MIME-Version belongs to the top level only.
    assert all(p["MIME-Version"] is None for p in parts)
    assert parsed.get_body(preferencelist=("html",)) is parts[1]


def test_non_ascii_subject_name_and_body_are_encoded_and_decode_back() -> None:
    message = make_email(
        from_addr=Address("hallo@globex.test", 'Globex Café, "Zürich"'),
        to=(Address("jörg@example.com".replace("ö", "o"), "Jörg Müller"),),
        subject="Ihre Bestellung \N{EN DASH} Grüße aus Zürich ☕",
        text="Grüße,\nJörg \N{EN DASH} danke! ☕\n",
        html="<p>Grüße ☕</p>",
    )
    raw, parsed = roundtrip(message)
    assert "Grüße".encode() not in raw  # encoded, not 8-bit
    assert b"=?utf-8?" in raw
    assert parsed["Subject"] == "Ihre Bestellung \N{EN DASH} Grüße aus Zürich ☕"
    assert parsed["From"].addresses[0].display_name == 'Globex Café, "Zürich"'
    assert parsed["To"].addresses[0].display_name == "Jörg Müller"
    text, html = parsed.iter_parts()
    assert text["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert content(text) == "Grüße,\nJörg \N{EN DASH} danke! ☕\n"
    assert content(html) == "<p>Grüße ☕</p>\n"


def test_mostly_non_latin_body_uses_the_shorter_base64() -> None:
    body = "ご注文ありがとうございます。" * 20 + "\n"
    _raw, parsed = roundtrip(make_email(text=body))
    assert parsed["Content-Transfer-Encoding"] == "base64"
    assert content(parsed) == body


def test_long_ascii_lines_are_wrapped_by_quoted_printable() -> None:
    body = "x" * 2000 + "\n"
    _, parsed = roundtrip(make_email(text=body))
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(parsed) == body


def test_reply_to_several_recipients_and_extra_headers() -> None:
    message = make_email(
        to=(Address("a@example.com"), Address("b@example.com", "Bee")),
        reply_to=Address("support@acme.test", "Acme Support"),
        headers={"List-Unsubscribe": "<mailto:unsubscribe@acme.test>", "X-Campaign": "spring"},
    )
    _, parsed = roundtrip(message)
    assert [a.addr_spec for a in parsed["To"].addresses] == ["a@example.com", "b@example.com"]
    assert parsed["Reply-To"].addresses[0].addr_spec == "support@acme.test"
    assert parsed["List-Unsubscribe"] == "<mailto:unsubscribe@acme.test>"
    assert parsed["X-Campaign"] == "spring"


def test_given_message_id_is_used_with_or_without_brackets() -> None:
    for given in ("abc.123@acme.test", "<abc.123@acme.test>"):
        _, parsed = roundtrip(make_email(), message_id=given)
        assert parsed["Message-ID"] == "<abc.123@acme.test>"


def test_lines_starting_with_a_dot_survive() -> None:
    body = ".hidden line\n..two dots\nend\n"
    _, parsed = roundtrip(make_email(text=body))
    assert content(parsed) == body


@pytest.mark.parametrize(
    "subject",
    [
        "Hi =?UTF-8?Q?=0A?=Bcc: evil@x",
        "Hi =?utf-8?b?Cg==?=Bcc: evil@x",
        "Hi\r\nBcc: evil@x",
        "Hi\nBcc: evil@x",
        "Hi\x00there",
    ],
)
def test_header_injection_in_subject_is_refused(subject: str) -> None:
    with pytest.raises(HeaderInjectionError) as info:
        build_mime(make_email(subject=subject))
    assert info.value.field == "subject"


def test_header_injection_in_display_name_is_refused() -> None:
    with pytest.raises(HeaderInjectionError):
        build_mime(make_email(from_addr=Address("a@acme.test", "Shop =?UTF-8?Q?=0D=0A?=Bcc: x@y")))
    with pytest.raises(HeaderInjectionError):
        build_mime(make_email(to=(Address("a@example.com", "Jane\nBcc: x@y"),)))


def test_bad_extra_headers_are_refused() -> None:
    with pytest.raises(HeaderInjectionError):
        build_mime(make_email(headers={"X-Bad\r\nBcc": "x"}))
    with pytest.raises(HeaderInjectionError):
        build_mime(make_email(headers={"X Space": "x"}))
    with pytest.raises(HeaderInjectionError):
        build_mime(make_email(headers={"X-Ok": "value\r\nBcc: evil@x"}))
    with pytest.raises(HeaderInjectionError):
        build_mime(make_email(headers={"X-Ok": "=?UTF-8?Q?=0A?=Bcc: evil@x"}))
    for reserved in ("Bcc", "subject", "From", "Content-Type", "X-Tenant-Notify-Id"):
        with pytest.raises(ValidationError, match="cannot be overridden"):
            build_mime(make_email(headers={reserved: "x"}))


def test_a_message_needs_a_recipient() -> None:
    with pytest.raises(InvalidRecipientError):
        build_mime(make_email(to=()))


def test_idn_domains_are_punycoded_and_non_ascii_local_parts_refused() -> None:
    _, parsed = roundtrip(make_email(from_addr=Address("shop@bücher.example", "Bücher")))
    assert parsed["From"].addresses[0].addr_spec == "shop@xn--bcher-kva.example"
    assert parsed["Message-ID"].endswith("@xn--bcher-kva.example>")
    assert envelope_address("a@bücher.example", "to") == "a@xn--bcher-kva.example"
    with pytest.raises(InvalidRecipientError):
        build_mime(make_email(to=(Address("jörg@example.com"),)))


def test_make_message_id_uses_the_sender_domain_without_getfqdn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_fqdn(*args: object) -> str:
        raise AssertionError("socket.getfqdn must not be called")

    monkeypatch.setattr(socket, "getfqdn", no_fqdn)
    first = make_message_id(Address("orders@acme.test"))
    second = make_message_id(Address("orders@acme.test"))
    assert first.startswith("<")
    assert first.endswith("@acme.test>")
    assert first != second
    assert make_message_id(Address("no-at-sign")).endswith("@tenant-notify.invalid>")
    build_mime(make_email())  # no getfqdn on the way either


def test_message_ids_are_make_msgids_with_the_pid_of_the_process_that_sends() -> None:
    import email.utils
    import os
    import re
    import warnings

    shape = r"<(\d+)\.(\d+)\.(\d+)@acme\.test>"
    ours = re.fullmatch(shape, make_message_id(Address("orders@acme.test")))
    stdlib = re.fullmatch(shape, email.utils.make_msgid(domain="acme.test"))
    assert ours is not None and stdlib is not None
    assert ours.group(2) == stdlib.group(2) == str(os.getpid())
    assert abs(int(ours.group(1)) - int(stdlib.group(1))) <= 100  # the same clock
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12 warns about forking a process with threads (other tests' daemons).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its own pid in its ids
        try:
            os.write(write, make_message_id(Address("orders@acme.test")).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    child = re.fullmatch(shape, child_id)
    assert child is not None and child.group(2) == str(pid)


# --- attachments and inline images ------------------------------------------------------


def _message_with_files(**fields):
    from tenant_notify.models import Attachment

    base = dict(
        from_addr=Address("orders@acme.test", "Acme"),
        to=(Address("jane@example.com"),),
        subject="Your order",
        text="Thanks.\n",
        html='<p>Thanks <img src="cid:logo@acme"></p>',
        attachments=(
            Attachment(filename="Rechnung für Zoë.pdf", content=b"%PDF-1.4\x00\xff"),
            Attachment(
                filename="logo.png", content=b"\x89PNG\r\n", inline=True, content_id="logo@acme"
            ),
        ),
    )
    base.update(fields)
    return EmailMessage(**base)


def _tree(part):
    if part.is_multipart():
        return (part.get_content_type(), [_tree(p) for p in part.iter_parts()])
    return part.get_content_type()


def test_attachments_make_mixed_and_inline_images_make_related() -> None:
    raw, _ = wire_bytes(_message_with_files())
    assert all(byte < 128 for byte in raw)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert _tree(parsed) == (
        "multipart/mixed",
        [
            (
                "multipart/alternative",
                ["text/plain", ("multipart/related", ["text/html", "image/png"])],
            ),
            "application/pdf",
        ],
    )
    parts = {p.get_filename(): p for p in parsed.walk() if p.get_filename()}
    assert parts["Rechnung für Zoë.pdf"].get_content() == b"%PDF-1.4\x00\xff"
    assert parts["Rechnung für Zoë.pdf"].get_content_disposition() == "attachment"
    logo = parts["logo.png"]
    assert (logo["Content-ID"], logo.get_content_disposition()) == ("<logo@acme>", "inline")
    assert logo.get_content() == b"\x89PNG\r\n"
    assert sum(1 for p in parsed.walk() if p["MIME-Version"]) == 1


def test_inline_images_without_html_are_attached_inline() -> None:
    raw, _ = wire_bytes(_message_with_files(html=None))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert _tree(parsed) == ("multipart/mixed", ["text/plain", "application/pdf", "image/png"])
