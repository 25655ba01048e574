"""The task messages' AMQP deliveries, read as far as the worker needs them.

py-amqp decodes every property of every delivery in pure Python, and Celery's
protocol-2 header table (about twenty entries, arrays and tables among them) into
a dict, then kombu wraps the message in objects of its own: together about a sixth
of a busy worker's CPU. The worker reads five headers and the body. This reads a
``basic.deliver`` method frame and its content header only that far: the consumer
tag and the delivery tag, ``content_type`` and ``content_encoding``, and the header entries of
:data:`WANTED`, skipping the others by their length. Anything it does not know
(a property-flags continuation, a table value type the spec does not have, a wanted
header of another type, bytes that are not UTF-8 where text is wanted) makes it
give up (None), and the caller hands the frames to py-amqp as before: it never
guesses. tests/transports/test_delivery_frames.py checks it against py-amqp's own
decoder on the same bytes.

:class:`Received` stands in for kombu's message on this path; its acknowledgement
is a frame packed here and written with the others of the same settling
(:class:`AckFrames`), in the order they were made.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .message import TENANT_HEADER

__all__ = ["WANTED", "AckFrames", "Received", "read_delivery"]

#: The header entries the worker reads (``compression``: only whether it is there).
WANTED = {
    name.encode(): name for name in ("task", "id", "eta", "retries", TENANT_HEADER, "compression")
}

#: basic.deliver's class and method ids, as the method frame starts.
DELIVER = b"\x00\x3c\x00\x3c"

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEADER = struct.Struct(">HxxQH")  # class id, (weight), body size, property flags
# Table value types (py-amqp's _read_item): fixed sizes, and those with a 4-byte length.
_FIXED = {
    ord("V"): 0,
    ord("t"): 1,
    ord("b"): 1,
    ord("B"): 1,
    ord("s"): 2,
    ord("U"): 2,
    ord("u"): 2,
    ord("I"): 4,
    ord("i"): 4,
    ord("f"): 4,
    ord("D"): 5,
    ord("L"): 8,
    ord("l"): 8,
    ord("d"): 8,
    ord("T"): 8,
}
_SIZED = frozenset(map(ord, "SFAx"))
_INTS = {
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("s"): struct.Struct(">h"),
    ord("U"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("I"): struct.Struct(">i"),
    ord("i"): struct.Struct(">I"),
    ord("L"): struct.Struct(">q"),
    ord("l"): struct.Struct(">q"),
}
_LONGSTR, _VOID = ord("S"), ord("V")


#: What :func:`read_delivery` reads: consumer tag, delivery tag, content type and
#: encoding, the wanted headers.
Read = tuple[str, int, str | None, str | None, dict[str, Any]]


def read_delivery(method: bytes, header: bytes) -> Read | None:
    """``(consumer tag, delivery tag, content type, content encoding, wanted headers)``:
    its ``basic.deliver`` frame's payload and its content header's; None for
    anything this does not read exactly as py-amqp would."""
    try:
        if method[:4] != DELIVER:
            return None
        size = method[4]
        consumer_tag = method[5 : 5 + size].decode("utf-8", "surrogatepass")
        (delivery_tag,) = _U64.unpack_from(method, 5 + size)
        class_id, _, flags = _HEADER.unpack_from(header, 0)
        if class_id != 60 or flags & 1:
            return None  # not basic's properties, or more flags than one word
        offset = 14
        content_type = None
        if flags & 0x8000:
            size = header[offset]
            content_type = header[offset + 1 : offset + 1 + size].decode("utf-8", "surrogatepass")
            offset += 1 + size
        content_encoding = None
        if flags & 0x4000:
            size = header[offset]
            content_encoding = header[offset + 1 : offset + 1 + size].decode(
                "utf-8", "surrogatepass"
            )
            offset += 1 + size
        headers: dict[str, Any] = {}
        if flags & 0x2000:
            (size,) = _U32.unpack_from(header, offset)
            offset += 4
            read = _table(header, offset, offset + size)
            if read is None:
                return None
            headers = read
        return consumer_tag, delivery_tag, content_type, content_encoding, headers
    except (IndexError, struct.error, UnicodeDecodeError):
        return None


def _table(buf: bytes, offset: int, end: int) -> dict[str, Any] | None:
    """The :data:`WANTED` entries of the field table in ``buf[offset:end]``."""
    out: dict[str, Any] = {}
    if end > len(buf):
        return None
    wanted, fixed, sized, ints = WANTED, _FIXED, _SIZED, _INTS
    while offset < end:
        size = buf[offset]
        name = wanted.get(buf[offset + 1 : offset + 1 + size])
        offset += 1 + size
        kind = buf[offset]
        offset += 1
        if kind in sized:
            (length,) = _U32.unpack_from(buf, offset)
            offset += 4
            if name is not None:
                if kind != _LONGSTR:
                    return None
                out[name] = buf[offset : offset + length].decode("utf-8", "surrogatepass")
            offset += length
        else:
            length = fixed.get(kind, -1)
            if length < 0:
                return None  # a type py-amqp does not know either: its error, not ours
            if name is not None:
                if kind == _VOID:
                    out[name] = None
                elif kind in ints:
                    out[name] = ints[kind].unpack_from(buf, offset)[0]
                else:
                    return None
            offset += length
    return out if offset == end else None


class AckFrames:
    """``basic.ack`` and ``basic.reject`` frames of one channel, written to the
    connection's transport at once or, between :meth:`hold` and :meth:`release`,
    together (one system call for a settling's acknowledgements), in order.

    Only the connection's own thread writes to it (as for every frame of the
    worker's consumer connection).
    """

    _ACK = struct.Struct(">BHIHHQB")  # frame type, channel, size; class, method; tag, bits

    def __init__(self, amqp: Any, channel_id: int) -> None:
        self._amqp = amqp
        self._write = amqp.transport.write
        self._channel = channel_id
        self._held: list[bytes] | None = None

    def frame(self, method: int, tag: int, bit: bool) -> None:
        data = self._ACK.pack(1, self._channel, 13, 60, method, tag, 1 if bit else 0) + b"\xce"
        if self._held is not None:
            self._held.append(data)
            return
        self._write(data)
        self._amqp.bytes_sent += 1  # py-amqp's heartbeat check counts frames sent

    def hold(self) -> None:
        """Keep the frames from now on, until :meth:`release`."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Write the frames kept since :meth:`hold`, in one go."""
        held, self._held = self._held, None
        if held:
            self._write(b"".join(held))
            self._amqp.bytes_sent += len(held)


class Received:
    """A task message read by :func:`read_delivery`: what the worker uses of kombu's
    message (its body, headers, delivery tag; ack and reject)."""

    __slots__ = ("_frames", "body", "delivery_tag", "headers")

    content_type = "application/json"

    def __init__(
        self, delivery_tag: int, headers: dict[str, Any], body: bytes, frames: AckFrames
    ) -> None:
        self.delivery_tag = delivery_tag
        self.headers = headers
        self.body = body
        self._frames = frames

    def ack(self, multiple: bool = False) -> None:
        self._frames.frame(80, self.delivery_tag, multiple)

    def reject(self, requeue: bool = False) -> None:
        self._frames.frame(90, self.delivery_tag, requeue)

    def decode(self) -> Any:
        return json.loads(self.body)
