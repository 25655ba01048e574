"""Run the blocking send path for a coroutine on a small, bounded pool of threads.

The Notifier's coroutine twins (``asend_*``, ``asubmit``, ``astatus``) check a send
in the event loop, as the blocking methods do in the caller, and hand the one part
that waits for the network (the status store, the broker) to one of these threads.
So the event loop never waits for Redis or the broker, and there is one send path,
with one set of guarantees, for both APIs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["Offload"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Offload:
    """At most ``threads`` blocking calls at a time; callers beyond that wait in the loop.

    Args:
        threads: Threads of the pool (created on first use).
        name: Prefix of their names.
    """

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # One semaphore per event loop: an asyncio primitive belongs to one loop.
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._limits = weakref.WeakKeyDictionary()

    def _pool(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[ThreadPoolExecutor, asyncio.Semaphore]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=self._name)
            limit = self._limits.get(loop)
            if limit is None:
                limit = self._limits[loop] = asyncio.Semaphore(self.threads)
            return self._executor, limit

    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` on a pool thread, with the caller's context variables."""
        loop = asyncio.get_running_loop()
        executor, limit = self._pool(loop)
        # Waiting here, not in the executor's queue: a stalled broker holds back
        # coroutines (which the host can cancel), not an unbounded heap of work.
        async with limit:
            call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            return await loop.run_in_executor(executor, call)

    def shutdown(self) -> None:
        """Wait for the calls running now; later ones start a new pool."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
