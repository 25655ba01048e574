"""SMTP connections of one process, bounded per server across every tenant.

Every :class:`~tenant_notify.providers.smtp.SmtpProvider` of the process borrows
its connections from one pool, kept per server (host and port). A connection
belongs to the settings it was opened and authenticated with (its *identity*:
credentials, TLS, EHLO name); a send reuses an idle connection of its own
identity, else opens one while the server has fewer than its bound open, else
closes an idle connection of another identity to make room, else waits for one
to come back (up to the provider's ``timeout``). So 200 tenants with their own
credentials and 16 worker threads hold at most ``max_connections`` connections to
their one server, not one per tenant and thread.

Idle connections are closed (QUIT) after ``idle_timeout`` seconds by a reaper
thread that runs only while some connection is idle (and a second after the last
one was taken, so that a busy pool does not start a thread per message). After a fork the child
forgets the parent's connections without a word to the server (closing its copy
of the socket only), as the parent's sessions go on.
"""

from __future__ import annotations

import os
import smtplib
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import suppress
from dataclasses import dataclass, field

__all__ = ["Lease", "PooledSMTP", "ServerPool", "SmtpPool", "shared_pool"]


class PooledSMTP(smtplib.SMTP):
    """An SMTP connection that may be handed on with a reply still to come.

    Over PIPELINING the sender of a message gives its connection back as soon as
    the final dot has gone out, and reads the final reply while the next message's
    envelope follows the dot (see :mod:`tenant_notify.providers.smtp`). Until that
    reply is read, ``replying`` is an unset event; a connection that failed then
    is ``broken``. Anyone else reading from the connection (the next message, a
    QUIT) waits for its turn with :meth:`settle`.
    """

    replying: threading.Event | None = None
    broken: bool = False

    @property
    def awaiting_reply(self) -> bool:
        """Whether a handed-on message's final reply is still to be read."""
        turn = self.replying
        return turn is not None and not turn.is_set()

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until no earlier reply is pending; whether the connection is usable.

        Args:
            timeout: Seconds to wait at most; default: the connection's timeout and
                a second (the reply's reader gives up within its timeout).
        """
        turn = self.replying
        if turn is not None and not turn.is_set():
            wait = timeout if timeout is not None else _reply_wait(self)
            if not turn.wait(wait):
                return False
        return not self.broken and self.sock is not None


def _reply_wait(conn: smtplib.SMTP) -> float:
    timeout = conn.timeout
    return (timeout if isinstance(timeout, int | float) else 10.0) + 1.0


@dataclass(eq=False)
class Lease:
    """One connection out of the pool, held by one send.

    Attributes:
        conn: The connection (the holder may replace it by a fresh one to the
            same server and identity, keeping the slot).
        reused: Whether it had carried a message before.
    """

    conn: smtplib.SMTP
    reused: bool
    identity: Hashable
    server: ServerPool = field(repr=False)


class ServerPool:
    """The connections to one server (host, port).

    Args:
        limit: Connections open at most.
        idle_timeout: Seconds an idle connection stays open.
    """

    def __init__(self, limit: int, idle_timeout: float) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.open = 0  # open or being opened, idle or in use
        self.peak = 0
        # identity -> idle connections, the most recently used last, with when they idled
        self.idle: dict[Hashable, list[tuple[smtplib.SMTP, float]]] = {}
        self.cond = threading.Condition(threading.Lock())

    def acquire(
        self, identity: Hashable, connect: Callable[[], smtplib.SMTP], timeout: float
    ) -> Lease | None:
        """A connection of ``identity``: an idle one, a new one, or after a wait.

        Returns:
            None when none came free within ``timeout`` seconds.

        Raises:
            Whatever ``connect`` raises (the slot is given back).
        """
        deadline = time.monotonic() + timeout
        evicted: smtplib.SMTP | None = None
        with self.cond:
            while True:
                now = time.monotonic()
                mine = self.idle.get(identity)
                while mine:
                    conn, since = mine.pop()
                    if not mine:
                        del self.idle[identity]
                    if now - since < self.idle_timeout and conn.sock is not None:
                        return Lease(conn, True, identity, self)
                    # Too old (the reaper has not got to it) or closed: make room.
                    self.open -= 1
                    _close_later(conn)
                    mine = self.idle.get(identity)
                if self.open < self.limit:
                    break
                evicted = self._oldest_idle()
                if evicted is not None:
                    break  # its slot becomes ours
                remaining = deadline - now
                if remaining <= 0:
                    return None
                self.cond.wait(remaining)
            if evicted is None:
                self.open += 1
                self.peak = max(self.peak, self.open)
        if evicted is not None:
            quit_quietly(evicted)
        try:
            conn = connect()
        except BaseException:
            self.release_slot()
            raise
        return Lease(conn, False, identity, self)

    def _oldest_idle(self) -> smtplib.SMTP | None:
        """Take the connection idle the longest, of whatever identity (under the lock).

        Not one whose last message's final reply is still coming: it is not idle
        yet (only a send of its own identity may follow that message on it).
        """
        oldest: tuple[Hashable, int, float] | None = None
        for identity, conns in self.idle.items():
            for index, (conn, since) in enumerate(conns):
                if isinstance(conn, PooledSMTP) and conn.awaiting_reply:
                    continue
                if oldest is None or since < oldest[2]:
                    oldest = (identity, index, since)
                break  # the first settled one is that identity's oldest
        if oldest is None:
            return None
        conns = self.idle[oldest[0]]
        conn = conns.pop(oldest[1])[0]
        if not conns:
            del self.idle[oldest[0]]
        return conn

    def settled(self) -> None:
        """A handed-on connection's final reply has been read: it may be evicted now
        (wakes a send of another identity waiting for room)."""
        with self.cond:
            self.cond.notify()

    def release(self, lease: Lease, *, keep: bool) -> None:
        """Give ``lease`` back: idle for reuse when ``keep``, else closed."""
        conn = lease.conn
        if keep and conn.sock is not None:
            with self.cond:
                self.idle.setdefault(lease.identity, []).append((conn, time.monotonic()))
                self.cond.notify()
            _REAPER.wake(time.monotonic() + self.idle_timeout)
            return
        with suppress(OSError):
            conn.close()
        self.release_slot()

    def release_slot(self) -> None:
        with self.cond:
            self.open -= 1
            self.cond.notify()

    def take_idle(
        self, identity: Hashable | None = None, older_than: float = 0.0
    ) -> list[smtplib.SMTP]:
        """Remove the idle connections (of ``identity``, or all) idle for at least
        ``older_than`` seconds; their slots are freed. The caller closes them."""
        now = time.monotonic()
        taken: list[smtplib.SMTP] = []
        with self.cond:
            for key in list(self.idle):
                if identity is not None and key != identity:
                    continue
                keep = [(c, s) for c, s in self.idle[key] if now - s < older_than]
                taken += [c for c, s in self.idle[key] if now - s >= older_than]
                if keep:
                    self.idle[key] = keep
                else:
                    del self.idle[key]
            self.open -= len(taken)
            if taken:
                self.cond.notify_all()
        return taken

    def next_expiry(self) -> float | None:
        """Monotonic time when the next idle connection is due to close."""
        with self.cond:
            times = [since for conns in self.idle.values() for _, since in conns]
        return min(times) + self.idle_timeout if times else None


class SmtpPool:
    """Every SMTP connection of the process, per server."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, int], ServerPool] = {}
        self._lock = threading.Lock()
        #: Changes when the servers' pools are dropped (in a forked child): a
        #: ServerPool kept from before belongs to the parent.
        self.epoch = 0

    def server(self, host: str, port: int, limit: int, idle_timeout: float) -> ServerPool:
        """The pool of ``host:port``; tables that disagree on the bound get the smallest."""
        key = (host.lower(), port)
        with self._lock:
            pool = self._servers.get(key)
            if pool is None:
                pool = self._servers[key] = ServerPool(limit, idle_timeout)
                return pool
            with pool.cond:
                pool.limit = min(pool.limit, limit)
                shorter = idle_timeout < pool.idle_timeout
                pool.idle_timeout = min(pool.idle_timeout, idle_timeout)
        if shorter:
            _REAPER.wake()  # idle connections are due sooner than it waits for
        return pool

    def servers(self) -> list[ServerPool]:
        with self._lock:
            return list(self._servers.values())

    def reap(self) -> float | None:
        """Close idle connections past their time; when the next one is due."""
        due: list[float] = []
        for pool in self.servers():
            for conn in pool.take_idle(older_than=pool.idle_timeout):
                quit_quietly(conn)
            expiry = pool.next_expiry()
            if expiry is not None:
                due.append(expiry)
        return min(due) if due else None

    def after_fork(self) -> None:
        # The child shares the parent's sockets: close its copies, say nothing.
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
            self.epoch += 1
        for pool in servers:
            for conns in pool.idle.values():
                for conn, _ in conns:
                    with suppress(OSError):
                        conn.close()


#: Seconds the reaper thread waits, with nothing idle, for a connection to come back
#: before it stops.
_LINGER = 1.0


class _Reaper:
    """One daemon thread closing idle connections on time; alive only while needed.

    A release wakes it only when the connection put back is due before the
    reaper's next wake-up (another server's shorter ``idle_timeout``): a thread
    wake-up per message would cost more than the send's own bookkeeping.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._due: float | None = None  # the timed wait's end (monotonic), if waiting for one

    def wake(self, due: float | None = None) -> None:
        """Have the reaper look again, unless it is going to by ``due`` anyway."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._due = None
                self._thread = threading.Thread(
                    target=self._run, name="tenant-notify-smtp-reaper", daemon=True
                )
                self._thread.start()
            elif self._due is None or due is None or due < self._due:
                # Under the lock: a reaper about to stop sees it and goes on.
                self._event.set()

    def _run(self) -> None:
        while True:
            self._event.clear()
            due = _POOL.reap()
            with self._lock:
                if self._event.is_set():
                    continue  # woken meanwhile: look again
                self._due = due
            if due is not None:
                self._event.wait(max(0.01, due - time.monotonic()))
                continue
            # Nothing idle: wait a little for a connection to come back, then stop.
            if self._event.wait(_LINGER):
                continue
            with self._lock:
                if not self._event.is_set():
                    self._thread = None
                    return

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._thread = None
        self._due = None


def quit_quietly(conn: smtplib.SMTP) -> None:
    """QUIT and close, ignoring a connection that is already gone (after the reply
    to a message that went out just before, if one is still coming)."""
    if isinstance(conn, PooledSMTP) and not conn.settle():
        with suppress(OSError):
            conn.close()
        return
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        with suppress(OSError):
            conn.close()


def _close_later(conn: smtplib.SMTP) -> None:
    # Under the pool's lock: no network round trip here, only the socket.
    with suppress(OSError):
        conn.close()


# Process-wide, as the server's limit is per client: two empty objects, no
# thread and no socket until the first send.
_POOL = SmtpPool()
_REAPER = _Reaper()


def shared_pool() -> SmtpPool:
    """The process's pool."""
    return _POOL


def _after_fork_in_child() -> None:
    _POOL.after_fork()
    _REAPER.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
