"""The Redis writer packs its commands as redis-py does, byte for byte."""

from __future__ import annotations

import pytest
import redis

from tenant_notify.stores.redis import _resp


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "tn:status:abc", '{"id":"abc","state":"queued"}', "NX", "PX", 604800000),
        ("EVAL", "return redis.call('GET', KEYS[1])", 1, "k:ü€", 0, -5),
        ("SET", "k", ""),
        ("SET", "k", "x" * 100_000),  # over redis-py's buffer cut-off: it writes parts
        ("CONFIG GET", "maxmemory"),  # a name with a space: redis-py splits it
        ("SET", "k", b"raw bytes"),
        ("SET", "k", 1.5),
    ],
)
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_a_command_is_packed_as_redis_py_packs_it(args, encoding):
    conn = redis.Connection(encoding=encoding, encoding_errors="replace")
    expected = b"".join(conn.pack_command(*args))
    packed = _resp(conn, args)
    # A list of bytes: what Connection.send_packed_command takes (a bare bytes
    # object it would iterate over, number by number).
    assert isinstance(packed, list)
    assert b"".join(packed) == expected


def test_what_redis_py_refuses_is_still_refused():
    conn = redis.Connection()
    with pytest.raises(redis.DataError):
        _resp(conn, ("SET", "k", True))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"tenant_id": 'glo"bex café\\', "kind": "order_confirmation", "channel": "sms"},
        {"state": "sending", "attempts": 1},
        {"provider": "smtp", "provider_message_id": "<x@y>"},
        {"error": "boom", "error_type": "DeliveryError", "state": "failed"},
        {"error": "boom"},  # each field that is not a first status's on its own
        {"error_type": "DeliveryError"},
        {"provider": "smtp"},
        {"provider_message_id": "<x@y>"},
        {"attempts": 2},
    ],
)
def test_a_first_status_is_written_as_the_json_encoder_writes_it(changes):
    import datetime as dt
    import json

    from tenant_notify.models import Channel, DeliveryState, DeliveryStatus
    from tenant_notify.stores.redis import _first_status_json

    fields = {"id": "0123456789abcdef0123456789abcdef", "tenant_id": "acme", "kind": "welcome"}
    fields.update(changes)
    fields["channel"] = Channel(fields.get("channel", "email"))
    fields["state"] = DeliveryState(fields.get("state", "queued"))
    status = DeliveryStatus(**fields, created_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    expected = json.dumps(status.to_dict(), separators=(",", ":"))
    assert _first_status_json(status) == expected
