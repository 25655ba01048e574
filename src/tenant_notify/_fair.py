"""A queue that serves tenants in turn: the fair scheduler in front of the workers.

:class:`FairQueue` keeps one lane per tenant and hands items out by *stride
scheduling*: every lane has a virtual time, advanced by ``1 / weight`` for each
item it gives out, and the next item comes from the non-empty lane with the
smallest virtual time. While several tenants have items waiting, each gets a
share of the ``get`` calls proportional to its weight, however many items it
has queued and in whatever order they came; a tenant alone gets everything. A
lane that was empty starts again at the current virtual time, so a tenant
cannot bank credit while idle and burst past the others later.

Inside a lane, urgent items (kinds with ``urgent = true``) come before the
others, each group first in, first out.

Thread-safe. ``get``, ``put`` and ``task_done`` mirror :class:`queue.Queue`, so
the in-process transport's workers and the Celery worker's threads use it the
same way. Both ends cost O(log tenants).
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T")


@dataclass(slots=True)
class _Lane(Generic[T]):
    weight: float
    vtime: float = 0.0
    urgent: deque[T] = field(default_factory=deque)
    bulk: deque[T] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.urgent) + len(self.bulk)


class FairQueue(Generic[T]):
    """Per-tenant lanes served in weighted turns.

    Args:
        maxsize: Most items held (0: no bound). ``put`` blocks while full.
        weight: A tenant's weight (> 0), asked once when its lane opens.
    """

    def __init__(self, maxsize: int = 0, weight: Callable[[str], float] | None = None) -> None:
        self.maxsize = maxsize
        self._weight = weight or (lambda _tenant: 1.0)
        self.mutex = threading.Lock()
        self.not_empty = threading.Condition(self.mutex)
        self.not_full = threading.Condition(self.mutex)
        self.all_tasks_done = threading.Condition(self.mutex)
        self.unfinished_tasks = 0
        self._lanes: dict[str, _Lane[T]] = {}
        self._ready: list[tuple[float, int, str]] = []  # (vtime, seq, tenant) of non-empty lanes
        self._seq = itertools.count()
        self._vtime = 0.0
        self._size = 0
        self._woken = 0  # get() calls to return None (a wake-up), not an item
        self._getters = 0  # get() calls waiting: put wakes one only when there is one
        self._putters = 0  # put() calls waiting for room

    # --- putting ---------------------------------------------------------------------

    def put(
        self,
        tenant: str,
        item: T,
        *,
        urgent: bool = False,
        timeout: float | None = None,
        force: bool = False,
    ) -> None:
        """Queue ``item`` in ``tenant``'s lane.

        Args:
            urgent: Ahead of the lane's other items.
            timeout: Seconds to wait while full, then :class:`queue.Full` (None: forever).
            force: Ignore the bound (an item accepted long ago coming back).
        """
        with self.not_full:
            if self.maxsize > 0 and not force:
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._size >= self.maxsize:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise queue.Full
                    self._putters += 1
                    try:
                        self.not_full.wait(remaining)
                    finally:
                        self._putters -= 1
            self._put(tenant, item, urgent)
            self.unfinished_tasks += 1
            if self._getters:
                # (Without a waiting get there is nobody to wake: a busy worker's
                # threads take the next item as they finish, and notify costs.)
                self.not_empty.notify()

    def _put(self, tenant: str, item: T, urgent: bool) -> None:
        lane = self._lanes.get(tenant)
        if lane is None:
            lane = self._lanes[tenant] = _Lane(self._lane_weight(tenant), self._vtime)
        if not lane:
            # Back from idle: no credit for the time it had nothing queued.
            lane.vtime = max(lane.vtime, self._vtime)
            heapq.heappush(self._ready, (lane.vtime, next(self._seq), tenant))
        (lane.urgent if urgent else lane.bulk).append(item)
        self._size += 1

    def _lane_weight(self, tenant: str) -> float:
        try:
            weight = float(self._weight(tenant))
        except Exception:
            weight = 1.0  # an unknown tenant still gets its turn; delivery reports it
        return weight if weight > 0 else 1.0

    # --- getting ---------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> T | None:
        """The next item in turn; None after :meth:`wake`; :class:`queue.Empty` on timeout."""
        with self.not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._size and not self._woken:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise queue.Empty
                self._getters += 1
                try:
                    self.not_empty.wait(remaining)
                finally:
                    self._getters -= 1
            if self._woken:
                self._woken -= 1
                return None
            item = self._take()
            if self._putters:
                self.not_full.notify()
            return item

    def _take(self) -> T:
        vtime, _, tenant = heapq.heappop(self._ready)
        lane = self._lanes[tenant]
        item = lane.urgent.popleft() if lane.urgent else lane.bulk.popleft()
        self._size -= 1
        self._vtime = vtime
        lane.vtime = vtime + 1.0 / lane.weight
        if lane:
            heapq.heappush(self._ready, (lane.vtime, next(self._seq), tenant))
        else:
            del self._lanes[tenant]  # an idle tenant costs nothing; it restarts at _vtime
        return item

    def task_done(self) -> None:
        """One item from :meth:`get` is finished (see :meth:`queue.Queue.task_done`)."""
        with self.all_tasks_done:
            self.unfinished_tasks -= 1
            if self.unfinished_tasks <= 0:
                self.all_tasks_done.notify_all()

    def wake(self, count: int = 1) -> None:
        """Make ``count`` waiting (or future) :meth:`get` calls return None."""
        with self.not_empty:
            self._woken += count
            self.not_empty.notify(count)

    # --- looking ---------------------------------------------------------------------

    def qsize(self) -> int:
        with self.mutex:
            return self._size

    def backlog(self) -> dict[str, int]:
        """Items waiting, by tenant (tenants with none left out)."""
        with self.mutex:
            return {tenant: len(lane) for tenant, lane in self._lanes.items() if lane}

    def drain(self) -> list[T]:
        """Take every waiting item out (in no particular order); they count as done."""
        with self.mutex:
            items: list[T] = []
            for lane in self._lanes.values():
                items.extend(lane.urgent)
                items.extend(lane.bulk)
            self._lanes.clear()
            self._ready.clear()
            self._size = 0
            self.unfinished_tasks -= len(items)
            self.not_full.notify_all()
            if self.unfinished_tasks <= 0:
                self.all_tasks_done.notify_all()
            return items
