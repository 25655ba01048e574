"""The caller's side of the broker: a pool of confirming connections per process.

:class:`Publisher` writes task messages (:func:`.message.build_message`) on pooled
broker connections. With publisher confirms (RabbitMQ) every message is kept
until the broker confirms it; a background thread reads the confirms, writes
again on a new connection what a broken connection left unconfirmed, and gives up
on (reports through ``on_lost``) what cannot be confirmed within
``publish_timeout``. A send can also wait for its own confirm (``sync``).

With ``[celery] send_events`` on, every task message is followed by Celery's
``task-sent`` event on the ``celeryev`` exchange (what ``task_send_sent_event``
makes ``apply_async`` do), so Flower and ``celery events`` show a notification
from the moment it is queued, not only once a worker has received it.
"""

from __future__ import annotations

import atexit
import datetime as dt
import itertools
import json
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from ... import _process
from ...config import CelerySettings
from ...errors import InDoubtError, NotQueuedError
from ...log import get_logger
from ...models import Notification
from .message import (
    TASK_HEADER_KEYS,
    TASK_NAME,
    TENANT_HEADER,
    Routes,
    build_message,
    kombu_module,
    process_origin,
)

__all__ = ["Publisher"]

# Celery's event exchange, and how its EventDispatcher names a process that is
# not a worker (celery.utils.nodenames.anon_nodename).
_EVENT_EXCHANGE = "celeryev"
_CLOCK = itertools.count(1)
_hostnames: dict[int, str] = {}


def _event_hostname() -> str:
    pid = os.getpid()  # a forked worker is another process
    name = _hostnames.get(pid)
    if name is None:
        name = _hostnames[pid] = f"gen{pid}@{socket.gethostname()}"
    return name


def _utcoffset() -> int:
    # As celery.utils.time.utcoffset: hours west of UTC.
    return (time.altzone if time.daylight else time.timezone) // 3600


# Frame type, channel, size; then class, weight, body size, property flags.
_HEADER_FRAME = struct.Struct(">BHIHHQH")
_FRAME = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_BASIC, _PUBLISH = 60, 40
# content_type, content_encoding, headers, delivery_mode, priority, correlation_id
_PROPERTY_FLAGS = 0xFC00
_JSON_UTF8 = b"\x10application/json\x05utf-8"
_SCALARS = (str, int, bool, float, type(None))
# A basic.ack or basic.nack frame: type, channel, size; class, method, delivery tag, bits; end.
_CONFIRM = struct.Struct(">BHIHHQBB")
_ACK, _NACK = 80, 120
_READ_SIZE = 65536
_TASK_HEADERS = len(TASK_HEADER_KEYS)
# The task headers whose values differ from one message to the next, in their order.
_VARYING = ("id", "root_id", "argsrepr", TENANT_HEADER)


def _shortstr(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > 255:
        raise ValueError(f"an AMQP short string holds at most 255 bytes, not {len(raw)}")
    return bytes((len(raw),)) + raw


class _Frames:
    """A task message as the AMQP frames of one ``basic.publish``, in one write.

    The bytes are those py-amqp's frame writer produces for the message the
    publisher used to build with ``prepare_message`` (tests/transports compare
    them), without its work per message: a ``Message`` object, a ``BytesIO``
    and a ``pack`` per header entry, and a poll of the socket before every
    publish (its ``connection.blocked`` check; the confirm reader reads those
    frames). The method frame is built once per queue and every header entry
    whose value did not change (all but the ids, ``argsrepr`` and the tenant) is
    reused as encoded.
    """

    def __init__(self, channel_id: int, frame_max: int) -> None:
        self.channel_id = channel_id
        self.chunk = frame_max - 8  # the most body one frame carries
        self._methods: dict[str, bytes] = {}
        self._keys: dict[str, bytes] = {}  # key -> short string, then "S" (a string value)
        self._entries: dict[str, tuple[tuple[type, Any], bytes]] = {}

    def _method(self, queue: str) -> bytes:
        frame = self._methods.get(queue)
        if frame is None:
            # basic.publish: reserved short, exchange, routing key, mandatory and immediate off
            args = struct.pack(">HHH", _BASIC, _PUBLISH, 0) + _shortstr(queue) * 2 + b"\0"
            frame = _FRAME.pack(1, self.channel_id, len(args)) + args + _FRAME_END
            self._methods[queue] = frame
        return frame

    def _table(self, headers: Mapping[str, Any]) -> bytes:
        parts = []
        keys, entries = self._keys, self._entries
        for key, value in headers.items():
            kind = type(value)
            hit = entries.get(key)
            if kind is str:
                # The same text as the last message's (the task name, the origin):
                # the entry as encoded then; else (an id) encoded now.
                if hit is not None and hit[0][0] is str and hit[0][1] == value:
                    parts.append(hit[1])
                    continue
                prefix = keys.get(key)
                if prefix is None:
                    prefix = keys[key] = _shortstr(key) + b"S"
                raw = value.encode("utf-8", "surrogatepass")
                entry = prefix + len(raw).to_bytes(4, "big") + raw
                entries[key] = ((str, value), entry)
                parts.append(entry)
                continue
            # Scalars compare as themselves, their type with them (True is not 1);
            # containers by their repr ([True] is not [1]).
            marker = (kind, value if kind in _SCALARS else repr(value))
            if hit is None or hit[0] != marker:
                from amqp.serialization import dumps

                hit = entries[key] = (marker, dumps("F", [{key: value}])[4:])
            parts.append(hit[1])
        table = b"".join(parts)
        return len(table).to_bytes(4, "big") + table

    def encode(self, pending: _Pending) -> bytes:
        """The frames of ``pending``: method, content header, body (split at the frame size)."""
        channel, body = self.channel_id, pending.body
        properties = (
            _JSON_UTF8
            + (pending.table or self._table(pending.headers))
            + bytes((2, pending.priority))  # delivery_mode 2: persistent
            + _shortstr(pending.notification.id)
        )
        header = _HEADER_FRAME.pack(
            2, channel, 14 + len(properties), _BASIC, 0, len(body), _PROPERTY_FLAGS
        )
        parts = [self._method(pending.queue), header, properties, _FRAME_END]
        chunk = self.chunk
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            parts += (_FRAME.pack(3, channel, len(piece)), piece, _FRAME_END)
        return b"".join(parts)


class _TaskTable:
    """The AMQP header table of a task message's headers as :func:`.message.build_message`
    makes them (no ETA, no extra headers), from parts encoded once.

    Of its twenty entries, four differ from one message to the next (the id, the
    root id, ``argsrepr`` and the tenant); the others depend only on the retry
    count, ``ignore_result`` and the origin, and are kept encoded, in their order,
    for each of those (a handful per process). The bytes are those of
    :meth:`_Frames._table` (and py-amqp) for the same headers: tests/transports
    compares them.
    """

    #: The most (retries, ignore_result, origin) kept: they are few (retries count up
    #: to the retry limit, the origin changes on a fork); past this, start afresh.
    LIMIT = 64

    def __init__(self) -> None:
        self._parts: dict[tuple[Any, ...], tuple[bytes, bytes, bytes, bytes]] = {}

    def encode(self, headers: Mapping[str, Any]) -> bytes | None:
        """The table (its length first) of ``headers``; None if they are not
        build_message's own (an extra header, an ETA): :meth:`_Frames._table` then."""
        if len(headers) != _TASK_HEADERS or headers["eta"] is not None:
            return None
        key = (headers["retries"], headers["ignore_result"], headers["origin"])
        parts = self._parts.get(key)
        if parts is None:
            parts = self._encode_parts(headers)
            if len(self._parts) >= self.LIMIT:
                self._parts.clear()
            self._parts[key] = parts
        lead, middle, parent, tail = parts
        task_id = headers["id"].encode("utf-8", "surrogatepass")
        task_id = len(task_id).to_bytes(4, "big") + task_id
        argsrepr = headers["argsrepr"].encode("utf-8", "surrogatepass")
        tenant = headers[TENANT_HEADER].encode("utf-8", "surrogatepass")
        table = b"".join(
            (
                lead,
                task_id,
                middle,
                task_id,
                parent,
                len(argsrepr).to_bytes(4, "big"),
                argsrepr,
                tail,
                len(tenant).to_bytes(4, "big"),
                tenant,
            )
        )
        return len(table).to_bytes(4, "big") + table

    @staticmethod
    def _encode_parts(headers: Mapping[str, Any]) -> tuple[bytes, bytes, bytes, bytes]:
        """The entries before each varying one, encoded, each ending in that one's
        key and type (its value's length and bytes are added per message)."""
        from amqp.serialization import dumps

        parts, run = [], []
        for key in TASK_HEADER_KEYS:
            if key not in _VARYING:
                run.append(key)
                continue
            entries = dumps("F", [{name: headers[name] for name in run}])[4:] if run else b""
            parts.append(bytes(entries) + _shortstr(key) + b"S")
            run = []
        lead, middle, parent, tail = parts  # the tenant's is the last entry (no run after it)
        return lead, middle, parent, tail


@dataclass(slots=True)
class _Pending:
    """One message on its way to the broker, kept until the broker confirms it."""

    notification: Notification
    body: bytes
    headers: dict[str, Any]
    queue: str
    expires_at: float  # monotonic: give up on a confirm after this
    republished: int = 0
    priority: int = 0
    on_lost: Callable[[_Pending, str], None] | None = field(default=None, repr=False)
    #: ``headers`` as an AMQP table, when :class:`_TaskTable` could encode them.
    table: bytes | None = field(default=None, repr=False)


class _Link:
    """One broker connection and channel of the publisher's pool.

    Used by one thread at a time (it is checked out of the pool). In confirm mode
    it keeps every message it wrote until the broker confirms it, and writes them
    again on a new connection when the old one breaks.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self.conn: Any = None
        self.channel: Any = None
        self.confirming = False
        self.next_tag = 1
        self.floor = 1  # every tag below it is confirmed (or refused): see _settled
        self.unconfirmed: dict[int, _Pending] = {}
        self.redo: list[_Pending] = []
        # Task-sent events go on a channel of their own: on the confirming one
        # they would take delivery tags the task messages are counted by.
        self.events_channel: Any = None
        self.declared: set[str] = set()
        # py-amqp (RabbitMQ): task messages are written as ready frames (see _Frames).
        self.frames: _Frames | None = None
        self._write: Callable[[bytes], object] | None = None
        self.fast_read = False  # confirms parsed from the socket (see poll)

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def connect(self) -> None:
        """(Re)connect, declare the queues, and write again what was unconfirmed."""
        p = self._publisher
        kombu = kombu_module()
        conn = kombu.Connection(
            p.url,
            connect_timeout=p.settings.connect_timeout,
            heartbeat=0,
            transport_options=p.transport_options,
        )
        try:
            conn.connect()
            channel = conn.channel()
            # The shared and dead-letter queues now; a tenant's queue when first used
            # (a declare is a round trip each: hundreds of tenants would slow every connect).
            for name in p.queues:
                p.routes.declaration(name)(channel).declare()
            declared = set(p.queues)
            confirming = p.confirms and conn.transport.driver_type == "amqp"
            if confirming:
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
            events_channel = None
            if p.settings.send_events:
                events_channel = conn.channel()
                events_channel.exchange_declare(
                    _EVENT_EXCHANGE, "topic", durable=True, auto_delete=False
                )
        except BaseException:
            _quietly(conn.release)
            raise
        self.conn, self.channel, self.confirming = conn, channel, confirming
        self.declared = declared
        self.frames, self._write, self.fast_read = None, None, False
        if conn.transport.driver_type == "amqp":
            amqp_conn = conn.connection
            self.frames = _Frames(channel.channel_id, amqp_conn.frame_max)
            self._write = amqp_conn.transport.write
            # Plain TCP only (an SSL socket's recv takes no flags), and only while
            # py-amqp keeps its read buffer where poll() hands bytes over.
            self.fast_read = type(amqp_conn.transport).__name__ == "TCPTransport" and isinstance(
                getattr(amqp_conn.transport, "_read_buffer", None), bytes
            )
        self.events_channel = events_channel
        self.next_tag = self.floor = 1
        again = [self.unconfirmed[tag] for tag in sorted(self.unconfirmed)] + self.redo
        self.unconfirmed, self.redo = {}, []
        expires_at = time.monotonic() + p.settings.publish_timeout
        for pending in again:
            pending.republished += 1
            pending.expires_at = expires_at
            self.write(pending)

    def write(self, pending: _Pending) -> int:
        """Write one message; return its delivery tag (0 without confirms)."""
        if pending.queue not in self.declared:
            self._publisher.routes.declaration(pending.queue)(self.channel).declare()
            self.declared.add(pending.queue)
        if self.frames is not None and self._write is not None:
            self._write(self.frames.encode(pending))
        else:
            message = self.channel.prepare_message(
                pending.body,
                pending.priority,
                "application/json",
                "utf-8",
                pending.headers,
                {"correlation_id": pending.notification.id, "delivery_mode": 2},
            )
            self.channel.basic_publish(message, exchange=pending.queue, routing_key=pending.queue)
        if self.events_channel is not None:
            self._task_sent(pending)
        if not self.confirming:
            return 0
        tag = self.next_tag
        self.next_tag += 1
        self.unconfirmed[tag] = pending
        return tag

    def _task_sent(self, pending: _Pending) -> None:
        """Publish Celery's ``task-sent`` event for ``pending`` (transient, unconfirmed)."""
        headers = pending.headers
        hostname = _event_hostname()
        event = {
            "hostname": hostname,
            "utcoffset": _utcoffset(),
            "pid": os.getpid(),
            "clock": next(_CLOCK),
            "type": "task-sent",
            "timestamp": time.time(),
            "uuid": headers["id"],
            "root_id": headers["root_id"],
            "parent_id": headers["parent_id"],
            "name": TASK_NAME,
            "args": headers["argsrepr"],
            "kwargs": headers["kwargsrepr"],
            "retries": headers["retries"],
            "eta": headers["eta"],
            "expires": headers["expires"],
            "queue": pending.queue,
            "exchange": pending.queue,
            "routing_key": pending.queue,
        }
        message = self.events_channel.prepare_message(
            json.dumps(event).encode("utf-8"),
            None,
            "application/json",
            "utf-8",
            {"hostname": hostname},
            {"delivery_mode": 1},
        )
        try:
            self.events_channel.basic_publish(
                message, exchange=_EVENT_EXCHANGE, routing_key="task.sent"
            )
        except Exception as err:
            # A monitoring event must not fail (or repeat) the send; a broken
            # connection shows on the next write.
            get_logger().debug("task_sent_event_failed", error=f"{type(err).__name__}: {err}")

    def _settled(self, tag: int, multiple: bool) -> range:
        """The tags a confirm covers: ``tag``, or with ``multiple`` every tag up to it
        not covered by an earlier multiple confirm (each tag is looked at once,
        however many messages are unconfirmed)."""
        if not multiple:
            return range(tag, tag + 1)
        floor, self.floor = self.floor, max(self.floor, tag + 1)
        return range(floor, tag + 1)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        unconfirmed = self.unconfirmed
        for done in self._settled(tag, multiple):
            unconfirmed.pop(done, None)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        for refused in self._settled(tag, multiple):
            pending = self.unconfirmed.pop(refused, None)
            if pending is not None:
                self.redo.append(pending)

    def check(self) -> None:
        """Raise if the broker has closed the connection; read what confirms have come.

        A write into a socket the peer has closed may still "succeed", so this
        is how a dead connection is noticed before a message is written into it.
        The confirms waiting in the socket are read at the same time: parsed
        here (see :meth:`poll`) they cost the sender less than the background
        reader's taking the connection and the interpreter lock in turn.
        """
        if not self.confirming:
            return
        if self.fast_read:
            # One non-blocking read: the confirms, a close, or nothing (a select
            # first would be a second system call whenever confirms have come).
            self.poll()
            return
        sock = self.conn.connection.transport.sock
        if sock is None:
            raise ConnectionError("the broker connection is closed")
        if len(self.unconfirmed) > 1000 or select.select([sock], [], [], 0)[0]:
            self.poll()

    def poll(self) -> None:
        """Read whatever has arrived (confirms, a close), without blocking.

        Also how a connection the broker has closed is noticed before a message
        is written into it (a write into a closed socket may still "succeed").
        On a plain TCP connection the bytes are read in one go and the confirms
        at their head (``basic.ack`` and ``basic.nack`` frames, 21 bytes each)
        are settled here; from the first other frame on (a ``channel.close``,
        ``connection.blocked``, a frame cut by the read) they are handed to
        py-amqp, which reads them as it would have.
        """
        if self.conn.transport.driver_type != "amqp":
            return
        transport = self.conn.connection.transport
        sock = transport.sock
        if sock is None:
            raise ConnectionError("the broker connection is closed")
        if not self.fast_read:
            while select.select([sock], [], [], 0)[0]:
                self.conn.drain_events(timeout=1.0)
            return
        while True:
            if transport._read_buffer:  # py-amqp's: part of a frame, or frames handed over
                self.conn.drain_events(timeout=1.0)
                continue
            try:
                data = sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                raise ConnectionError("the broker closed the connection")
            settled = self._confirms(data)
            if settled < len(data):
                transport._read_buffer = data[settled:]
            elif len(data) < _READ_SIZE:
                return

    def _confirms(self, data: bytes) -> int:
        """Settle the confirm frames at the head of ``data``; return where they end."""
        offset, size, channel_id = 0, len(data), self.channel.channel_id
        while size - offset >= _CONFIRM.size:
            kind, channel, length, class_id, method, tag, bits, end = _CONFIRM.unpack_from(
                data, offset
            )
            if (kind, channel, length, class_id, end) != (1, channel_id, 13, _BASIC, 0xCE):
                break
            if method == _ACK:
                self._on_ack(tag, bool(bits & 1))
            elif method == _NACK:
                self._on_nack(tag, bool(bits & 1))
            else:
                break
            offset += _CONFIRM.size
        return offset

    def wait_for(self, tag: int, pending: _Pending, deadline: float) -> None:
        """Block until ``tag`` is confirmed; raise _Nacked or TimeoutError."""
        sock = self.conn.connection.transport.sock
        while tag in self.unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the broker did not confirm the message in time")
            if sock is None:
                raise ConnectionError("the broker connection is closed")
            if select.select([sock], [], [], remaining)[0]:
                self.poll()
        if pending in self.redo:
            self.redo.remove(pending)
            raise _Nacked(pending)

    def drop(self) -> None:
        """Forget the connection (it failed); unconfirmed messages stay for ``connect``."""
        conn, self.conn, self.channel = self.conn, None, None
        self.frames, self._write, self.fast_read = None, None, False
        if conn is not None:
            _quietly(conn.release)

    def close(self) -> None:
        self.drop()


class _Nacked(Exception):
    def __init__(self, pending: _Pending) -> None:
        super().__init__("the broker refused the message (nack)")
        self.pending = pending


def _quietly(fn: Callable[[], object]) -> None:
    # Closing a connection that is already broken.
    with suppress(Exception):
        fn()


class Publisher:
    """A pool of :class:`_Link` for one process, and the confirm reader thread.

    ``routes`` chooses each notification's queue (:class:`.message.Routes`); without
    it everything goes to ``[celery] queue``.
    """

    def __init__(
        self,
        settings: CelerySettings,
        *,
        on_lost: Callable[[_Pending, str], None] | None = None,
        ignore_result: bool | None = None,
        routes: Routes | None = None,
    ) -> None:
        self.settings = settings
        self.url = settings.broker_url
        self.confirms = settings.publisher_confirms != "off"
        self.wait_confirms = settings.publisher_confirms == "sync"
        self.routes = routes or Routes(settings.queue, fair=False)
        self.queues = [settings.queue] + (
            [settings.dead_letter_queue] if settings.dead_letter_queue else []
        )
        self.transport_options: dict[str, Any] = {
            "read_timeout": max(settings.connect_timeout, settings.publish_timeout),
            "write_timeout": max(settings.connect_timeout, settings.publish_timeout),
        }
        self.on_lost = on_lost
        self.ignore_result = settings.ignore_result if ignore_result is None else ignore_result
        self._log = get_logger()
        self._origin = process_origin()
        self._table = _TaskTable()
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._closed = False
        self._pid: int | None = None
        self._reset()

    def _reset(self) -> None:
        self._idle: list[_Link] = []
        self._links: list[_Link] = []
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def _check_pid(self) -> None:
        pid = _process.pid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            if self._pid is not None:
                # A forked child must not touch the parent's sockets: start afresh.
                self._reset()
            self._origin = process_origin()
            self._pid = pid
            atexit.register(_close_at_exit, weakref.ref(self))

    # --- the pool ------------------------------------------------------------------

    def _acquire(self, deadline: float) -> _Link:
        with self._lock:
            while not self._idle and len(self._links) >= self.settings.pool_limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._returned.wait(remaining):
                    raise NotQueuedError(
                        f"all {self.settings.pool_limit} broker connections stayed busy for "
                        f"{self.settings.publish_timeout}s; raise celery.pool_limit"
                    )
            if self._idle:
                return self._idle.pop()
            link = _Link(self)
            self._links.append(link)
            return link

    def _release(self, link: _Link) -> None:
        with self._lock:
            self._idle.append(link)
            self._returned.notify()

    # --- publishing ----------------------------------------------------------------

    def publish(
        self,
        notification: Notification,
        *,
        attempt: int = 1,
        countdown: float | None = None,
        queue: str | None = None,
        extra_headers: Mapping[str, Any] | None = None,
        wait: bool | None = None,
    ) -> None:
        """Write the task message for ``notification``; raise EnqueueError if impossible.

        Args:
            attempt: The attempt the message is for (``retries`` = attempt - 1).
            countdown: Seconds before a worker may run it (an ETA).
            queue: Another queue (the dead-letter queue).
            extra_headers: More headers.
            wait: Wait for the broker's confirm (default: the ``sync`` setting).
        """
        if self._closed:
            raise NotQueuedError(
                "the Celery transport is closed",
                tenant_id=notification.tenant_id,
                notification_id=notification.id,
            )
        self._check_pid()
        eta = None
        if countdown is not None and countdown > 0:
            eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=countdown)
        body, headers = build_message(
            notification,
            attempt=attempt,
            eta=eta,
            ignore_result=self.ignore_result,
            origin=self._origin,
        )
        if extra_headers:
            headers.update(extra_headers)
        timeout = self.settings.publish_timeout
        now = time.monotonic()
        priority = 0
        if queue is None:
            queue, priority = self.routes.route(notification, deferred=eta is not None)
        pending = _Pending(
            notification,
            body,
            headers,
            queue,
            now + timeout,
            priority=priority,
            table=None if extra_headers else self._table.encode(headers),
        )
        self._send(pending, now + timeout, self.wait_confirms if wait is None else wait)

    def _send(self, pending: _Pending, deadline: float, wait: bool) -> None:
        """Write ``pending`` (and with ``wait`` see it confirmed) before ``deadline``.

        Raises:
            NotQueuedError: it was never written (no connection could be made),
                or the broker refused every write (nack).
            InDoubtError: it was written, but its confirm never came (the
                connection died or stalled after the write): the broker may
                have it. The same notification id goes out on a retry, so the
                worker that claims it delivers it once.
        """
        link = self._acquire(deadline)
        in_doubt = False  # a write of this message may have reached the broker
        try:
            delay = 0.05
            while True:
                try:
                    if not link.connected:
                        link.connect()
                    else:
                        link.check()
                    in_doubt = True
                    tag = link.write(pending)
                    if wait and tag:
                        link.wait_for(tag, pending, deadline)
                    break
                except _Nacked as err:
                    in_doubt = False  # refused: the broker did not keep it
                    last: BaseException = err
                except Exception as err:
                    link.drop()
                    # This message goes out again by hand below, not by connect().
                    link.unconfirmed = {
                        t: p for t, p in link.unconfirmed.items() if p is not pending
                    }
                    link.redo = [p for p in link.redo if p is not pending]
                    last = err
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._log.error(
                        "enqueue_failed",
                        tenant_id=pending.notification.tenant_id,
                        notification_id=pending.notification.id,
                        error=f"{type(last).__name__}: {last}",
                        in_doubt=in_doubt,
                    )
                    if in_doubt:
                        raise InDoubtError(
                            f"the broker at {self._safe_url()} did not confirm the message "
                            f"within {self.settings.publish_timeout}s; it may be queued "
                            f"(retry with the same idempotency key): {type(last).__name__}: "
                            f"{last}",
                            tenant_id=pending.notification.tenant_id,
                            notification_id=pending.notification.id,
                        ) from last
                    raise NotQueuedError(
                        f"cannot publish to the broker at {self._safe_url()} within "
                        f"{self.settings.publish_timeout}s: {type(last).__name__}: {last}",
                        tenant_id=pending.notification.tenant_id,
                        notification_id=pending.notification.id,
                    ) from last
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)
        finally:
            self._release(link)
        if link.unconfirmed or link.redo:
            self._start_reader()

    def _safe_url(self) -> str:
        kombu = kombu_module()
        safe: str = kombu.utils.url.maybe_sanitize_url(self.url)
        return safe

    # --- the confirm reader ----------------------------------------------------------

    def _start_reader(self) -> None:
        if self._reader is not None:
            return
        with self._lock:
            if self._reader is not None:
                return
            self._reader = threading.Thread(
                target=self._read_confirms, name="tenant-notify-confirms", daemon=True
            )
            self._reader.start()

    def _read_confirms(self) -> None:
        while not self._stop.wait(0.05):
            self.sweep()

    def sweep(self, *, final: bool = False) -> int:
        """Read confirms on the idle links, write again what needs it, give up on
        what is overdue. Returns how many messages are still unconfirmed."""
        with self._lock:
            links = list(self._idle)
        waiting = 0
        for link in links:
            # One link at a time out of the pool, so senders always find the others.
            with self._lock:
                if link not in self._idle:
                    continue  # in a sender's hands: next time
                self._idle.remove(link)
            try:
                waiting += self._tend(link, final=final)
            finally:
                self._release(link)
        return waiting

    def _tend(self, link: _Link, *, final: bool) -> int:
        if not (link.unconfirmed or link.redo):
            return 0
        if link.connected:
            try:
                link.poll()
            except Exception:
                link.drop()
        now = time.monotonic()
        if not final:
            # No confirm in time (a dead connection nobody noticed) or refused:
            # a fresh connection, and everything unconfirmed written again.
            overdue = any(
                p.expires_at <= now and p.republished < 2 for p in link.unconfirmed.values()
            )
            if link.connected and (overdue or link.redo):
                link.drop()
            if not link.connected:
                try:
                    link.connect()
                except Exception as err:
                    link.drop()
                    self._log.warning(
                        "broker_reconnect_failed", error=f"{type(err).__name__}: {err}"
                    )
        # Give up on what is overdue and cannot (or did not, twice) go out again.
        lost: list[_Pending] = []
        for tag, pending in list(link.unconfirmed.items()):
            if final or (
                pending.expires_at <= now and (pending.republished >= 2 or not link.connected)
            ):
                lost.append(link.unconfirmed.pop(tag))
        for pending in list(link.redo):
            if final or pending.expires_at <= now:
                link.redo.remove(pending)
                lost.append(pending)
        for pending in lost:
            self._lost(pending, "the broker never confirmed the message")
        return len(link.unconfirmed) + len(link.redo)

    def _lost(self, pending: _Pending, reason: str) -> None:
        self._log.error(
            "enqueue_unconfirmed",
            tenant_id=pending.notification.tenant_id,
            notification_id=pending.notification.id,
            error=reason,
        )
        callback = pending.on_lost or self.on_lost
        if callback is not None:
            try:
                callback(pending, reason)
            except Exception:
                self._log.exception("enqueue_unconfirmed_record_failed")

    def flush(self, timeout: float) -> bool:
        """Wait until every message written is confirmed; True if all were."""
        deadline = time.monotonic() + timeout
        while True:
            # sweep() counts only the idle links; one in a sender's or the reader's
            # hands still owes its confirms, so the pool as a whole decides.
            self.sweep()
            with self._lock:
                links = list(self._links)
            if not any(link.unconfirmed or link.redo for link in links):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def close(self, timeout: float | None = None) -> None:
        """Wait for outstanding confirms (up to ``timeout``), then close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._pid != _process.pid():
            return
        self.flush(self.settings.publish_timeout if timeout is None else timeout)
        self._stop.set()
        if self._reader is not None:
            self._reader.join(1.0)
        self.sweep(final=True)
        with self._lock:
            for link in self._links:
                link.close()
            self._links.clear()
            self._idle.clear()


def _close_at_exit(ref: weakref.ReferenceType[Publisher]) -> None:
    publisher = ref()
    if publisher is not None:
        publisher.close()
