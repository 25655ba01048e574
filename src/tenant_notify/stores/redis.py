"""Redis stores: statuses and idempotency keys shared by every process.

With these, ``notify.status(id)`` and ``receipt.wait()`` work in the web process
while a worker on another machine delivers, and a delivery claim taken by one
worker is seen by all (so a message redelivered after a crash is not sent again).
The ``celery`` transport uses them by default; install with
``pip install 'tenant-notify[redis]'``.

Keys (all under ``[redis] key_prefix``, default ``tenant_notify:``)::

    status:<id>                    latest DeliveryStatus as JSON, expires after [stores] retention
    pmid:<provider>:<message id>   notification id, for delivery webhooks (same expiry)
    final:<id>                     pub/sub channel: published when a status turns final
    idem:<key>                     reservation (notification id), lease or done marker,
                                   expiring with its TTL ([idempotency] ttl, lease)

Every key expires: nothing about a notification outlives ``[stores] retention``.

Every Redis failure is raised as :class:`~tenant_notify.errors.StoreUnavailableError`.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, NoReturn, Self, TypeVar

from .. import _process
from .._json import compact, isoformat, quote
from ..config import Settings
from ..errors import MissingDependencyError, StoreUnavailableError
from ..log import get_logger
from ..models import DeliveryState, DeliveryStatus
from .base import Claim, ClaimState

if TYPE_CHECKING:
    import redis

__all__ = ["RedisIdempotencyStore", "RedisStatusStore", "connect", "redis_url"]

_T = TypeVar("_T")
_DEFAULT_URL = "redis://localhost:6379/0"
_DONE = "\0done"
_LEASE = "\0lease:"


def _redis_module() -> Any:
    try:
        import redis
    except ModuleNotFoundError as err:
        raise MissingDependencyError("redis", "redis", key="redis.url") from err
    return redis


def redis_url(settings: Settings) -> str:
    """``[redis] url``, else the Celery result backend when it is Redis, else local Redis."""
    if settings.redis.url:
        return settings.redis.url
    backend = settings.celery.result_backend or ""
    if backend.startswith(("redis://", "rediss://", "unix://")):
        return backend
    return _DEFAULT_URL


def connect(settings: Settings) -> redis.Redis:
    """A client with its own connection pool, configured from ``settings``."""
    module = _redis_module()
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    client: redis.Redis = module.Redis.from_url(
        redis_url(settings),
        socket_timeout=settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.socket_timeout,
        max_connections=settings.redis.max_connections,
        health_check_interval=30,
        # A blip is retried, briefly: a send must fail fast when Redis is down.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        decode_responses=True,
    )
    return client


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _hash(flat: list[Any]) -> dict[Any, Any]:
    """HGETALL's reply to a script (field, value, field, value, ...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _unanswered(err: BaseException, unconfirmed: Sequence[str] = ()) -> StoreUnavailableError:
    """Redis's silence, naming the keys of the writes it may or may not have made."""
    detail = f"; unconfirmed writes: {', '.join(unconfirmed)}" if unconfirmed else ""
    return StoreUnavailableError(f"Redis did not answer: {type(err).__name__}: {err}{detail}")


def _raise(error: tuple[str, BaseException]) -> NoReturn:
    """Raise a failure kept as ``(message, cause)`` (a lost connection's, for each
    write it owed) as the caller's StoreUnavailableError."""
    message, cause = error
    raise StoreUnavailableError(message) from cause


def _resp(conn: Any, args: tuple[Any, ...]) -> list[bytes]:
    """``args`` as one RESP command: the bytes redis-py's packer writes for them.

    The writer's commands are strings and integers, which this packs in one go
    (redis-py's packer costs a send several microseconds more); anything else
    (and a command name with a space, which redis-py splits) is left to redis-py.
    """
    encoder = conn.encoder
    encoding, errors = encoder.encoding, encoder.encoding_errors
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is str and (arg is not args[0] or " " not in arg):
            raw = arg.encode(encoding, errors)
        elif kind is int:
            raw = b"%d" % arg
        else:
            packed: list[bytes] = conn.pack_command(*args)
            return packed
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return [b"".join(out)]


class _Owed:
    """One write whose reply has not been read yet."""

    __slots__ = ("done", "error", "key", "on_reply", "reply", "seq", "waited", "waiters")

    def __init__(self, key: str, on_reply: Callable[[Any], None] | None, seq: int) -> None:
        self.key = key
        self.on_reply = on_reply
        self.seq = seq  # its place among the writer's writes (for handing the reading over)
        self.waited = False  # a call waits for it: a refusal is that call's to raise
        self.done = False  # its reply read, or its connection lost (error)
        self.reply: Any = None
        self.error: tuple[str, BaseException] | None = None
        self.waiters: list[Any] | None = None  # locks of the threads waiting for it


class _Link:
    """One connection of a writer and the writes whose replies it still owes."""

    __slots__ = ("broken", "conn", "owed", "refused")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.owed: deque[_Owed] = deque()  # in the order they were written
        # The first refused write nobody waited for, raised by the next call or flush.
        self.refused: tuple[str, BaseException] | None = None
        self.broken: tuple[str, BaseException] | None = None  # why it was given up


class _Writer:
    """One process's ordered, pipelined write connection for one Redis client.

    ``send`` writes a command and returns without waiting for its reply; ``call``
    writes one and waits for its own reply. Redis carries out one connection's
    commands in the order they were written, so a status written with ``send``
    never lands after one written later, and once ``call`` or ``flush`` returns,
    every earlier write has been carried out. The stores flush before a command
    that must see their own writes (a read, a claim), so a process always sees
    what it wrote. A delivery pays for one wait where it used to pay for three
    (its ``sending`` status and its completed claim ride along with its final
    status).

    Writing and reading are apart: the write lock is held only while a command
    is written, never while a reply is waited for, so a write (a delivery's
    completion, the moment its provider answered) goes to Redis at once, however
    many threads are waiting for replies. Replies come back in the order of the
    writes; one waiting thread at a time (the one whose turn it is to read) reads
    them, hands each to its writer (the thread waiting for it, the ``on_reply``
    of a ``send``) and, once its own has come, passes the turn to the next
    thread still waiting. Nobody reads for a ``send``: its reply is read with a
    later one, or once :data:`_MAX_OWED` are unread.

    ``send_later`` (a caller's first ``queued`` status) does not even write: the
    command waits in the writer, to be written together with others in one
    system call, by the first of: :data:`_BATCH` of them buffered, any other
    command or flush of this writer (so the order stays that of the calls, and
    a read in the process sees it), or :data:`_LINGER` seconds later, written by
    the writer's flusher thread. A caller's send then costs no system call (and
    no wake-up of Redis) on Redis's side; the status is in Redis a few
    milliseconds later, or never if the process dies first (the notification is
    queued all the same, and a worker records its statuses from there).

    The flusher is woken by the first command buffered after a quiet spell
    (:data:`_IDLE` seconds with nothing buffered); while commands keep coming it
    looks on its own timer, every :data:`_LINGER` seconds at most, so a caller
    that keeps sending never wakes it (each wake-up is a thread that wants the
    interpreter lock, and a hand-off of that lock, in the caller's process).

    Both stores built on one client share its writer (see :func:`_writer_for`).
    redis-py's health check (a PING before a command on a connection that has been
    quiet) runs only while no reply is owed: its read would take a write's reply
    (and nobody else reads then).
    """

    _BATCH = 64  # buffered commands written in one go once there are this many
    _LINGER = 0.005  # seconds a buffered command waits at most for others
    _IDLE = 0.05  # seconds with nothing buffered after which the flusher waits to be woken
    # A write past this many unread replies first reads the older half of them (they
    # came long ago): the replies of sends nobody waits for do not pile up for ever.
    _MAX_OWED = 1000

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        module = _redis_module()
        self._errors: tuple[type[BaseException], ...] = (module.RedisError,)
        self._refusal: type[BaseException] = module.ResponseError
        self._lock = threading.Lock()  # writing (and the connection, the buffer)
        self._reading = threading.Lock()  # held by the thread whose turn it is to read
        self._state = threading.Lock()  # replies handed over, waiters registered
        self._link: _Link | None = None
        self._pid = 0
        self._seq = 0  # writes ever made (numbers every _Owed)
        self._waiting: set[_Owed] = set()  # writes some thread is waiting for
        # send_later's commands, packed, not written yet; with their keys and callbacks.
        self._buffer: list[bytes] = []
        self._buffered: list[tuple[str, Callable[[Any], None] | None]] = []
        self._due = threading.Event()  # set while the flusher is awake (or is to end)
        self._awake = False  # the flusher looks on its own timer: no need to wake it
        self._buffered_at = 0.0  # when the oldest buffered command was (monotonic)
        self._flusher_pid = 0
        self._closed = False
        if hasattr(os, "register_at_fork"):
            # A fork while the flusher (or any thread) held a lock would leave
            # the child's copy locked for ever; the child starts afresh.
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _forked(ref))

    @property
    def _conn(self) -> Any:
        """The connection writes go to (None before the first, or after a failure)."""
        link = self._link
        return None if link is None else link.conn

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._state = threading.Lock()
        self._due = threading.Event()
        # The parent's connection, its owed replies and its buffered writes stay its own.
        self._link, self._waiting = None, set()
        self._buffer, self._buffered = [], []  # the parent's, to write
        self._flusher_pid = 0
        self._awake = False

    # --- writing (the write lock held only for the write) ------------------------

    def send(self, key: str, *args: Any, on_reply: Callable[[Any], None] | None = None) -> None:
        """Write a command on ``key``; its reply is read later (errors surface then).

        ``on_reply`` is called with the reply once it is read (never when the
        connection fails first).
        """
        with self._lock:
            link = self._connection()
            self._write(link, _resp(link.conn, args), [(key, on_reply)])
        self._bound(link)

    def send_later(
        self, key: str, *args: Any, on_reply: Callable[[Any], None] | None = None
    ) -> None:
        """Like :meth:`send`, but the command may wait to be written with others.

        It is written within :data:`_LINGER` seconds, and before any later
        command of this writer (see the class). The connection is made now: a
        Redis that refuses it raises here, before the caller goes on.
        """
        now = time.monotonic()
        with self._lock:
            link = self._connection()
            self._buffer += _resp(link.conn, args)
            self._buffered.append((key, on_reply))
            if len(self._buffered) == 1:
                self._buffered_at = now
                if not self._awake:
                    self._start_flusher()
                    self._awake = True
                    self._due.set()
                return
            if len(self._buffered) < self._BATCH and now - self._buffered_at < self._LINGER / 2:
                return
            # A sender that keeps sending writes its own buffer (half the linger,
            # so the flusher, a thread taking the interpreter lock in turn with
            # it, seldom has to).
            self._write(link, [], [])
        self._bound(link)

    def call(self, key: str, *args: Any) -> Any:
        """Write a command on ``key`` and wait: every earlier write is done when this returns."""
        with self._lock:
            link = self._connection()
            entry = self._write(link, _resp(link.conn, args), [(key, None)], waited=True)
        self._wait(link, entry)
        if entry.error is not None:
            _raise(entry.error)
        if isinstance(entry.reply, self._refusal):
            raise StoreUnavailableError(
                f"Redis refused the write of {entry.key}: {entry.reply}"
            ) from entry.reply
        self._raise_refused(link)
        return entry.reply

    def flush(self) -> None:
        """Write what is buffered, and wait until every write made so far is done."""
        link = self._link
        if not self._buffer and (link is None or (not link.owed and link.refused is None)):
            return
        with self._lock:
            link = self._link
            if link is None or self._pid != _process.pid():
                return
            if self._buffer:
                self._write(link, [], [])
            last = link.owed[-1] if link.owed else None
        if last is not None:
            self._wait(link, last)
            if last.error is not None:
                _raise(last.error)
        self._raise_refused(link)

    def close(self) -> None:
        with suppress(StoreUnavailableError):
            self.flush()
        with self._lock:
            self._closed = True
            self._due.set()  # the flusher finds it closed and ends
            link, self._link = self._link, None
            if link is not None and self._pid == _process.pid():
                self._client.connection_pool.release(link.conn)

    def _write(
        self,
        link: _Link,
        packed: list[bytes],
        writes: list[tuple[str, Callable[[Any], None] | None]],
        *,
        waited: bool = False,
    ) -> _Owed:
        """Write what is buffered and ``packed`` in one system call, owing a reply to
        each of them (``writes``); the write lock held. Returns the last one owed
        (``waited``: a call waits for it)."""
        if self._buffer:
            packed, writes = self._buffer + packed, self._buffered + writes
            self._buffer, self._buffered = [], []
        entries = []
        for key, on_reply in writes:
            entries.append(_Owed(key, on_reply, self._seq))
            self._seq += 1
        entries[-1].waited = waited
        try:
            # (The replies are read after the write: no reply can come before
            # its command is owed, since a reader reads only replies owed.)
            link.conn.send_packed_command([b"".join(packed)], check_health=not link.owed)
        except self._errors as err:
            link.owed.extend(entries)  # named by _broken: they may have gone out
            raise self._broken(link, err) from err
        link.owed.extend(entries)
        return entries[-1]

    def _start_flusher(self) -> None:
        pid = _process.pid()
        if self._flusher_pid == pid:
            return
        self._flusher_pid = pid
        # The thread holds the writer weakly; a writer collected unclosed wakes it to end.
        weakref.finalize(self, self._due.set)
        threading.Thread(
            target=_flush_buffered,
            args=(weakref.ref(self), self._due),
            name="tenant-notify-redis",
            daemon=True,
        ).start()
        global _AT_EXIT_PID
        if pid != _AT_EXIT_PID:
            _AT_EXIT_PID = pid
            atexit.register(_flush_at_exit)

    def _flusher_turn(self) -> float | None:
        """The flusher thread's turn: write what waited for :data:`_LINGER` seconds.

        Returns how long to sleep before the next turn, or None after a quiet
        spell: the flusher then waits to be woken (see the class).
        """
        now = time.monotonic()
        with self._lock:
            link = self._link
            if not self._buffer or link is None or self._pid != _process.pid():
                if now - self._buffered_at < self._IDLE:
                    return self._LINGER
                self._awake = False
                self._due.clear()
                return None
            left = self._buffered_at + self._LINGER - now
            if left > 0:
                return left  # a sender that went on sending writes it meanwhile
            try:
                self._write(link, [], [])
            except StoreUnavailableError as err:
                # The statuses are lost with the connection (the notifications
                # are queued all the same); the next command connects afresh.
                get_logger().warning("redis_buffered_writes_lost", error=str(err))
                return self._LINGER
        try:
            self._bound(link)
        except StoreUnavailableError as err:
            get_logger().warning("redis_buffered_writes_lost", error=str(err))
        return self._LINGER

    def _connection(self) -> _Link:
        link = self._link
        if link is None or self._pid != _process.pid():
            if self._pid != _process.pid():
                # After a fork the parent's connection (and its owed replies and
                # buffered writes) stay with the parent.
                self._buffer, self._buffered = [], []
            try:
                conn = self._client.connection_pool.get_connection()
            except self._errors as err:
                unknown = [key for key, _ in self._buffered]
                self._link, self._buffer, self._buffered = None, [], []
                raise _unanswered(err, unknown) from err
            self._pid = _process.pid()
            link = self._link = _Link(conn)
        return link

    # --- reading (one thread at a time, never holding the write lock) ----------

    def _wait(self, link: _Link, entry: _Owed) -> None:
        """Until ``entry`` is done: read the replies if it is nobody's turn, else wait
        to be woken (when it is done, or the turn is passed on)."""
        reading = self._reading
        while not entry.done:
            if reading.acquire(blocking=False):
                self._read_turn(link, entry)
                return
            wake = threading.Lock()
            wake.acquire()
            with self._state:
                if entry.done:
                    return
                if entry.waiters is None:
                    entry.waiters = []
                entry.waiters.append(wake)
                self._waiting.add(entry)
            # Again, now that it is registered: a reader that left before saw
            # no one to pass the turn to.
            if reading.acquire(blocking=False):
                self._read_turn(link, entry)
                return
            wake.acquire()

    def _bound(self, link: _Link) -> None:
        """Read the older half of the replies owed once :data:`_MAX_OWED` are."""
        if len(link.owed) < self._MAX_OWED:
            return
        self._reading.acquire()
        self._read_turn(link, None)
        if link.broken is not None:
            _raise(link.broken)

    def _read_turn(self, link: _Link, until: _Owed | None) -> None:
        """The turn to read, taken: read until ``until`` is done (None: until half
        of :data:`_MAX_OWED` are left), then pass the turn on."""
        try:
            self._read(link, until)
        finally:
            self._reading.release()
            self._pass_turn()

    def _read(self, link: _Link, until: _Owed | None) -> None:
        conn, owed, keep = link.conn, link.owed, self._MAX_OWED // 2
        while owed and (not until.done if until is not None else len(owed) > keep):
            try:
                reply = conn.read_response()
            except self._refusal as err:
                reply = err
            except BaseException as err:
                if link.broken is not None:
                    return  # given up by a writer meanwhile (it disconnected)
                # Anything else mid-reply (an interrupt too) leaves the connection
                # out of step: give it up, so no later reply goes to the wrong write.
                with self._lock:
                    self._broken(link, err)
                if not isinstance(err, self._errors):
                    raise
                return
            with self._state:
                if link.broken is not None:
                    return
                entry = owed.popleft()
                entry.reply, entry.done = reply, True
                if not entry.waited and isinstance(reply, self._refusal):
                    link.refused = link.refused or (entry.key, reply)
                waiters, entry.waiters = entry.waiters, None
                if waiters is not None:
                    self._waiting.discard(entry)
            try:
                if entry.on_reply is not None:
                    entry.on_reply(reply)  # before its waiters wake: they may look at it
            finally:
                for wake in waiters or ():
                    wake.release()

    def _pass_turn(self) -> None:
        """Wake the thread waiting for the oldest write not done: it reads next."""
        with self._state:
            pending = [entry for entry in self._waiting if not entry.done and entry.waiters]
            if not pending:
                return
            first = min(pending, key=lambda entry: entry.seq)
            assert first.waiters is not None
            wake = first.waiters.pop()
            if not first.waiters:
                first.waiters = None
                self._waiting.discard(first)
        wake.release()

    def _raise_refused(self, link: _Link) -> None:
        if link.refused is None:
            return
        with self._state:
            refused, link.refused = link.refused, None
        if refused is not None:
            key, error = refused
            raise StoreUnavailableError(f"Redis refused the write of {key}: {error}") from error

    def _broken(self, link: _Link, err: BaseException) -> StoreUnavailableError:
        """Give ``link`` up (the write lock held): every write owed on it fails."""
        if link.broken is None:
            with self._state:
                owed = list(link.owed)
                link.owed.clear()
                unknown = [entry.key for entry in owed]
                if self._link is link:
                    unknown += [key for key, _ in self._buffered]
                link.broken = (str(_unanswered(err, unknown)), err)
                waiters: list[Any] = []
                for entry in owed:
                    entry.error, entry.done = link.broken, True
                    waiters += entry.waiters or ()
                    entry.waiters = None
                    self._waiting.discard(entry)
            for wake in waiters:
                wake.release()
            if self._link is link:
                self._link, self._buffer, self._buffered = None, [], []
            with suppress(*self._errors):
                link.conn.disconnect()
            if self._pid == _process.pid():
                with suppress(*self._errors):
                    self._client.connection_pool.release(link.conn)
        return StoreUnavailableError(link.broken[0])


def _flush_buffered(ref: weakref.ReferenceType[_Writer], due: threading.Event) -> None:
    """A writer's flusher thread: while woken, write what is buffered once it is due."""
    while True:
        due.wait()
        writer = ref()
        if writer is None or writer._closed:
            return
        pause = writer._flusher_turn()
        del writer
        if pause is not None:
            time.sleep(pause)


_AT_EXIT_PID = 0


def _forked(ref: weakref.ReferenceType[_Writer]) -> None:
    writer = ref()
    if writer is not None:
        writer._after_fork()


def _flush_at_exit() -> None:
    # An interpreter that exits without closing the stores still writes what waits.
    for writer in list(_WRITERS.values()):
        with suppress(Exception):
            writer.flush()


_WRITERS: weakref.WeakKeyDictionary[Any, _Writer] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def _writer_for(client: redis.Redis) -> _Writer:
    """The writer of ``client``: shared, so writes of both stores stay in order."""
    with _WRITERS_LOCK:
        writer = _WRITERS.get(client)
        if writer is None:
            writer = _WRITERS[client] = _Writer(client)
        return writer


class _RedisStore:
    """What both stores share: the client, its writer, the prefix, error translation."""

    def __init__(self, client: redis.Redis, *, key_prefix: str = "tenant_notify:") -> None:
        self._redis = client
        self._prefix = key_prefix
        self._errors: tuple[type[BaseException], ...] = (_redis_module().RedisError,)
        self._writer = _writer_for(client)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> Self:
        """Build from ``[redis]`` settings (or around an existing client)."""
        return cls(client or connect(settings), key_prefix=settings.redis.key_prefix)

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def _call(self, fn: Callable[[], _T], *, after_writes: bool = True) -> _T:
        """Run ``fn`` on the pool; ``after_writes``: once this process's writes are done."""
        if after_writes:
            self._writer.flush()
        try:
            return fn()
        except self._errors as err:
            raise _unanswered(err) from err

    def flush(self) -> None:
        """Wait until every write made so far has been carried out."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self._redis.close()


class _FirstSave:
    """Whether a ``SET NX`` found the key taken; the answer read when it comes."""

    __slots__ = ("_writer", "done", "existed")

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer
        self.done = False
        self.existed = False

    def reply(self, value: Any) -> None:
        self.done = True
        self.existed = value is None

    def __call__(self) -> bool:
        if not self.done:
            with suppress(StoreUnavailableError):
                self._writer.flush()
        return self.existed


def _first_status_json(status: DeliveryStatus) -> str:
    """``compact(status.to_dict())`` for a send's first status (the same text).

    Every send writes one, and for it most fields are known (``queued``, no
    attempt, provider or error yet): those are written out once, and only the
    ids, the kind and the times are quoted, as the JSON encoder quotes them.
    Any other status goes through ``to_dict``. tests/test_redis_resp.py checks
    that both agree.
    """
    if (
        status.state is not DeliveryState.QUEUED
        or status.attempts
        or status.provider is not None
        or status.provider_message_id is not None
        or status.error is not None
        or status.error_type is not None
        or status.next_attempt_at is not None
        or status.engagement is not None
    ):
        return compact(status.to_dict())
    return (
        f'{{"id":{quote(status.id)},"tenant_id":{quote(status.tenant_id)},'
        f'"kind":{quote(status.kind)},"channel":{quote(status.channel.value)},'
        f'"state":"queued","attempts":0,"provider":null,"provider_message_id":null,'
        f'"error":null,"error_type":null,"created_at":{quote(isoformat(status.created_at))},'
        f'"updated_at":{quote(status.updated_at.isoformat())},"next_attempt_at":null}}'
    )


class RedisStatusStore(_RedisStore):
    """Statuses as JSON strings with a TTL; waiters are woken through pub/sub.

    Args:
        client: A ``redis.Redis`` with ``decode_responses=True``.
        key_prefix: Prefix of every key.
        ttl: Seconds a status is kept after its last change.
        poll_interval: Longest wait between two reads while waiting (a safety net
            in case a notification on the pub/sub channel is missed).
    """

    # Saving a status: write it, move the provider-id index along, and tell
    # waiters when it is final; one round trip, atomic.
    _SAVE = """
    local previous = redis.call('GET', KEYS[1])
    if previous then
        local old = cjson.decode(previous)
        if type(old.provider) == 'string' and type(old.provider_message_id) == 'string'
                and (old.provider ~= ARGV[3] or old.provider_message_id ~= ARGV[4]) then
            local old_key = ARGV[6] .. old.provider .. ':' .. old.provider_message_id
            if redis.call('GET', old_key) == ARGV[5] then redis.call('DEL', old_key) end
        end
    end
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    if ARGV[3] ~= '' and ARGV[4] ~= '' then
        redis.call('SET', ARGV[6] .. ARGV[3] .. ':' .. ARGV[4], ARGV[5], 'PX', ARGV[2])
    end
    if ARGV[7] == '1' then redis.call('PUBLISH', KEYS[2], ARGV[8]) end
    return 1
    """

    _DISCARD = """
    local previous = redis.call('GET', KEYS[1])
    if previous then
        local old = cjson.decode(previous)
        if type(old.provider) == 'string' and type(old.provider_message_id) == 'string' then
            local old_key = ARGV[1] .. old.provider .. ':' .. old.provider_message_id
            if redis.call('GET', old_key) == ARGV[2] then redis.call('DEL', old_key) end
        end
    end
    return redis.call('DEL', KEYS[1])
    """

    _DISCARD_UNCHANGED = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "tenant_notify:",
        ttl: float = 7 * 86_400.0,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(client, key_prefix=key_prefix)
        self.ttl = ttl
        self.poll_interval = poll_interval
        self._discard = client.register_script(self._DISCARD)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> Self:
        return cls(
            client or connect(settings),
            key_prefix=settings.redis.key_prefix,
            ttl=settings.status_retention,
        )

    def _key(self, notification_id: str) -> str:
        return f"{self._prefix}status:{notification_id}"

    def _channel(self, notification_id: str) -> str:
        return f"{self._prefix}final:{notification_id}"

    def save(self, status: DeliveryStatus) -> None:
        """Record ``status``.

        ``queued`` and ``sending`` are written without waiting for Redis's reply
        (it is read with the next write that waits, or :meth:`flush`); every
        other state waits, so a status that decides what happens next (sent,
        failed, retrying) is stored when this returns.
        """
        if status.state is DeliveryState.QUEUED and status.attempts == 0:
            # The first status of a new notification, written on the caller's
            # side of a send, and only where there is no status yet, so it can
            # never overwrite what a worker recorded meanwhile.
            self._write_first(status)
            return
        data = compact(status.to_dict())
        key = self._key(status.id)
        command = (
            "EVAL",
            self._SAVE,
            2,
            key,
            self._channel(status.id),
            data,
            _ms(self.ttl),
            status.provider or "",
            status.provider_message_id or "",
            status.id,
            f"{self._prefix}pmid:",
            "1" if status.is_final else "0",
            status.state.value,
        )
        if status.state is DeliveryState.SENDING:
            self._writer.send(key, *command)
        else:
            self._writer.call(key, *command)

    def save_first(self, status: DeliveryStatus) -> Callable[[], bool]:
        """Write a new notification's first ``queued`` status unless its id has one.

        Not waited for (the caller's send pays no round trip). Returns a callable
        that tells whether the id had a status already (a repeated send): it reads
        Redis's reply, waiting for it only if it has not come yet, and says False
        when Redis never answered.
        """
        seen = _FirstSave(self._writer)
        self._write_first(status, on_reply=seen.reply)
        return seen

    def _write_first(
        self, status: DeliveryStatus, on_reply: Callable[[Any], None] | None = None
    ) -> None:
        # SET NX, written with others (send_later): no round trip on the caller's side.
        data = _first_status_json(status)
        key = self._key(status.id)
        self._writer.send_later(key, "SET", key, data, "NX", "PX", _ms(self.ttl), on_reply=on_reply)

    def discard_queued(self, status: DeliveryStatus) -> None:
        """Forget ``status.id`` only while its stored status is still ``status``."""
        data = _first_status_json(status)
        key = self._key(status.id)
        self._writer.call(key, "EVAL", self._DISCARD_UNCHANGED, 1, key, data)

    def get(self, notification_id: str) -> DeliveryStatus | None:
        raw = self._call(lambda: self._redis.get(self._key(notification_id)))
        return None if raw is None else DeliveryStatus.from_dict(json.loads(raw))

    def find_by_provider_message_id(
        self, provider: str, provider_message_id: str
    ) -> DeliveryStatus | None:
        key = f"{self._prefix}pmid:{provider}:{provider_message_id}"
        notification_id = self._call(lambda: self._redis.get(key))
        if notification_id is None:
            return None
        status = self.get(str(notification_id))
        if status is None or (status.provider, status.provider_message_id) != (
            provider,
            provider_message_id,
        ):
            return None
        return status

    def discard(self, notification_id: str) -> None:
        # (_call waits for this process's writes: the first status must not
        # land after it is discarded.)
        keys = [self._key(notification_id)]
        args = [f"{self._prefix}pmid:", notification_id]
        self._call(lambda: self._discard(keys=keys, args=args))

    def wait(self, notification_id: str, timeout: float | None) -> DeliveryStatus | None:
        status = self.get(notification_id)
        if status is None or status.is_final or timeout == 0:
            return status
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._subscribed(self._channel(notification_id)) as pubsub:
            # Read again once subscribed: a final status saved in between would
            # otherwise be missed.
            while True:
                status = self.get(notification_id)
                if status is None or status.is_final:
                    return status
                remaining = self.poll_interval
                if deadline is not None:
                    remaining = min(remaining, deadline - time.monotonic())
                    if remaining <= 0:
                        return status
                self._call(lambda: pubsub.get_message(timeout=remaining))  # noqa: B023

    @contextmanager
    def _subscribed(self, channel: str) -> Iterator[Any]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            self._call(lambda: pubsub.subscribe(channel))
            yield pubsub
        finally:
            with suppress(*self._errors):
                pubsub.close()


class RedisIdempotencyStore(_RedisStore):
    """Idempotency keys and delivery claims, atomic across processes.

    ``reserve`` is ``SET NX`` with a TTL. A ``claim`` writes a lease marker with a
    random token (``SET NX PX`` in a script that also reports DONE or the time left
    on someone else's lease); ``release`` deletes the key only while it still holds
    this process's token, so a lease that ran out and was taken by another worker
    is left alone. ``complete`` marks the key done for the TTL.
    """

    _RESERVE = """
    if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
    return redis.call('GET', KEYS[1])
    """

    # KEYS[2..], when given, are read once the lease is taken, each with the
    # command ARGV[4..] (GET, HGETALL) of the same place: for a delivery claim, its
    # status first (so the worker knows whether an earlier attempt completed),
    # then what the caller asked for (the reputation's pause and suppression
    # entries), all in the claim's one round trip.
    _CLAIM = """
    local current = redis.call('GET', KEYS[1])
    if current == ARGV[1] then return {'done', 0} end
    if current then return {'busy', redis.call('PTTL', KEYS[1])} end
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    local reply = {'acquired', 0}
    for i = 2, #KEYS do reply[i + 1] = redis.call(ARGV[i + 2], KEYS[i]) end
    return reply
    """
    #: What ``claim(..., reads=...)`` may read: read-only commands on one key.
    CLAIM_READS = frozenset({"GET", "HGETALL"})

    _RENEW = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
    return 0
    """

    # KEYS[2], when given, is the claim's hand-over record: it goes with the lease.
    _RELEASE = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then
        if KEYS[2] then redis.call('DEL', KEYS[2]) end
        return redis.call('DEL', KEYS[1])
    end
    return 0
    """

    # Done, and the hand-over record of the attempt that completed it gone with it.
    _COMPLETE_HANDED = """
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return redis.call('DEL', KEYS[2])
    """

    def __init__(self, client: redis.Redis, *, key_prefix: str = "tenant_notify:") -> None:
        super().__init__(client, key_prefix=key_prefix)
        self._reserve = client.register_script(self._RESERVE)
        self._release = client.register_script(self._RELEASE)
        self._renew = client.register_script(self._RENEW)
        # key -> the token of the lease this process holds on it
        self._leases: dict[str, str] = {}
        # Keys of those leases with a hand-over record (this holder's, or one an
        # earlier holder left): their complete and release delete it.
        self._handed: set[str] = set()
        self._lock = threading.Lock()

    def _key(self, key: str) -> str:
        return f"{self._prefix}idem:{key}"

    def _handed_key(self, key: str) -> str:
        return f"{self._prefix}handed:{key}"

    def reserve(self, key: str, notification_id: str, ttl: float) -> str | None:
        redis_key = self._key(key)
        for _ in range(3):
            earlier = self._call(
                lambda: self._reserve(keys=[redis_key], args=[notification_id, _ms(ttl)]),
                after_writes=False,
            )
            if earlier is None:
                return None
            if earlier:  # else it expired between SET and GET: try again
                return str(earlier)
        raise StoreUnavailableError(f"could not reserve idempotency key {key!r}")

    def forget(self, key: str) -> None:
        with self._lock:
            self._leases.pop(key, None)
            self._handed.discard(key)
        self._call(lambda: self._redis.delete(self._key(key)))

    def claim(self, key: str, lease: float, *, reads: Sequence[tuple[str, str]] = ()) -> Claim:
        """Take a lease on ``key``.

        For a delivery claim (``delivery:<notification id>``) the notification's
        status is read in the same script, and given with an ACQUIRED claim.
        ``reads``, ``(command, key)`` pairs of :data:`CLAIM_READS` on full Redis
        keys, are made in the same script too once the lease is taken; their
        replies come with an ACQUIRED claim as :attr:`Claim.reads` (a hash as a
        dict). The claim waits on this process's ordered writer: every write made
        before it is done when it is taken, and it costs one round trip.
        """
        token = _LEASE + uuid.uuid4().hex
        redis_key = self._key(key)
        keys = [redis_key]
        commands: list[str] = []
        delivery = key.startswith("delivery:")
        if delivery:
            # Its status, and the hand-over record an earlier holder may have left.
            keys += [f"{self._prefix}status:{key[len('delivery:') :]}", self._handed_key(key)]
            commands += ["GET", "GET"]
        for command, read_key in reads:
            if command not in self.CLAIM_READS:
                raise ValueError(f"not a read a claim can make: {command!r}")
            keys.append(read_key)
            commands.append(command)
        reply = self._writer.call(
            redis_key, "EVAL", self._CLAIM, len(keys), *keys, _DONE, token, _ms(lease), *commands
        )
        state, pttl = reply[0], reply[1]
        if state == "done":
            return Claim(ClaimState.DONE)
        if state == "busy":
            # A reservation (not a lease) has no end we could wait for: report
            # a short wait rather than none.
            return Claim(ClaimState.BUSY, retry_in=max(int(pttl), 100) / 1000)
        replies: list[Any] = [
            _hash(value) if command == "HGETALL" else value
            for command, value in zip(commands, reply[2:], strict=True)
        ]
        handed = replies[1] if delivery else None
        with self._lock:
            self._leases[key] = token
            if handed is not None:
                self._handed.add(key)
        if not delivery:
            return Claim(ClaimState.ACQUIRED, reads=tuple(replies))
        raw = replies[0]
        status = None if raw is None else DeliveryStatus.from_dict(json.loads(raw))
        return Claim(
            ClaimState.ACQUIRED,
            status=status,
            status_read=True,
            reads=tuple(replies[2:]),
            handed=None if handed is None else str(handed),
        )

    def renew(self, keys: Sequence[str], lease: float) -> list[str]:
        """Extend this process's leases on ``keys``: one round trip for all of them.

        Runs on a pooled connection of its own, not the ordered writer, so a
        heartbeat never waits behind (or holds up) a delivery's writes.
        """
        held: list[tuple[str, str]] = []
        lost: list[str] = []
        with self._lock:
            for key in keys:
                token = self._leases.get(key)
                if token is None:
                    lost.append(key)
                else:
                    held.append((key, token))
        if not held:
            return lost

        def run() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for key, token in held:
                self._renew(keys=[self._key(key)], args=[token, _ms(lease)], client=pipe)
            replies: list[Any] = pipe.execute()
            return replies

        replies = self._call(run, after_writes=False)
        return lost + [key for (key, _), ok in zip(held, replies, strict=True) if not ok]

    def complete(self, key: str, ttl: float) -> None:
        """Mark ``key`` done, without waiting for Redis's reply.

        The reply is read with the next write that waits (the dispatcher saves
        the final status right after) or :meth:`flush`; this process's later
        claims see it at once.
        """
        with self._lock:
            self._leases.pop(key, None)
            handed = key in self._handed
            self._handed.discard(key)
        redis_key = self._key(key)
        if handed:
            self._writer.send(
                redis_key,
                "EVAL",
                self._COMPLETE_HANDED,
                2,
                redis_key,
                self._handed_key(key),
                _DONE,
                _ms(ttl),
            )
        else:
            self._writer.send(redis_key, "SET", redis_key, _DONE, "PX", _ms(ttl))

    def release(self, key: str) -> None:
        with self._lock:
            token = self._leases.pop(key, None)
            handed = key in self._handed
            self._handed.discard(key)
        if token is not None:
            keys = [self._key(key), self._handed_key(key)] if handed else [self._key(key)]
            self._call(lambda: self._release(keys=keys, args=[token]))

    def mark_handed(self, key: str, provider: str, ttl: float) -> None:
        """Record that this process's attempt on ``key`` hands its message to
        ``provider`` now, without waiting: written on the ordered writer, so it
        goes out before the provider's write that follows and lands before the
        attempt's completion. A later claim of the key (this lease ran out: the
        process died) finds it; ``complete`` and ``release`` delete it.

        Raises:
            StoreUnavailableError: the write could not go out (the connection is
                down); the caller must not hand the message over.
        """
        handed_key = self._handed_key(key)
        with self._lock:
            self._handed.add(key)
        self._writer.send(handed_key, "SET", handed_key, provider, "PX", _ms(ttl))

    def clear_handed(self, key: str) -> None:
        """Delete this attempt's hand-over record (its provider certainly refused
        the message), without waiting."""
        handed_key = self._handed_key(key)
        with self._lock:
            self._handed.discard(key)
        self._writer.send(handed_key, "DEL", handed_key)
