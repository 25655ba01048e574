"""How `tenant-notify worker` reads a task body: its own JSON read, kombu's as the fallback."""

from __future__ import annotations

import datetime as dt

import pytest
from kombu.exceptions import ContentDisallowed
from kombu.message import Message
from kombu.serialization import dumps

from tenant_notify.transports.celery.consumer import _decode


def message(body: bytes, content_type: str, **headers: str) -> Message:
    return Message(
        body=body,
        content_type=content_type,
        content_encoding="utf-8",
        headers=headers,
        accept={content_type} if content_type == "application/json" else {"application/json"},
    )


def test_plain_json_is_read_as_kombu_would() -> None:
    body = [[{"id": "n1", "tenant_id": "acme", "data": {"total": "9.50"}}], {}, {}]
    _, _, raw = dumps(body, serializer="json")
    raw = raw.encode() if isinstance(raw, str) else raw
    got = _decode(message(raw, "application/json"), {})
    assert got == body
    assert got == message(raw, "application/json").decode()


def test_kombu_typed_json_goes_through_kombu() -> None:
    # kombu's JSON encodes a datetime as {"__type__": "datetime", ...}: only kombu reads it back.
    when = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    _, _, raw = dumps([[{"id": "n1", "at": when}], {}, {}], serializer="json")
    raw = raw.encode() if isinstance(raw, str) else raw
    assert b"__type__" in raw
    assert _decode(message(raw, "application/json"), {})[0][0]["at"] == when


def test_other_content_types_are_refused() -> None:
    with pytest.raises(ContentDisallowed):
        _decode(message(b"\x80\x04N.", "application/x-python-serialize"), {})
