"""Message features as values: Attachment and EmailOptions, checked when they are made."""

from __future__ import annotations

import json

import pytest

from tenant_notify import Address, Attachment, EmailMessage, EmailOptions, Feature
from tenant_notify.errors import (
    HeaderInjectionError,
    InvalidAttachmentError,
    InvalidRecipientError,
    ValidationError,
)
from tenant_notify.models import MAX_ATTACHMENT_BYTES, Channel, Notification

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4


# --- Attachment ------------------------------------------------------------------------


def test_content_type_is_guessed_from_the_filename_and_lowered() -> None:
    assert Attachment(filename="invoice.pdf", content=PDF).content_type == "application/pdf"
    assert Attachment(filename="data.unknownext", content=b"x").content_type == (
        "application/octet-stream"
    )
    assert Attachment(filename="a.bin", content=b"x", content_type="Image/PNG").content_type == (
        "image/png"
    )


@pytest.mark.parametrize(
    "filename",
    ["", "  ", "../etc/passwd", "dir/file.pdf", "c:\\boot.ini", "..", "a\tb.pdf", "x" * 256],
)
def test_filenames_with_paths_or_oddities_are_refused(filename: str) -> None:
    with pytest.raises(InvalidAttachmentError) as info:
        Attachment(filename=filename, content=b"x")
    assert info.value.field == "filename"


@pytest.mark.parametrize("filename", ["a\r\nBcc: x@evil.test.pdf", "=?utf-8?q?a=0Ab?=.pdf"])
def test_filenames_that_could_start_a_header_are_refused(filename: str) -> None:
    with pytest.raises(HeaderInjectionError):
        Attachment(filename=filename, content=b"x")


def test_a_non_ascii_filename_is_fine() -> None:
    assert Attachment(filename="Rechnung für Zoë.pdf", content=PDF).filename.endswith(".pdf")


@pytest.mark.parametrize(
    "content_type",
    ["pdf", "application/pdf; name=x", "multipart/mixed", "message/rfc822", "text/html\r\nX: y"],
)
def test_bad_or_structural_content_types_are_refused(content_type: str) -> None:
    with pytest.raises(InvalidAttachmentError, match="type"):
        Attachment(filename="a.bin", content=b"x", content_type=content_type)


def test_inline_needs_a_content_id_and_the_id_is_stripped_of_brackets() -> None:
    with pytest.raises(InvalidAttachmentError, match="content_id"):
        Attachment(filename="logo.png", content=b"x", inline=True)
    logo = Attachment(filename="logo.png", content=b"x", inline=True, content_id="<logo@acme>")
    assert logo.content_id == "logo@acme"


@pytest.mark.parametrize("cid", ["", "has space", "a>b", "a\r\nb", "x" * 300, "ü"])
def test_bad_content_ids_are_refused(cid: str) -> None:
    with pytest.raises(InvalidAttachmentError):
        Attachment(filename="logo.png", content=b"x", inline=True, content_id=cid)


def test_content_must_be_bytes_and_within_the_limit() -> None:
    with pytest.raises(InvalidAttachmentError, match="bytes"):
        Attachment(filename="a.txt", content="text")  # type: ignore[arg-type]
    with pytest.raises(InvalidAttachmentError, match=str(MAX_ATTACHMENT_BYTES)):
        Attachment(filename="big.bin", content=bytes(MAX_ATTACHMENT_BYTES + 1))
    assert Attachment(filename="a.bin", content=bytearray(b"ab")).content == b"ab"


def test_from_path_reads_the_file(tmp_path) -> None:
    path = tmp_path / "invoice-1042.pdf"
    path.write_bytes(PDF)
    attachment = Attachment.from_path(path)
    assert (attachment.filename, attachment.content, attachment.content_type) == (
        "invoice-1042.pdf",
        PDF,
        "application/pdf",
    )
    with pytest.raises(InvalidAttachmentError, match="cannot be read"):
        Attachment.from_path(tmp_path / "missing.pdf")


def test_repr_shows_the_size_not_the_content() -> None:
    text = repr(Attachment(filename="secret.txt", content=b"the recipient's data"))
    assert "recipient" not in text and "size=20" in text


def test_attachments_survive_json_unchanged() -> None:
    logo = Attachment(filename="logo.png", content=b"\x89PNG\0", inline=True, content_id="logo")
    assert Attachment.from_dict(json.loads(json.dumps(logo.to_dict()))) == logo


# --- EmailOptions ---------------------------------------------------------------------


def test_no_options_is_none() -> None:
    assert EmailOptions.build() is None


def test_options_are_normalised_and_their_features_named() -> None:
    options = EmailOptions.build(
        to_name="Jane Doe",
        cc="Carl@Example.com",
        bcc=[Address("audit@example.com", "Audit")],
        reply_to="help@acme.test",
        headers={"X-Campaign": "spring"},
        tags=["orders", "orders", "spring"],
        metadata={"order": "1042"},
        attachments=[Attachment(filename="i.pdf", content=PDF)],
        to="jane@example.com",
    )
    assert options is not None
    assert options.cc == (Address("Carl@example.com"),)
    assert options.tags == ("orders", "spring")
    assert options.features == {
        Feature.CC,
        Feature.BCC,
        Feature.HEADERS,
        Feature.TAGS,
        Feature.METADATA,
        Feature.ATTACHMENTS,
    }


@pytest.mark.parametrize(
    ("options", "error", "field"),
    [
        ({"cc": "not-an-address"}, InvalidRecipientError, "cc[0]"),
        ({"bcc": ["ok@example.com", "bad@"]}, InvalidRecipientError, "bcc[1]"),
        ({"reply_to": ["a@example.com", "b@example.com"]}, ValidationError, "reply_to"),
        ({"cc": "jane@example.com"}, ValidationError, "cc[0]"),
        ({"cc": "x@example.com", "bcc": "X@example.com"}, ValidationError, "bcc[0]"),
        ({"cc": [f"c{i}@example.com" for i in range(50)]}, ValidationError, "cc"),
        ({"to_name": "Jane\r\nBcc: x@evil.test"}, HeaderInjectionError, "to_name"),
        ({"cc": Address("c@example.com", "=?utf-8?q?x=0D=0A?=")}, HeaderInjectionError, None),
        ({"headers": {"X-A": "a\nBcc: x@evil.test"}}, HeaderInjectionError, "headers['X-A']"),
        ({"headers": {"X-A": "=?utf-8?b?DQpCY2M6IHhAZXZpbC50ZXN0?="}}, HeaderInjectionError, None),
        ({"headers": {"Bad Name": "v"}}, HeaderInjectionError, "headers['Bad Name']"),
        ({"headers": {"Bcc": "x@evil.test"}}, ValidationError, "headers['Bcc']"),
        ({"headers": {"content-type": "text/plain"}}, ValidationError, None),
        ({"headers": {"X-A": "v", "x-a": "w"}}, ValidationError, "headers['x-a']"),
        ({"headers": {"X-Long": "v" * 1000}}, ValidationError, None),
        ({"headers": {"X-Num": 3}}, ValidationError, None),
        ({"tags": "one-string"}, ValidationError, "tags"),
        ({"tags": ["a\nb"]}, ValidationError, "tags[0]"),
        ({"tags": [f"t{i}" for i in range(11)]}, ValidationError, "tags"),
        ({"metadata": {"notification_id": "x"}}, ValidationError, None),
        ({"metadata": {"has space": "x"}}, ValidationError, None),
        ({"metadata": {"k": 1}}, ValidationError, None),
        ({"attachments": [b"raw bytes"]}, InvalidAttachmentError, "attachments[0]"),
        ({"attachments": Attachment(filename="a", content=b"")}, InvalidAttachmentError, None),
    ],
)
def test_bad_options_are_refused_with_the_field(options, error, field) -> None:
    with pytest.raises(error) as info:
        EmailOptions.build(to="jane@example.com", **options)
    if field is not None:
        assert info.value.field == field


def test_duplicate_content_ids_and_too_many_bytes_together_are_refused() -> None:
    logo = Attachment(filename="a.png", content=b"x", inline=True, content_id="logo")
    with pytest.raises(InvalidAttachmentError, match="used twice"):
        EmailOptions.build(attachments=[logo, logo])
    half = Attachment(filename="half.bin", content=bytes(MAX_ATTACHMENT_BYTES // 2 + 1))
    with pytest.raises(InvalidAttachmentError, match="together"):
        EmailOptions.build(attachments=[half, half])


def test_options_apply_to_the_rendered_message() -> None:
    options = EmailOptions.build(
        to_name="Jane", reply_to="help@acme.test", headers={"X-A": "1"}, tags=["t"]
    )
    assert options is not None
    message = EmailMessage(
        from_addr=Address("orders@acme.test"),
        to=(Address("jane@example.com"),),
        subject="s",
        text="t",
        reply_to=Address("tenant@acme.test"),
        headers={"X-Tenant": "acme"},
    )
    applied = options.apply(message)
    assert applied.to == (Address("jane@example.com", "Jane"),)
    assert applied.reply_to == Address("help@acme.test")
    assert applied.headers == {"X-Tenant": "acme", "X-A": "1"}
    assert applied.tags == ("t",)


def test_a_notification_with_options_travels_as_json() -> None:
    options = EmailOptions.build(
        to_name="Zoë",
        cc=[Address("c@example.com", "Carl")],
        bcc="b@example.com",
        reply_to=Address("r@example.com", "Help"),
        headers={"X-A": "ä"},
        tags=["t"],
        metadata={"order": "1"},
        attachments=[
            Attachment(filename="Rechnung.pdf", content=PDF),
            Attachment(filename="logo.png", content=b"\x89PNG", inline=True, content_id="logo"),
        ],
    )
    notification = Notification(
        id="n1",
        tenant_id="acme",
        kind="email",
        channel=Channel.EMAIL,
        to="jane@example.com",
        options=options,
    )
    wire = json.dumps(notification.to_dict())
    assert Notification.from_dict(json.loads(wire)) == notification
    plain = Notification(id="n2", tenant_id="a", kind="k", channel=Channel.SMS, to="+15005550006")
    assert Notification.from_dict(json.loads(json.dumps(plain.to_dict()))) == plain


# --- the context encoding --------------------------------------------------------------


def test_the_encoding_gives_every_transport_the_same_values() -> None:
    import enum

    from markupsafe import Markup

    from tenant_notify.models import decode_context, encode_context

    class Size(enum.IntEnum):
        BIG = 3

    class Colour(enum.StrEnum):
        RED = "red"

    context = {"size": Size.BIG, "colour": Colour.RED, "html": Markup("<b>x</b>"), "n": [True]}
    encoded = encode_context(context)
    # What JSON would make of them on Celery, whatever the transport.
    assert json.loads(json.dumps(encoded)) == encoded
    decoded = decode_context(encoded)
    assert [type(decoded[key]) for key in ("size", "colour", "html")] == [int, str, str]
    assert decoded["n"] == [True] and type(decoded["n"][0]) is bool


def test_the_encoding_names_the_path_of_what_it_refuses() -> None:
    from tenant_notify.errors import InvalidContextError
    from tenant_notify.models import encode_context

    with pytest.raises(InvalidContextError) as caught:
        encode_context({"rows": [{"price": 1}, {"price": float("inf")}]})
    assert caught.value.field == "rows[1].price"
    with pytest.raises(InvalidContextError, match="more than a render can work with") as caught:
        encode_context({"a": "x" * 50, "b": ["y" * 60]}, max_chars=100)
    assert caught.value.field == "b[0]"
