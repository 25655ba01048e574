"""``tenant-notify worker``: processes that deliver many notifications at once, fairly.

The task messages are Celery's (:mod:`.message`), so ``celery worker`` can run
them too; this is the library's own worker for them, built for deliveries that
wait on the network and for many tenants on one broker:

* :func:`run_worker` (the parent) starts ``processes`` worker processes and
  restarts one that dies. SIGTERM or SIGINT stops them warmly. A parent killed
  outright (SIGKILL) leaves its processes to finish the attempts in hand,
  acknowledge them and exit: the broker hands everything else back.
* Each process (:class:`Consumer`) has one broker connection and one consumer
  per queue of :class:`.message.Routes`: each tenant's queue, the shared one and
  the deferred one. Every consumer has its own prefetch (RabbitMQ's per-consumer
  ``basic.qos``), so each tenant with a backlog has a few messages in the
  process, and the process never holds a tenant's whole backlog.
* Those messages go into a :class:`~tenant_notify._fair.FairQueue`, which
  ``threads`` delivery threads take from in turn by tenant, weighted by the
  tenant's ``weight``; urgent kinds first inside a tenant (and first in the
  tenant's broker queue too: a priority queue).
* Messages with an ETA (retries, delayed sends) are held, unacknowledged, until
  due; one more than :data:`MAX_HOLD` seconds ahead is published again for then
  (RabbitMQ closes a channel that holds a message unacknowledged for too long).
* Acknowledgement is late, as in the Celery worker: a message is acknowledged
  (by the thread that owns the connection) only once its attempt is recorded.
* The connection's thread sleeps in one ``select`` on the broker's socket and a
  socket pair the delivery threads write to when they finish: an
  acknowledgement goes out as soon as its delivery is done, and nothing polls
  (a 5 ms poll was a third of a busy worker's loop). Transports without a
  socket to wait on (not AMQP) are polled as before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import json
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog

from ..._concurrency import declare_concurrency
from ..._fair import FairQueue
from ...config import Settings
from ...dispatcher import Outcome
from ...errors import NotifyError
from ...log import get_logger
from ...metrics import observe_queue_wait, watch_backlog
from ...models import DeliveryState, Notification
from ._delivery import DELIVER, AckFrames, Received, read_delivery
from .message import TASK_NAME, TENANT_HEADER, kombu_module

__all__ = ["MAX_HOLD", "Consumer", "run_worker"]

#: Seconds a worker holds a message with an ETA before publishing it again for later.
MAX_HOLD = 600.0
# Transports without a socket to select on: how long the connection's thread waits
# for a frame while deliveries are running (their acknowledgements go out between
# waits) and while none are.
_BUSY_TICK = 0.005
_IDLE_TICK = 0.25
# With a socket: the longest sleep in select (stop, parent gone and held messages
# are also looked at on every wake-up), and how long a frame that has started to
# arrive may take to arrive whole.
_SELECT_MAX = 1.0
_FRAME_TIMEOUT = 5.0
# The broker's heartbeat is 30 s; kombu wants heartbeat_check at least twice per
# interval. Once a second is plenty, and calling it on every 5 ms tick cost about
# a tenth of a busy worker's CPU (bench/profile_delivery.py worker).
_HEARTBEAT_EVERY = 1.0


class _FrameReader:
    """Frames of a plain TCP py-amqp connection, read by one ``recv`` per wake-up.

    py-amqp's ``blocking_read`` reads one frame in three ``recv`` calls (its header,
    payload and end octet), each after a ``poll``, between two changes of the
    socket's timeout: about eight system calls a frame, three frames a task message.
    This takes what the socket holds in one non-blocking ``recv`` and hands every
    complete frame to the connection's frame handler, as ``blocking_read`` does.

    Between calls, a frame cut short waits in the transport's own read buffer
    (``_read_buffer``, which py-amqp's ``read_frame`` takes from before it reads
    the socket), so py-amqp's own reads (a passive declare, the shutdown's
    ``drain_events``) complete it. That buffer is py-amqp's internal: used only
    when it is there as bytes on a ``TCPTransport`` with a blocking socket (else
    :meth:`for_connection` gives None and the loop reads as py-amqp does); the
    contract is tested in tests/integration/test_consumer_acks.py. The frame
    handler (our ``on_message``) never reads the connection itself.
    """

    _CHUNK = 65536
    _FRAME_END = 0xCE

    def __init__(
        self,
        amqp: Any,
        sock: socket.socket,
        channel: int | None = None,
        on_delivery: Callable[[bytes, bytes, bytes], bool] | None = None,
    ) -> None:
        self._amqp = amqp
        self._transport = amqp.transport
        self._sock = sock
        self._on_frame = amqp.on_inbound_frame
        self._unexpected = _amqp_exceptions().UnexpectedFrame
        # Deliveries on ``channel`` go to ``on_delivery`` (method, header and body
        # payloads) whole; it says False for one py-amqp is to read after all.
        self._channel = channel if on_delivery is not None else None
        self._on_delivery = on_delivery
        self._partial: list[Any] | None = None  # [method, header, body size, chunks, got]

    @classmethod
    def for_connection(
        cls,
        amqp: Any,
        sock: socket.socket,
        channel: int | None = None,
        on_delivery: Callable[[bytes, bytes, bytes], bool] | None = None,
    ) -> _FrameReader | None:
        transport = getattr(amqp, "transport", None)
        if (
            type(transport).__name__ != "TCPTransport"
            or not isinstance(getattr(transport, "_read_buffer", None), bytes)
            or sock.gettimeout() is not None
            or not callable(getattr(amqp, "on_inbound_frame", None))
        ):
            return None
        return cls(amqp, sock, channel, on_delivery)

    def read(self) -> None:
        """Read what the socket holds; hand on every complete frame (raises OSError
        when the broker has closed the connection)."""
        try:
            chunk = self._sock.recv(self._CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            chunk = None  # nothing after all (a spurious wake-up)
        if chunk == b"":
            raise OSError("Server unexpectedly closed connection")
        transport = self._transport
        data: bytes = transport._read_buffer + chunk if chunk else transport._read_buffer
        frames = []
        pos, size_all = 0, len(data)
        while size_all - pos >= 8:
            frame_type, channel, size = _FRAME_HEADER.unpack_from(data, pos)
            end = pos + 7 + size  # the end octet
            if end >= size_all:
                break  # cut short: the rest comes with a later recv
            if data[end] != self._FRAME_END:
                raise self._unexpected(f"Received frame_end {data[end]:#04x} while expecting 0xce")
            frames.append((frame_type, channel, data[pos + 7 : end]))
            pos = end + 1
        transport._read_buffer = data[pos:] if pos else data
        on_frame, ours = self._on_frame, self._channel
        for frame in frames:
            if frame[1] == ours and (self._partial is not None or frame[2][:4] == DELIVER):
                self._delivery_frame(frame)
            else:
                on_frame(frame)

    def hand_over(self) -> None:
        """Give a delivery still gathering to py-amqp's frame handler (before anything
        makes py-amqp read the connection itself: its next frames go to it)."""
        partial, self._partial = self._partial, None
        if partial is None:
            return
        channel = self._channel
        self._on_frame((1, channel, partial[0]))
        if partial[1] is not None:
            self._on_frame((2, channel, partial[1]))
        for chunk in partial[3]:
            self._on_frame((3, channel, chunk))

    def _delivery_frame(self, frame: tuple[int, int, bytes]) -> None:
        """One frame of a delivery on the consumers' channel: gathered until whole."""
        frame_type, channel, payload = frame
        partial = self._partial
        if partial is None:
            if frame_type != 1:
                self._on_frame(frame)  # not a method: py-amqp's to judge
                return
            self._partial = [payload, None, 0, [], 0]
            return
        if partial[1] is None:
            if frame_type != 2:
                raise self._unexpected(f"Received frame {frame_type} while expecting type: 2")
            partial[1] = payload
            partial[2] = int.from_bytes(payload[4:12], "big")
        elif frame_type == 3:
            partial[3].append(payload)
            partial[4] += len(payload)
        else:
            raise self._unexpected(f"Received frame {frame_type} while expecting type: 3")
        if partial[4] < partial[2]:
            return
        self._partial = None
        chunks = partial[3]
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        assert self._on_delivery is not None
        if self._on_delivery(partial[0], partial[1], body):
            self._amqp.bytes_recv += 2 + len(chunks)  # py-amqp's heartbeat check counts frames
            return
        # Not one to read here: py-amqp reads it, as it would have.
        self._on_frame((1, channel, partial[0]))
        self._on_frame((2, channel, partial[1]))
        if chunks:
            self._on_frame((3, channel, body))


_FRAME_HEADER = struct.Struct(">BHI")


def _amqp_exceptions() -> Any:
    import amqp.exceptions

    return amqp.exceptions


class _Acks:
    """Which finished messages one ``basic.ack`` with ``multiple`` may cover.

    Every message received on the connection has its delivery tag here until it
    is settled. Of the finished ones, those from the oldest unsettled tag on,
    without a gap, are acknowledged by one frame with ``multiple``: it covers
    exactly them, since every older tag is settled already. The others (behind
    one still in hand) are acknowledged one by one, at once: none waits.
    """

    def __init__(self) -> None:
        self._unsettled: list[int] = []  # a heap
        self._settled: set[int] = set()  # settled out of order, still in the heap

    def received(self, tag: int) -> None:
        heapq.heappush(self._unsettled, tag)

    def rejected(self, tag: int) -> None:
        self._settled.add(tag)

    def plan(self, finished: Iterable[int]) -> tuple[int | None, int, list[int]]:
        """For the tags of ``finished`` messages, to be acknowledged now: the tag to
        acknowledge with ``multiple`` (None: no run), how many that covers, and the
        tags to acknowledge one by one."""
        done = set(finished)
        unsettled, settled = self._unsettled, self._settled
        run_end: int | None = None
        covered = 0
        while unsettled and (unsettled[0] in done or unsettled[0] in settled):
            tag = heapq.heappop(unsettled)
            if tag in done:
                done.discard(tag)
                run_end, covered = tag, covered + 1
            else:
                settled.discard(tag)
        settled.update(done)
        return run_end, covered, sorted(done)


@dataclass(slots=True)
class _Item:
    message: Any
    generation: int
    body: Mapping[str, Any]
    tenant_id: str
    header_tenant: str | None
    task_id: str | None
    attempt: int
    ready_at: float  # wall clock: queued, or its ETA
    republish_in: float | None = None  # held long enough: publish again for this much later
    seq: int = field(default=0)


class Consumer:
    """One worker process's consumers, fair queue and delivery threads.

    Args:
        runtime: The process's :class:`~.worker.WorkerRuntime` (dispatcher, publisher).
        threads: Deliveries at once.
        prefetch: Messages each queue's consumer may hold (default: ``threads``,
            so a tenant alone keeps every thread busy).
        stop: Set to stop warmly (also set when the parent process is gone).
    """

    def __init__(
        self,
        runtime: Any,
        *,
        threads: int,
        prefetch: int | None = None,
        stop: threading.Event | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings: Settings = runtime.settings
        self.routes = runtime.routes
        self.threads = threads
        self.prefetch = prefetch or max(2, threads)
        self.deferred_prefetch = max(100, 10 * threads)
        self.stop = stop or threading.Event()
        self.parent_pid = parent_pid
        self.urgent_kinds = self.routes.urgent_kinds
        self._log = get_logger()
        self._queue: FairQueue[_Item] = FairQueue(0, self._weight)
        self._done: deque[tuple[_Item, bool]] = deque()
        self._held: list[tuple[float, int, _Item]] = []  # (due, monotonic) ETA messages
        self._seq = itertools.count()
        self._generation = 0
        self._in_flight = 0
        self._acks = _Acks()
        # The frame reader's acknowledgements (plain TCP connections only), and the
        # channel's consumers (whose deliveries it may read).
        self._frames: AckFrames | None = None
        self._reader: _FrameReader | None = None
        self._holding = False
        self._callbacks: Mapping[str, Any] = {}
        self._channel_closing: Callable[[], bool] = lambda: True
        self.acks_sent = 0  # acknowledgement frames sent, and the messages they covered
        self.acks_covered = 0
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._depths: dict[str, int] = {}
        self._depths_at = 0.0
        self._conn: Any = None
        # The delivery threads wake the connection's thread through this pair.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        # The broker queues' depths are read (every 5 s) only for a recorder that exports them.
        self._exports_backlog = hasattr(runtime.dispatcher.metrics, "watch_backlog")
        watch_backlog(runtime.dispatcher.metrics, self)

    def _weight(self, tenant_id: str) -> float:
        return float(self.runtime.dispatcher.tenants.get(tenant_id).weight)

    # --- backlog ---------------------------------------------------------------------

    def backlog(self) -> dict[str, int]:
        """Waiting notifications by tenant: in the broker queues (as last seen, at
        most 5 s old) plus those this process holds; the shared queue is ``"*"``."""
        out = dict(self._depths)
        for tenant_id, count in self._queue.backlog().items():
            out[tenant_id] = out.get(tenant_id, 0) + count
        return out

    def _refresh_depths(self, channel: Any) -> None:
        now = time.monotonic()
        if not self._exports_backlog or now - self._depths_at < 5.0:
            return
        self._depths_at = now
        depths: dict[str, int] = {}
        for name in self.routes.names():
            try:
                _, count, _ = channel.queue_declare(name, passive=True)
            except Exception:
                return  # the channel is closed by the error; the loop reconnects
            tenant = self.routes.tenant_of(name) or "*"
            if count:
                depths[tenant] = depths.get(tenant, 0) + count
        self._depths = depths

    # --- the connection's thread -----------------------------------------------------

    def run(self) -> None:
        """Consume until :attr:`stop` is set, then finish what is in hand and return."""
        declare_concurrency(self.threads)
        for index in range(self.threads):
            thread = threading.Thread(
                target=self._work, name=f"tenant-notify-delivery-{index}", daemon=True
            )
            thread.start()
            self._workers.append(thread)
        try:
            while not self.stop.is_set():
                try:
                    self._consume()
                except Exception as err:
                    if self.stop.is_set():
                        break
                    self._log.warning(
                        "worker_connection_lost", error=f"{type(err).__name__}: {err}"
                    )
                    self._forget_connection()
                    self.stop.wait(1.0)
        finally:
            self._shutdown()

    def _consume(self) -> None:
        kombu = kombu_module()
        celery = self.settings.celery
        conn = kombu.Connection(
            celery.broker_url, connect_timeout=celery.connect_timeout, heartbeat=30
        )
        conn.connect()
        self._conn = conn
        self._generation += 1
        self._acks = _Acks()
        self._frames, self._holding = None, False
        channel = conn.channel()
        consumers = []
        for name in self.routes.names():
            queue = self.routes.declaration(name)(channel)
            queue.declare()
            prefetch = self.deferred_prefetch if name == self.routes.deferred else self.prefetch
            # Per consumer on RabbitMQ (global=False): each queue gets its own share.
            channel.basic_qos(0, prefetch, False)
            consumer = kombu.Consumer(
                channel,
                queues=[queue],
                # The raw message: the body is read here with the standard library's
                # JSON (kombu's decoder, with its object hook for its own types,
                # was a tenth of a worker's CPU per message).
                on_message=self._on_message,
                accept=["json"],
                auto_declare=False,
            )
            consumer.consume()
            consumers.append(consumer)
        self._log.info("worker_ready", queues=len(consumers), threads=self.threads, pid=os.getpid())
        amqp = conn.connection
        sock = getattr(amqp, "sock", None)
        if isinstance(sock, socket.socket) and hasattr(amqp, "blocking_read"):
            self._select_loop(conn, channel, amqp, sock)
        else:
            self._poll_loop(conn, channel)
        for consumer in consumers:
            try:
                consumer.cancel()
            except Exception:
                self._log.debug("worker_cancel_failed", exc_info=True)

    def _housekeeping(self, conn: Any, channel: Any, next_heartbeat: float) -> float:
        """Acks and due messages on every wake-up; once a second the heartbeat, the
        depths and the parent (a system call each wake-up cost 2.5% of a busy worker).
        Returns when to do the latter again."""
        self._settle()
        if self._held:
            self._release_due()
        now = time.monotonic()
        if now < next_heartbeat:
            return next_heartbeat
        if self._reader is not None:
            self._reader.hand_over()  # the depths' declares have py-amqp read the socket
        conn.heartbeat_check()
        self._refresh_depths(channel)
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._log.warning("worker_parent_gone", pid=os.getpid())
            self.stop.set()
        return now + _HEARTBEAT_EVERY

    def _poll_loop(self, conn: Any, channel: Any) -> None:
        """A transport without a socket: wait for frames on a short tick while busy."""
        next_heartbeat = 0.0
        while not self.stop.is_set():
            busy = self._in_flight or self._done
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=_BUSY_TICK if busy else _IDLE_TICK)
            next_heartbeat = self._housekeeping(conn, channel, next_heartbeat)

    def _select_loop(self, conn: Any, channel: Any, amqp: Any, sock: socket.socket) -> None:
        """Sleep until the broker sends a frame or a delivery finishes, then settle.

        py-amqp reads a socket exactly as far as the frame it wants, so what select
        reports readable is all that is waiting (but for an SSL socket's own buffer,
        and a frame cut short, which py-amqp keeps: both looked at below).
        """
        selector = selectors.DefaultSelector()
        ready_now = selectors.DefaultSelector()
        try:
            selector.register(sock, selectors.EVENT_READ, "broker")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            ready_now.register(sock, selectors.EVENT_READ)
            pending = getattr(sock, "pending", None)
            transport = amqp.transport
            reader = self._reader = _FrameReader.for_connection(
                amqp, sock, channel.channel_id, self._on_delivery
            )
            if reader is not None:
                self._frames = AckFrames(amqp, channel.channel_id)
                self._callbacks = channel.callbacks
                self._channel_closing = lambda: bool(channel.is_closing)
            next_heartbeat = 0.0
            while not self.stop.is_set():
                timeout = max(0.0, min(_SELECT_MAX, next_heartbeat - time.monotonic()))
                if self._held:
                    timeout = min(timeout, max(0.0, self._held[0][0] - time.monotonic()))
                if self._done:
                    timeout = 0.0
                readable = False
                for key, _ in selector.select(timeout):
                    if key.data == "wake":
                        self._clear_wake()
                    else:
                        readable = True
                self._wake_pending = False  # before settling: a later finish writes again
                if reader is not None and readable:
                    # All that has come, in one recv (a frame cut short waits for
                    # the rest: the socket turns readable again).
                    reader.read()
                    readable = False
                while readable:
                    # One frame at a time (a heartbeat is a frame with no method).
                    amqp.blocking_read(_FRAME_TIMEOUT)
                    readable = bool(
                        (pending is not None and pending())
                        or getattr(transport, "_read_buffer", b"")
                        or ready_now.select(0)
                    )
                next_heartbeat = self._housekeeping(conn, channel, next_heartbeat)
        finally:
            if self._reader is not None:
                self._reader.hand_over()  # py-amqp reads from here on (cancel, shutdown)
            self._reader = None
            selector.close()
            ready_now.close()

    def _clear_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass

    def wake(self) -> None:
        """Wake the connection's thread (a delivery finished, or :attr:`stop` was set)."""
        if self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _on_delivery(self, method: bytes, header: bytes, body: bytes) -> bool:
        """A whole delivery from the frame reader: a task message of ours is read here
        (:mod:`._delivery`); False for py-amqp and kombu to read it as before."""
        read = read_delivery(method, header)
        if read is None or self._frames is None:
            return False
        consumer_tag, tag, content_type, encoding, headers = read
        if (
            consumer_tag not in self._callbacks  # not one of this channel's consumers
            or self._channel_closing()  # py-amqp drops deliveries then
            or content_type != "application/json"
            or encoding not in (None, "utf-8")
            or "compression" in headers
            # JSON as py-amqp's UTF-8 text of it reads (no BOM, not UTF-16 or 32).
            or body[:1] != b"["
            or b"\0" in body[:4]
            or b"__type__" in body
        ):
            return False
        self._on_message(Received(tag, headers, body, self._frames))
        return True

    def _on_message(self, message: Any) -> None:
        headers = message.headers or {}
        try:
            if headers.get("task") != TASK_NAME:
                raise ValueError(f"not a {TASK_NAME} message")
            body = _decode(message, headers)
            args = body[0]
            data = args[0]
            tenant_id = str(data["tenant_id"])
        except Exception as err:
            # Not ours, or damaged: nothing can deliver it. Say so, drop it.
            self._log.error("task_message_unreadable", error=f"{type(err).__name__}: {err}")
            message.reject(requeue=False)
            return
        now = time.time()
        ready_at = now
        eta = headers.get("eta")
        if eta:
            try:
                ready_at = dt.datetime.fromisoformat(eta).timestamp()
            except (TypeError, ValueError):
                ready_at = now
        item = _Item(
            message=message,
            generation=self._generation,
            body=data,
            tenant_id=tenant_id,
            header_tenant=headers.get(TENANT_HEADER),
            task_id=headers.get("id"),
            attempt=int(headers.get("retries") or 0) + 1,
            ready_at=ready_at,
            seq=next(self._seq),
        )
        self._acks.received(message.delivery_tag)
        wait = ready_at - now
        if wait > 0:
            hold = min(wait, MAX_HOLD)
            if wait > MAX_HOLD:
                item.republish_in = wait - MAX_HOLD
            heapq.heappush(self._held, (time.monotonic() + hold, item.seq, item))
            return
        self._enqueue(item)

    def _enqueue(self, item: _Item) -> None:
        urgent = str(item.body.get("kind")) in self.urgent_kinds
        with self._lock:
            self._in_flight += 1
        self._queue.put(item.tenant_id, item, urgent=urgent)

    def _release_due(self) -> None:
        now = time.monotonic()
        while self._held and self._held[0][0] <= now:
            _, _, item = heapq.heappop(self._held)
            self._enqueue(item)

    def _settle(self) -> None:
        """Acknowledge (or hand back) what the delivery threads have finished (:class:`_Acks`)."""
        if not self._done:
            return
        acks: dict[int, _Item] = {}
        try:
            while self._done:
                item, requeue = self._done.popleft()
                with self._lock:
                    self._in_flight -= 1
                if item.generation != self._generation:
                    continue  # its connection is gone: the broker has handed it back already
                tag = item.message.delivery_tag
                if requeue:
                    self._send(item.message, "reject", requeue=True)
                    self._acks.rejected(tag)
                else:
                    acks[tag] = item
            if not acks:
                return
            run_end, covered, singles = self._acks.plan(acks)
            if run_end is not None:
                self._send(acks[run_end].message, "ack", multiple=covered > 1)
            for tag in singles:
                self._send(acks[tag].message, "ack")
            self.acks_sent += (run_end is not None) + len(singles)
            self.acks_covered += len(acks)
        finally:
            self._flush_frames()  # every frame of this settling goes out now

    def _send(self, message: Any, method: str, **kwargs: Any) -> None:
        """Acknowledge or reject ``message``. The frames of the reader's messages
        (:class:`._delivery.Received`) wait to go out together (:meth:`_flush_frames`);
        those before a kombu message's go first, so the frames keep their order (a
        ``multiple`` acknowledgement must never overtake a rejection it would cover)."""
        frames = self._frames
        try:
            if isinstance(message, Received) and frames is not None:
                if not self._holding:
                    self._holding = True
                    frames.hold()
                getattr(message, method)(**kwargs)
                return
            self._flush_frames()
            getattr(message, method)(**kwargs)
        except Exception as err:
            # A broken channel: the broker redelivers it, the claim skips it.
            self._log.warning("task_ack_failed", error=f"{type(err).__name__}: {err}")

    def _flush_frames(self) -> None:
        if not self._holding:
            return
        self._holding = False
        try:
            assert self._frames is not None
            self._frames.release()
        except Exception as err:
            self._log.warning("task_ack_failed", error=f"{type(err).__name__}: {err}")

    def _forget_connection(self) -> None:
        # What this process holds of the old connection goes back to the broker with it.
        dropped = self._queue.drain()
        with self._lock:
            self._in_flight -= len(dropped)
        self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.release()
            except Exception:
                self._log.debug("worker_release_failed", exc_info=True)

    def _shutdown(self) -> None:
        """Hand back what has not started, finish what has, acknowledge it, close."""
        not_started = self._queue.drain()
        with self._lock:
            self._in_flight -= len(not_started)
        conn = self._conn
        deadline = time.monotonic() + self.settings.celery.time_limit
        while self._in_flight > 0 and time.monotonic() < deadline:
            if conn is not None:
                try:
                    conn.drain_events(timeout=0.05)
                except TimeoutError:
                    pass
                except Exception:
                    conn = None
            else:
                time.sleep(0.05)
            if conn is not None:
                self._settle()
            else:
                self._done.clear()
        if conn is not None:
            self._settle()
        self._queue.wake(len(self._workers))
        for thread in self._workers:
            thread.join(1.0)
        self._held.clear()
        self._conn = None
        if conn is not None:
            try:
                conn.release()  # unacknowledged messages go back to their queues
            except Exception:
                self._log.debug("worker_release_failed", exc_info=True)
        self._wake_r.close()
        self._wake_w.close()
        self._log.info("worker_stopped", ack_frames=self.acks_sent, acknowledged=self.acks_covered)

    # --- delivery threads ------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            requeue = False
            try:
                requeue = self._run(item)
            except Exception:
                self._log.exception("worker_delivery_error")
                requeue = True
            finally:
                self._done.append((item, requeue))
                self._queue.task_done()
                self.wake()

    def _run(self, item: _Item) -> bool:
        """Deliver one message; True to hand it back to the broker."""
        runtime = self.runtime
        if item.republish_in is not None:
            notification = Notification.from_dict(item.body)
            runtime.publisher.publish(
                notification, attempt=item.attempt, countdown=item.republish_in, wait=True
            )
            return False
        observe_queue_wait(
            runtime.dispatcher.metrics,
            tenant_id=item.tenant_id,
            seconds=time.time() - item.ready_at,
        )
        return deliver_message(
            runtime,
            item.body,
            header_tenant=item.header_tenant,
            task_id=item.task_id,
            attempt=item.attempt,
        ).requeue


def _decode(message: Any, headers: Mapping[str, Any]) -> Any:
    """A task message's body: plain JSON read directly; anything else as kombu would."""
    raw = message.body
    if (
        message.content_type == "application/json"
        and "compression" not in headers
        and isinstance(raw, bytes | str)
        and ("__type__" not in raw if isinstance(raw, str) else b"__type__" not in raw)
    ):
        return json.loads(raw)
    # kombu's own JSON types, compression, other content types (refused unless JSON).
    body = message.decode()
    return json.loads(body) if isinstance(body, bytes | str) else body


class Delivery(NamedTuple):
    """What :func:`deliver_message` did with one task message."""

    #: Hand the message back to the broker: the shared store or the broker was out
    #: of reach (``error``); another delivery will find the claim.
    requeue: bool
    #: The dispatcher's outcome; None when the message was refused (its headers
    #: disagree with its body: dead-lettered) or handed back.
    outcome: Outcome | None
    error: NotifyError | None = None


def deliver_message(
    runtime: Any,
    data: Mapping[str, Any],
    *,
    header_tenant: str | None,
    task_id: str | None,
    attempt: int,
) -> Delivery:
    """One attempt of a task message's notification, for both workers.

    ``tenant-notify worker``'s threads and the Celery task both run it: refuse a
    message whose headers disagree with its body, publish the retry the
    dispatcher asks for (confirmed) before the message is acknowledged,
    dead-letter a failed one.
    """
    log = get_logger()
    notification = Notification.from_dict(data)

    def ids() -> Any:
        return structlog.contextvars.bound_contextvars(
            tenant_id=notification.tenant_id, notification_id=notification.id
        )

    if header_tenant != notification.tenant_id or task_id != notification.id:
        # Never deliver under an identity the message does not agree on.
        with ids():
            log.error("task_message_mismatch", header_tenant=header_tenant, task_id=task_id)
            runtime.dead_letter(notification, 1, "the message's headers do not match its body")
        return Delivery(False, None)
    try:
        # The dispatcher binds the ids for its own log lines; the rest here binds them
        # only on the paths that log or publish (binding costs on every message).
        outcome = runtime.dispatcher.deliver(notification, attempt)
        if outcome.retry_in is not None:
            # A wait for a limit or a paused account (deferred) runs the same attempt again.
            again = attempt if outcome.deferred else attempt + 1
            with ids():
                runtime.publisher.publish(
                    notification, attempt=again, countdown=outcome.retry_in, wait=True
                )
            return Delivery(False, outcome)
        status = outcome.status
        # (A repeat found it finished by an earlier delivery, which dead-lettered it.)
        if status is not None and status.state is DeliveryState.FAILED and not outcome.repeat:
            with ids():
                runtime.dead_letter(notification, attempt, status.error or "failed")
    except NotifyError as err:
        with ids():
            log.warning("task_requeued", error=f"{type(err).__name__}: {err}", attempt=attempt)
        time.sleep(1.0)
        return Delivery(True, None, err)
    return Delivery(False, outcome)


# --- the parent ---------------------------------------------------------------------------


def run_worker(
    settings: Settings,
    *,
    processes: int | None = None,
    threads: int | None = None,
    runtime_factory: Callable[[Settings], Any] | None = None,
    loglevel: str = "INFO",
) -> int:
    """Run ``processes`` worker processes of ``threads`` deliveries each until stopped.

    Returns 0 after a warm stop (SIGTERM, SIGINT).
    """
    count = processes or settings.celery.concurrency or os.cpu_count() or 1
    per_process = threads or settings.celery.threads
    _setup_logging(loglevel)
    log = get_logger()
    context = multiprocessing.get_context("fork")
    stopping = threading.Event()
    children: dict[int, Any] = {}

    def start(index: int) -> None:
        child = context.Process(
            target=_child_main,
            args=(settings, per_process, os.getpid(), runtime_factory),
            name=f"tenant-notify-worker-{index}",
            daemon=False,
        )
        child.start()
        children[index] = child

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            start(index)
        log.info("worker_started", processes=count, threads=per_process, pid=os.getpid())
        print(f"tenant-notify worker ready: {count} x {per_process}", file=sys.stderr, flush=True)
        while not stopping.is_set():
            stopping.wait(0.5)
            for index, child in list(children.items()):
                if not child.is_alive() and not stopping.is_set():
                    log.error("worker_process_died", exitcode=child.exitcode, pid=child.pid)
                    start(index)
        for child in children.values():
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + settings.celery.time_limit + 5
        for child in children.values():
            child.join(max(0.1, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _child_main(
    settings: Settings,
    threads: int,
    parent_pid: int,
    runtime_factory: Callable[[Settings], Any] | None,
) -> None:
    from .worker import WorkerRuntime, build_dispatcher

    stop = threading.Event()
    consumer: Consumer | None = None

    def on_term(*_: Any) -> None:
        stop.set()
        if consumer is not None:
            consumer.wake()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    if runtime_factory is not None:
        runtime = runtime_factory(settings)
    else:
        runtime = WorkerRuntime(settings, build_dispatcher(settings))
    consumer = Consumer(runtime, threads=threads, stop=stop, parent_pid=parent_pid)
    consumer.run()
    runtime.publisher.close()
    runtime.dispatcher.providers.close()


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
        )
        root.addHandler(handler)
