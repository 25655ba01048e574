"""Celery transport: notifications as JSON task messages on a broker, delivered by workers.

Caller's side (:class:`CeleryTransport`): ``submit`` writes one Celery protocol-2
task message, built here without going through ``Task.apply_async``, on a pooled
broker connection. The message carries ``Notification.to_dict()`` (ids, kind,
recipient, context; never credentials), the notification id is the task id, the
tenant id travels in the ``tenant_id`` header, and ``argsrepr`` shows the kind,
the tenant and the masked recipient, so Flower and logs never show an address.

Publisher confirms (RabbitMQ): with ``[celery] publisher_confirms = "async"`` (the
default) a send returns once the message is written to the broker connection;
the broker's confirms are read in the background, and a message left
unconfirmed (the connection died, the broker refused it) is published again on a
new connection. One that still cannot be confirmed ``publish_timeout`` seconds
later is recorded as ``failed`` with the reason (and logged as
``enqueue_unconfirmed``): never lost silently. ``"sync"`` makes every send wait
for its confirm. A broker that cannot be reached when the host sends makes the
send raise :class:`~tenant_notify.errors.EnqueueError` within ``publish_timeout``.

Worker's side (:func:`register_tasks`, :func:`create_app`,
:mod:`tenant_notify.celery_app`): the task ``tenant_notify.deliver`` runs the same
:class:`~tenant_notify.dispatcher.Dispatcher` as every other transport, with the
tenant id bound in structlog's context variables for the task and cleared after.
When the dispatcher asks for a retry, the task publishes the message again with
an ETA (same backoff policy as in process); a notification whose last attempt
failed goes to the dead-letter queue (``[celery] dead_letter_queue``), from which
``tenant-notify replay`` (:func:`replay_dead_letters`) puts it back.

Reliability settings applied to the app: JSON only, UTC, ``acks_late`` with
``task_reject_on_worker_lost``, publisher confirms, soft and hard time limits,
a small prefetch, result expiry, task events.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import structlog

from ..config import CelerySettings, Settings, load_settings
from ..dispatcher import Dispatcher
from ..errors import ConfigurationError, EnqueueError, MissingDependencyError, NotifyError
from ..log import get_logger, mask_recipient
from ..models import DeliveryState, DeliveryStatus, Notification
from ..stores import IdempotencyStore, StatusStore
from .base import Transport

if TYPE_CHECKING:
    from ..notifier import Notifier
    from ..tenants import TenantResolver

__all__ = [
    "TASK_NAME",
    "TENANT_HEADER",
    "CeleryTransport",
    "DeadLetter",
    "build_message",
    "configure_app",
    "create_app",
    "register_tasks",
    "replay_dead_letters",
]

#: The name of the delivery task.
TASK_NAME = "tenant_notify.deliver"
#: The message header that carries the tenant id.
TENANT_HEADER = "tenant_id"
# Headers a dead-lettered message gets on top of the task's own.
_DEAD_ERROR = "x_tenant_notify_error"
_DEAD_AT = "x_tenant_notify_failed_at"

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _kombu() -> Any:
    try:
        import kombu
    except ModuleNotFoundError as err:
        raise MissingDependencyError("celery", "celery", key="transport.backend") from err
    return kombu


def _celery() -> Any:
    try:
        import celery
    except ModuleNotFoundError as err:
        raise MissingDependencyError("celery", "celery", key="transport.backend") from err
    return celery


def _queue(name: str) -> Any:
    """The kombu Queue both sides declare (they must agree on every flag)."""
    kombu = _kombu()
    return kombu.Queue(name, kombu.Exchange(name, type="direct", durable=True), routing_key=name)


# --- the message ---------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """One message on its way to the broker, kept until the broker confirms it."""

    notification: Notification
    body: bytes
    headers: dict[str, Any]
    queue: str
    expires_at: float  # monotonic: give up on a confirm after this
    republished: int = 0
    on_lost: Callable[[_Pending, str], None] | None = field(default=None, repr=False)


def _origin() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _argsrepr(notification: Notification) -> str:
    # What Flower and the worker's log show instead of the arguments: the kind
    # and the tenant, so tasks can be told apart, and the recipient masked.
    return (
        f"({notification.kind!r}, tenant={notification.tenant_id!r}, "
        f"to={mask_recipient(notification.to)!r})"
    )


def build_message(
    notification: Notification,
    *,
    attempt: int = 1,
    eta: dt.datetime | None = None,
    ignore_result: bool = False,
    origin: str | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The body and headers of the protocol-2 task message for ``notification``.

    A standard Celery worker consumes it as a call of :data:`TASK_NAME` with the
    notification's dict as its only argument; ``retries`` is ``attempt - 1``.
    """
    body = json.dumps([[notification.to_dict()], {}, _EMBED], separators=(",", ":"))
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK_NAME,
        "id": notification.id,
        "shadow": None,
        "eta": eta.isoformat() if eta is not None else None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": attempt - 1,
        "timelimit": [None, None],
        "root_id": notification.id,
        "parent_id": None,
        "argsrepr": _argsrepr(notification),
        "kwargsrepr": "{}",
        "origin": origin or _origin(),
        "ignore_result": ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        TENANT_HEADER: notification.tenant_id,
    }
    return body.encode("utf-8"), headers


# --- publishing ----------------------------------------------------------------------


class _Link:
    """One broker connection and channel of the publisher's pool.

    Used by one thread at a time (it is checked out of the pool). In confirm mode
    it keeps every message it wrote until the broker confirms it, and writes them
    again on a new connection when the old one breaks.
    """

    def __init__(self, publisher: _Publisher) -> None:
        self._publisher = publisher
        self.conn: Any = None
        self.channel: Any = None
        self.confirming = False
        self.next_tag = 1
        self.unconfirmed: dict[int, _Pending] = {}
        self.redo: list[_Pending] = []

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def connect(self) -> None:
        """(Re)connect, declare the queues, and write again what was unconfirmed."""
        p = self._publisher
        kombu = _kombu()
        conn = kombu.Connection(
            p.url,
            connect_timeout=p.settings.connect_timeout,
            heartbeat=0,
            transport_options=p.transport_options,
        )
        try:
            conn.connect()
            channel = conn.channel()
            for name in p.queues:
                _queue(name)(channel).declare()
            confirming = p.confirms and conn.transport.driver_type == "amqp"
            if confirming:
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
        except BaseException:
            _quietly(conn.release)
            raise
        self.conn, self.channel, self.confirming = conn, channel, confirming
        self.next_tag = 1
        again = [self.unconfirmed[tag] for tag in sorted(self.unconfirmed)] + self.redo
        self.unconfirmed, self.redo = {}, []
        expires_at = time.monotonic() + p.settings.publish_timeout
        for pending in again:
            pending.republished += 1
            pending.expires_at = expires_at
            self.write(pending)

    def write(self, pending: _Pending) -> int:
        """Write one message; return its delivery tag (0 without confirms)."""
        message = self.channel.prepare_message(
            pending.body,
            None,
            "application/json",
            "utf-8",
            pending.headers,
            {"correlation_id": pending.notification.id, "delivery_mode": 2},
        )
        self.channel.basic_publish(message, exchange=pending.queue, routing_key=pending.queue)
        if not self.confirming:
            return 0
        tag = self.next_tag
        self.next_tag += 1
        self.unconfirmed[tag] = pending
        return tag

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            for done in [t for t in self.unconfirmed if t <= tag]:
                del self.unconfirmed[done]
        else:
            self.unconfirmed.pop(tag, None)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        tags = [t for t in self.unconfirmed if t <= tag] if multiple else [tag]
        for refused in sorted(tags):
            pending = self.unconfirmed.pop(refused, None)
            if pending is not None:
                self.redo.append(pending)

    def check(self) -> None:
        """Raise if the broker has closed the connection; leave confirms for the reader.

        A write into a socket the peer has closed may still "succeed", so this
        is how a dead connection is noticed before a message is written into it.
        Reading the confirms is the background reader's work: done here, it
        would cost the caller one frame per message.
        """
        if not self.confirming:
            return
        sock = self.conn.connection.transport.sock
        if sock is None:
            raise ConnectionError("the broker connection is closed")
        if len(self.unconfirmed) > 1000:
            self.poll()
        elif select.select([sock], [], [], 0)[0] and not sock.recv(1, socket.MSG_PEEK):
            raise ConnectionError("the broker closed the connection")

    def poll(self) -> None:
        """Read whatever has arrived (confirms, a close), without blocking.

        Also how a connection the broker has closed is noticed before a message
        is written into it (a write into a closed socket may still "succeed").
        """
        if self.conn.transport.driver_type != "amqp":
            return
        sock = self.conn.connection.transport.sock
        if sock is None:
            raise ConnectionError("the broker connection is closed")
        while select.select([sock], [], [], 0)[0]:
            self.conn.drain_events(timeout=1.0)

    def wait_for(self, tag: int, pending: _Pending, deadline: float) -> None:
        """Block until ``tag`` is confirmed; raise _Nacked or TimeoutError."""
        while tag in self.unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the broker did not confirm the message in time")
            try:
                self.conn.drain_events(timeout=remaining)
            except TimeoutError:
                continue
        if pending in self.redo:
            self.redo.remove(pending)
            raise _Nacked(pending)

    def drop(self) -> None:
        """Forget the connection (it failed); unconfirmed messages stay for ``connect``."""
        conn, self.conn, self.channel = self.conn, None, None
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


class _Publisher:
    """A pool of :class:`_Link` for one process, and the confirm reader thread."""

    def __init__(
        self,
        settings: CelerySettings,
        *,
        on_lost: Callable[[_Pending, str], None] | None = None,
        ignore_result: bool | None = None,
    ) -> None:
        self.settings = settings
        self.url = settings.broker_url
        self.confirms = settings.publisher_confirms != "off"
        self.wait_confirms = settings.publisher_confirms == "sync"
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
        self._origin = _origin()
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
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            if self._pid is not None:
                # A forked child must not touch the parent's sockets: start afresh.
                self._reset()
            self._origin = _origin()
            self._pid = pid
            atexit.register(_close_at_exit, weakref.ref(self))

    # --- the pool ------------------------------------------------------------------

    def _acquire(self, deadline: float) -> _Link:
        with self._lock:
            while not self._idle and len(self._links) >= self.settings.pool_limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._returned.wait(remaining):
                    raise EnqueueError(
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
            raise EnqueueError(
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
        pending = _Pending(notification, body, headers, queue or self.settings.queue, now + timeout)
        self._send(pending, now + timeout, self.wait_confirms if wait is None else wait)

    def _send(self, pending: _Pending, deadline: float, wait: bool) -> None:
        link = self._acquire(deadline)
        try:
            delay = 0.05
            while True:
                try:
                    if not link.connected:
                        link.connect()
                    else:
                        link.check()
                    tag = link.write(pending)
                    if wait and tag:
                        link.wait_for(tag, pending, deadline)
                    break
                except _Nacked as err:
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
                    )
                    raise EnqueueError(
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
        kombu = _kombu()
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
        while self.sweep() and time.monotonic() < deadline:
            time.sleep(0.01)
        return not any(link.unconfirmed or link.redo for link in self._links)

    def close(self, timeout: float | None = None) -> None:
        """Wait for outstanding confirms (up to ``timeout``), then close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
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


def _close_at_exit(ref: weakref.ReferenceType[_Publisher]) -> None:
    publisher = ref()
    if publisher is not None:
        publisher.close()


# --- the transport -------------------------------------------------------------------


class CeleryTransport(Transport):
    """Publishes each notification as a Celery task for workers elsewhere.

    Build it through settings (``transport = "celery"``); the Notifier then uses
    the Redis stores (:meth:`default_stores`) so statuses and idempotency keys
    are shared with the workers.

    Args:
        dispatcher: Used to record a notification as failed if the broker never
            confirms it; deliveries run in the workers.
        settings: The ``[celery]`` section.
    """

    name = "celery"

    def __init__(self, dispatcher: Dispatcher, *, settings: CelerySettings) -> None:
        super().__init__(dispatcher)
        self.settings = settings
        self.publisher = _Publisher(settings, on_lost=self._unconfirmed)

    @classmethod
    def from_settings(cls, dispatcher: Dispatcher, settings: Settings) -> Self:
        _kombu()
        check_settings(settings)
        return cls(dispatcher, settings=settings.celery)

    @classmethod
    def default_stores(cls, settings: Settings) -> tuple[StatusStore, IdempotencyStore] | None:
        from ..stores.redis import RedisIdempotencyStore, RedisStatusStore, connect

        _kombu()  # name the extra that brings both
        client = connect(settings)
        return (
            RedisStatusStore.from_settings(settings, client),
            RedisIdempotencyStore.from_settings(settings, client),
        )

    def submit(self, notification: Notification) -> None:
        self.publisher.publish(notification)

    def _unconfirmed(self, pending: _Pending, reason: str) -> None:
        current = self.dispatcher.status_store.get(pending.notification.id)
        if current is not None and current.state is not DeliveryState.QUEUED:
            return  # a worker has it (only the confirm was lost): its status stands
        self.dispatcher.abandon(pending.notification, f"not enqueued: {reason}")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the broker has confirmed every message sent so far."""
        return self.publisher.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Wait for outstanding confirms, then close the broker connections."""
        self.publisher.close(timeout)

    def __repr__(self) -> str:
        return f"<CeleryTransport queue={self.settings.queue!r}>"


def check_settings(settings: Settings) -> None:
    """Refuse settings with which a slow attempt could be delivered twice."""
    if settings.idempotency.lease < settings.celery.time_limit:
        raise ConfigurationError(
            f"must be at least celery.time_limit ({settings.celery.time_limit}s), or a "
            "redelivered message could be sent while the first attempt still runs",
            key="idempotency.lease",
        )


# --- the worker ----------------------------------------------------------------------


class _Runtime:
    """What a worker process delivers with: a Notifier and its publisher (per process)."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        transport = notifier.transport
        if not isinstance(transport, CeleryTransport):
            raise ConfigurationError(
                "the worker's Notifier must use the celery transport", key="transport.backend"
            )
        self.transport = transport
        self.dispatcher = notifier.dispatcher
        self.pid = os.getpid()


_RUNTIMES: dict[int, tuple[int, _Runtime]] = {}
_RUNTIME_LOCK = threading.Lock()


def _runtime(app: Any) -> _Runtime:
    key = id(app)
    entry = _RUNTIMES.get(key)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    with _RUNTIME_LOCK:
        entry = _RUNTIMES.get(key)
        if entry is None or entry[0] != os.getpid():
            factory: Callable[[], Notifier] = app.conf["tenant_notify_notifier_factory"]
            entry = (os.getpid(), _Runtime(factory()))
            _RUNTIMES[key] = entry
    return entry[1]


def _deliver_task(task: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    request = task.request
    log = get_logger()
    runtime = _runtime(task.app)
    notification = Notification.from_dict(data)
    # A message from the broker has its headers on the request; an eager
    # apply(headers=...) keeps them in request.headers.
    header_tenant = request.get(TENANT_HEADER) or (request.get("headers") or {}).get(TENANT_HEADER)
    with structlog.contextvars.bound_contextvars(
        tenant_id=notification.tenant_id, notification_id=notification.id
    ):
        if header_tenant != notification.tenant_id or request.id != notification.id:
            # Never deliver under an identity the message does not agree on.
            log.error("task_message_mismatch", header_tenant=header_tenant, task_id=request.id)
            _dead_letter(runtime, notification, 1, "the message's headers do not match its body")
            return {"state": "rejected"}
        attempt = int(request.retries or 0) + 1
        try:
            outcome = runtime.dispatcher.deliver(notification, attempt)
            if outcome.retry_in is not None:
                runtime.transport.publisher.publish(
                    notification, attempt=attempt + 1, countdown=outcome.retry_in, wait=True
                )
                return {"state": DeliveryState.RETRYING.value, "attempt": attempt}
            status = outcome.status
            if status is not None and status.state is DeliveryState.FAILED:
                _dead_letter(runtime, notification, attempt, status.error or "failed")
        except NotifyError as err:
            # The shared store or the broker is out of reach: put the message back
            # rather than lose it; another delivery will find the claim.
            log.warning("task_requeued", error=f"{type(err).__name__}: {err}", attempt=attempt)
            time.sleep(1.0)
            raise _celery().exceptions.Reject(str(err), requeue=True) from err
    return _result(status)


def _result(status: DeliveryStatus | None) -> dict[str, Any]:
    if status is None:
        return {"state": "unknown"}
    return {
        "state": status.state.value,
        "attempts": status.attempts,
        "provider": status.provider,
        "provider_message_id": status.provider_message_id,
        "error": status.error,
    }


def _dead_letter(runtime: _Runtime, notification: Notification, attempt: int, error: str) -> None:
    queue = runtime.transport.settings.dead_letter_queue
    if not queue:
        return
    # A redelivered message must not be dead-lettered twice.
    key = f"dead:{notification.id}:{attempt}"
    if runtime.notifier.idempotency_store.reserve(key, notification.id, 7 * 86_400.0):
        return
    runtime.transport.publisher.publish(
        notification,
        attempt=attempt,
        queue=queue,
        extra_headers={
            _DEAD_ERROR: error[:1000],
            _DEAD_AT: dt.datetime.now(dt.UTC).isoformat(),
        },
        wait=True,
    )
    get_logger().warning(
        "notification_dead_lettered",
        tenant_id=notification.tenant_id,
        notification_id=notification.id,
        kind=notification.kind,
        queue=queue,
    )


def _finish_on_parent_death(**_: Any) -> None:
    """Let a pool process finish the delivery in hand when the main process dies.

    Celery's prefork pool has the kernel SIGKILL its processes together with the
    main process (``PR_SET_PDEATHSIG``). One killed after the provider accepted a
    message but before the delivery claim was completed would have it sent again
    when the broker redelivers. Without that signal the orphan finishes its
    attempt (bounded by the provider's timeouts), completes the claim, so the
    redelivered message is skipped, and exits when it finds its parent gone.
    """
    try:
        from billiard.util import set_pdeathsig
    except ImportError:  # pragma: no cover - billiard comes with Celery
        return
    with suppress(OSError):
        set_pdeathsig(0)


def app_config(settings: CelerySettings) -> dict[str, Any]:
    """The Celery configuration the transport relies on (see docs/workers.md)."""
    queue = _queue(settings.queue)
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        # JSON only, in UTC.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "enable_utc": True,
        "timezone": "UTC",
        # A message is acknowledged after its attempt, and handed back if the
        # process running it dies; the delivery claim stops a second send.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.time_limit,
        "result_expires": int(settings.result_expires),
        "result_extended": False,
        "broker_connection_retry_on_startup": True,
        # No ``confirm_publish``: every message the library publishes (sends,
        # retries, dead letters) goes through its own confirming publisher.
        # What Celery itself publishes is task events, and confirming those
        # would block the worker's main loop on a broker round trip per flush.
        "broker_pool_limit": settings.pool_limit,
        "worker_send_task_events": settings.send_events,
        "task_send_sent_event": settings.send_events,
        "task_queues": [queue],
        "task_default_queue": settings.queue,
        "task_default_exchange": settings.queue,
        "task_default_routing_key": settings.queue,
        "task_routes": {TASK_NAME: {"queue": settings.queue}},
    }
    if settings.concurrency is not None:
        config["worker_concurrency"] = settings.concurrency
    return config


def register_tasks(
    app: Any,
    settings: Settings | None = None,
    *,
    tenant_resolver: TenantResolver | None = None,
    notifier_factory: Callable[[], Notifier] | None = None,
) -> Any:
    """Register the delivery task on ``app`` (a host's own Celery app) and return it.

    The task builds, once per worker process, a Notifier from ``settings`` (or the
    environment when None, or ``notifier_factory()``) and runs its dispatcher.
    Run a worker that consumes ``[celery] queue`` (``-Q tenant_notify``).
    """
    if notifier_factory is None:

        def notifier_factory() -> Notifier:
            from ..notifier import Notifier

            loaded = load_settings(settings)
            return Notifier(loaded, tenant_resolver=tenant_resolver, transport=CeleryTransport)

    app.conf["tenant_notify_notifier_factory"] = notifier_factory
    _celery().signals.worker_process_init.connect(
        _finish_on_parent_death, weak=False, dispatch_uid="tenant_notify.finish_on_parent_death"
    )
    loaded = load_settings(settings) if settings is not None else None
    options: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}
    if loaded is not None:
        options.update(
            soft_time_limit=loaded.celery.soft_time_limit,
            time_limit=loaded.celery.time_limit,
            ignore_result=loaded.celery.ignore_result,
        )

    @app.task(name=TASK_NAME, bind=True, shared=False, **options)  # type: ignore[untyped-decorator]
    def deliver(self: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        return _deliver_task(self, data)

    return deliver


def configure_app(app: Any, settings: Settings) -> Any:
    """Apply :func:`app_config` to ``app`` and register the delivery task on it."""
    check_settings(settings)
    app.conf.update(app_config(settings.celery))
    register_tasks(app, settings)
    return app


def create_app(settings: Settings | None = None, *, main: str = "tenant_notify") -> Any:
    """A Celery app configured from ``settings`` (default: the environment)."""
    loaded = load_settings(settings)
    app = _celery().Celery(main, set_as_current=False)
    return configure_app(app, loaded)


# --- the dead-letter queue ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A notification found in the dead-letter queue.

    Attributes:
        id: Notification (and task) id.
        tenant_id, kind: What it was.
        to: The recipient, masked.
        attempts: Attempts made.
        error: Why the last one failed.
        failed_at: When it was dead-lettered (ISO 8601, UTC).
    """

    id: str
    tenant_id: str
    kind: str
    to: str
    attempts: int
    error: str
    failed_at: str


def replay_dead_letters(
    settings: Settings,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    ids: Iterable[str] | None = None,
) -> list[DeadLetter]:
    """Put dead-lettered notifications back on the work queue (or just list them).

    Each replayed notification gets its full number of attempts again: its
    delivery claim is cleared and its status set back to ``queued``.

    Args:
        settings: Settings naming the broker, queues and Redis.
        limit: At most this many.
        dry_run: Only list them; the queue is left as it was.
        ids: Only these notification ids (the others stay).
    """
    from ..notifier import Notifier

    wanted = set(ids) if ids is not None else None
    found: list[DeadLetter] = []
    queue_name = settings.celery.dead_letter_queue
    if not queue_name:
        raise ConfigurationError(
            "no dead-letter queue is configured", key="celery.dead_letter_queue"
        )
    kombu = _kombu()
    with Notifier(settings, transport=CeleryTransport) as notify:
        transport = notify.transport
        assert isinstance(transport, CeleryTransport)
        with kombu.Connection(
            settings.celery.broker_url, connect_timeout=settings.celery.connect_timeout
        ) as conn:
            channel = conn.channel()
            queue = _queue(queue_name)(channel)
            queue.declare()
            kept = []
            while limit is None or len(found) < limit:
                message = queue.get(no_ack=False, accept=["json"])
                if message is None:
                    break
                headers = message.headers or {}
                args, _, _ = json.loads(message.body)
                notification = Notification.from_dict(args[0])
                if wanted is not None and notification.id not in wanted:
                    kept.append(message)
                    continue
                found.append(
                    DeadLetter(
                        id=notification.id,
                        tenant_id=notification.tenant_id,
                        kind=notification.kind,
                        to=mask_recipient(notification.to),
                        attempts=int(headers.get("retries") or 0) + 1,
                        error=str(headers.get(_DEAD_ERROR, "")),
                        failed_at=str(headers.get(_DEAD_AT, "")),
                    )
                )
                if dry_run:
                    kept.append(message)
                    continue
                notify.idempotency_store.forget(f"delivery:{notification.id}")
                current = notify.status_store.get(notification.id)
                notify.status_store.save(
                    (current or DeliveryStatus.queued(notification)).evolve(
                        state=DeliveryState.RETRYING,
                        error=f"replayed from {queue_name}",
                        error_type=None,
                        next_attempt_at=dt.datetime.now(dt.UTC),
                    )
                )
                transport.publisher.publish(notification, attempt=1, wait=True)
                message.ack()
            # Unacknowledged messages go back to the queue when the channel closes.
            del kept
            channel.close()
    return found
