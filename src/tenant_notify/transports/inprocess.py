"""In-process transport: a bounded fair queue and worker threads in the host process.

The embedded default: no broker. ``submit`` only puts the notification on a
queue, so the caller returns in microseconds however slow the provider is.
Worker threads (``[transport] workers``, 16 by default: deliveries wait on the
network) run the dispatcher; retries wait in a timer heap and go back on the
queue when due. The queue is a :class:`~tenant_notify._fair.FairQueue`: while
several tenants have notifications waiting, the workers take them in turn,
weighted by each tenant's ``weight``, and a tenant's urgent kinds before its
other ones. ``close()`` drains: it lets the workers finish what is queued
(and retries that fall due in time) and records anything left as failed, so no
notification is dropped without a trace. An attempt that raises instead of
returning (the dispatcher does only before the provider call: a shared store
out of reach, or a bug) goes back in the retry heap as the same attempt, 1 s
later, then 2, 4, ... up to 30 s, as a broker would redeliver it.

Threads start on the first submit and again in a forked child, so a Notifier
built before a pre-forking server forks works in every worker process.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import os
import queue
import threading
import time
import weakref
from collections.abc import Collection
from typing import Self

from .._concurrency import declare_concurrency
from .._fair import FairQueue
from ..config import Settings
from ..dispatcher import Dispatcher
from ..errors import NotifyError, NotQueuedError, QueueFullError
from ..log import get_logger
from ..metrics import observe_queue_wait, watch_backlog
from ..models import Notification
from .base import Transport

__all__ = ["InProcessTransport"]

# An attempt that raised comes back after this, doubled each time it raises again.
_REDELIVER_DELAY = 1.0
_REDELIVER_MAX_DELAY = 30.0
_CLOSED = "the in-process transport closed before it could be delivered"


class InProcessTransport(Transport):
    """Worker threads behind a bounded fair queue.

    Args:
        dispatcher: The dispatcher the workers run.
        workers: Number of worker threads.
        queue_size: Queue bound. A send on a full queue blocks up to
            ``enqueue_timeout`` seconds, then raises :class:`QueueFullError`.
        enqueue_timeout: See ``queue_size``.
        drain_timeout: Default seconds ``close()`` waits for queued work.
        urgent_kinds: Kinds taken before the rest of their tenant's queue.
    """

    name = "inprocess"

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        workers: int = 16,
        queue_size: int = 10_000,
        enqueue_timeout: float = 5.0,
        drain_timeout: float = 30.0,
        urgent_kinds: Collection[str] = (),
    ) -> None:
        super().__init__(dispatcher)
        self.workers = workers
        self.urgent_kinds = frozenset(urgent_kinds)
        self.queue_size = queue_size
        self.enqueue_timeout = enqueue_timeout
        self.drain_timeout = drain_timeout
        self._log = get_logger()
        self._closed = False
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._reset()

    @classmethod
    def from_settings(cls, dispatcher: Dispatcher, settings: Settings) -> Self:
        t = settings.transport
        return cls(
            dispatcher,
            workers=t.workers,
            queue_size=t.queue_size,
            enqueue_timeout=t.enqueue_timeout,
            drain_timeout=t.drain_timeout,
            urgent_kinds=[kind for kind, table in settings.kinds.items() if table.urgent],
        )

    def _reset(self) -> None:
        # (notification, attempt, monotonic time it was queued or fell due)
        self._queue: FairQueue[tuple[Notification, int, float]] = FairQueue(
            self.queue_size, self._weight
        )
        self._threads: list[threading.Thread] = []
        # Retries waiting for their time: (due, seq, notification, attempt).
        self._retries: list[tuple[float, int, Notification, int]] = []
        self._seq = itertools.count()
        self._retry_changed = threading.Condition()
        self._stopping = False
        self._draining = False  # close() is waiting for the queue to empty
        # Notification id -> attempts in a row that raised (under _retry_changed).
        self._raised: dict[str, int] = {}

    def _ensure_started(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._start_lock:
            if self._pid == pid:
                return
            if self._pid is not None:
                # A forked child inherits the queue but not the threads.
                self._reset()
            declare_concurrency(self.workers)
            for index in range(self.workers):
                thread = threading.Thread(
                    target=self._work, name=f"tenant-notify-worker-{index}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            scheduler = threading.Thread(
                target=self._schedule, name="tenant-notify-retries", daemon=True
            )
            scheduler.start()
            self._threads.append(scheduler)
            self._pid = pid
            watch_backlog(self.dispatcher.metrics, self)
            # Daemon threads would die with the interpreter: drain first.
            atexit.register(_close_at_exit, weakref.ref(self))

    def _weight(self, tenant_id: str) -> float:
        return self.dispatcher.tenants.get(tenant_id).weight

    def submit(self, notification: Notification, *, delay: float | None = None) -> None:
        """Queue ``notification``; with ``delay`` (seconds), deliver it no sooner."""
        if self._closed:
            raise NotQueuedError(
                "the in-process transport is closed",
                tenant_id=notification.tenant_id,
                notification_id=notification.id,
            )
        self._ensure_started()
        if delay is not None and delay > 0:
            self._schedule_retry(notification, 1, delay)
            return
        try:
            self._queue.put(
                notification.tenant_id,
                (notification, 1, time.monotonic()),
                urgent=notification.kind in self.urgent_kinds,
                timeout=self.enqueue_timeout,
            )
        except queue.Full:
            raise QueueFullError(
                f"the in-process queue stayed full ({self.queue_size} notifications) for "
                f"{self.enqueue_timeout}s; add workers or raise transport.queue_size",
                tenant_id=notification.tenant_id,
                notification_id=notification.id,
            ) from None
        if self._stopping:
            # close() ran between the check above and the put, and has settled the
            # queue already: settle what came in after it, as close() would have.
            for late, _, _ in self._queue.drain():
                self.dispatcher.abandon(late, _CLOSED)

    def backlog(self) -> dict[str, int]:
        """Notifications waiting for a worker, by tenant (retries not yet due left out)."""
        return self._queue.backlog()

    @property
    def pending(self) -> int:
        """Notifications queued, in flight or waiting for a retry."""
        with self._retry_changed:
            return self._queue.unfinished_tasks + len(self._retries)

    # --- threads -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return  # woken to stop
            try:
                notification, attempt, queued_at = item
                observe_queue_wait(
                    self.dispatcher.metrics,
                    tenant_id=notification.tenant_id,
                    seconds=time.monotonic() - queued_at,
                )
                try:
                    outcome = self.dispatcher.deliver(notification, attempt)
                except Exception as err:
                    self._redeliver(notification, attempt, err)
                    continue
                if self._raised:
                    with self._retry_changed:
                        self._raised.pop(notification.id, None)
                if outcome.retry_in is not None:
                    # A deferral (a limit, a paused account) was no attempt.
                    again = attempt if outcome.deferred else attempt + 1
                    self._schedule_retry(notification, again, outcome.retry_in)
            except Exception:
                # Never reached by a delivery problem: a bug in this loop.
                self._log.exception("inprocess_worker_error")
            finally:
                with self._retry_changed:
                    self._queue.task_done()
                    if self._draining:
                        # close() waits for the last one; nobody else does (the
                        # retry scheduler waits for retries only): a wake-up per
                        # delivery would cost a thread switch each.
                        self._retry_changed.notify_all()

    def _redeliver(self, notification: Notification, attempt: int, err: Exception) -> None:
        """``deliver`` raised: run the same attempt again later, never drop it.

        The dispatcher records every delivery problem and returns; it raises only
        before the provider is called (a store out of reach: the claim given back),
        or for a bug. Either way nothing was sent, and dropping the notification
        here would leave it ``queued`` for ever, delivered by nobody.
        """
        with self._retry_changed:
            times = self._raised[notification.id] = self._raised.get(notification.id, 0) + 1
        delay = min(_REDELIVER_MAX_DELAY, _REDELIVER_DELAY * 2 ** (times - 1))
        if isinstance(err, NotifyError):
            self._log.warning(
                "delivery_redelivered",
                tenant_id=notification.tenant_id,
                notification_id=notification.id,
                attempt=attempt,
                error=f"{type(err).__name__}: {err}",
                retry_in=delay,
            )
        else:
            self._log.exception(
                "delivery_raised",
                tenant_id=notification.tenant_id,
                notification_id=notification.id,
                attempt=attempt,
                retry_in=delay,
            )
        self._schedule_retry(notification, attempt, delay)

    def _schedule_retry(self, notification: Notification, attempt: int, delay: float) -> None:
        with self._retry_changed:
            if not self._stopping:
                due = time.monotonic() + delay
                heapq.heappush(self._retries, (due, next(self._seq), notification, attempt))
                self._retry_changed.notify_all()
                return
        # close() has given up waiting and settled what was left: an attempt still
        # running then comes back here, after it, and is recorded as the rest were
        # (in the heap, with the scheduler stopped, it would wait for ever).
        self.dispatcher.abandon(notification, _CLOSED)

    def _schedule(self) -> None:
        while True:
            with self._retry_changed:
                while not self._stopping:
                    now = time.monotonic()
                    if self._retries and self._retries[0][0] <= now:
                        break
                    timeout = self._retries[0][0] - now if self._retries else None
                    self._retry_changed.wait(timeout)
                if self._stopping:
                    return
                _, _, notification, attempt = heapq.heappop(self._retries)
                # Queued before it leaves the heap's lock, so a drain never sees
                # a moment with nothing pending. Past the bound: a retry was
                # accepted long ago and must not be refused.
                self._queue.put(
                    notification.tenant_id,
                    (notification, attempt, time.monotonic()),
                    urgent=notification.kind in self.urgent_kinds,
                    force=True,
                )

    # --- shutdown ------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting sends, deliver what is queued, settle the rest.

        Waits up to ``timeout`` (default: ``drain_timeout``) for queued and in-flight
        notifications, including retries that fall due before then. Whatever is
        still pending afterwards is recorded as failed, never dropped silently.
        """
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return  # never started in this process: nothing to drain
        deadline = time.monotonic() + (self.drain_timeout if timeout is None else timeout)
        with self._retry_changed:
            self._draining = True
            while self._queue.unfinished_tasks or self._retries:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._retry_changed.wait(min(remaining, 0.05))
            self._stopping = True
            abandoned = [(n, a) for _, _, n, a in self._retries]
            self._retries.clear()
            self._retry_changed.notify_all()
        abandoned.extend((n, a) for n, a, _ in self._queue.drain())
        for notification, _ in abandoned:
            self.dispatcher.abandon(notification, _CLOSED)
        if abandoned:
            self._log.error("inprocess_close_abandoned", count=len(abandoned))
        self._queue.wake(self.workers)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0)

    def __repr__(self) -> str:
        return f"<InProcessTransport workers={self.workers} pending={self.pending}>"


def _close_at_exit(ref: weakref.ReferenceType[InProcessTransport]) -> None:
    transport = ref()
    if transport is not None:
        transport.close()
