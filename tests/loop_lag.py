"""A loop-lag monitor: how long the event loop makes a newly arrived event wait.

A child process (not a thread of the process measured) writes a timestamp into a
socket every ``interval`` seconds; the loop reads it with a reader callback, as it
reads a request from the network, and the lag of that sample is how much later
the loop ran the callback than the timestamp was taken. An event loop that is
blocked (by a socket read in a coroutine, say) for 3 ms makes a sample wait up to
3 ms. One sample is in flight at a time: the child writes the next one only once
the loop has answered the last, so a blocked loop counts once, fully.

Why a process: a monitor thread needs the GIL to post a sample, so it is itself
a thread the loop can wait for. On a loaded machine the kernel can take the core
from it while it holds the GIL or between its timestamp and its post; the loop
then waits (or seems to) for the monitor, not for the code measured. Traced with
``perf sched`` (docs/benchmarks.md, "Coroutine twins: event-loop lag"), a thread
monitor counted a 25 ms stall in which the loop thread slept and the only thread
of the process ready to run was the monitor, descheduled. The child's timestamp
is ``CLOCK_MONOTONIC``, one clock for every process of the machine.

Usage::

    async with LoopLag() as lag:
        ...  # the work
    lag.max, lag.median, lag.samples
    lag.stalls(0.005)  # the samples over 5 ms: where the loop's thread was meanwhile

Where the kernel has it (``/proc/self/task/<tid>/schedstat``), every sample also
reads the loop thread's CPU time and its time spent runnable but waiting for a
core, so a stall can be split into: the loop running (its own work), the loop
waiting for a core (the machine), and the rest, in which the thread slept (for
the GIL another thread held, or with nothing to do).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType

__all__ = ["LoopLag", "Stall"]

_STAMP = struct.Struct("=d")

# The child: sleep, stamp, write; wait for the loop's answer; until the socket closes.
_CHILD = """
import os, select, socket, struct, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
interval, stamp = float(sys.argv[2]), struct.Struct("=d")
clock = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
try:
    while not select.select([sock], [], [], interval)[0]:
        sock.send(stamp.pack(clock()))
        if not sock.recv(1):
            break
except OSError:
    pass  # the loop's end closed the socket
"""


def _clock() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Stall:
    """One sample's lag, and what the loop's thread did between it and the last sample."""

    lag: float
    #: Seconds the loop's thread ran, and waited runnable for a core, since the last
    #: sample was answered (which is the child's interval and then this sample's lag).
    running: float
    waiting_for_core: float
    window: float  # seconds since the last sample was answered
    at: float = 0.0  # when the sample was stamped (CLOCK_MONOTONIC: line it up with a trace)

    @property
    def asleep(self) -> float:
        """The rest of the window: the thread slept (the GIL, or nothing to do)."""
        return max(0.0, self.window - self.running - self.waiting_for_core)

    def __str__(self) -> str:
        return (
            f"{self.lag * 1e3:.2f} ms lag: in the {self.window * 1e3:.2f} ms since the last "
            f"sample the loop ran {self.running * 1e3:.2f} ms, waited for a core "
            f"{self.waiting_for_core * 1e3:.2f} ms, slept {self.asleep * 1e3:.2f} ms "
            f"(stamped at {self.at:.6f})"
        )


class LoopLag:
    """Samples the loop's lag every ``interval`` seconds while in its ``async with``."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lags: list[float] = []
        #: When each sample was stamped (``CLOCK_MONOTONIC``), to line stalls up with traces.
        self.posted: list[float] = []
        # Per sample, at its answer: (monotonic, loop thread's run ns, wait ns), if known.
        self._sched: list[tuple[float, int, int]] = []
        self._schedstat: int | None = None
        self._sock: socket.socket | None = None
        self._child: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> LoopLag:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno()), repr(self.interval)],
                pass_fds=(theirs.fileno(),),
            )
        ours.setblocking(False)
        self._sock = ours
        try:
            path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
            self._schedstat = os.open(path, os.O_RDONLY)
            self._sched.append(self._read_sched())
        except OSError:
            self._schedstat = None  # no schedstat here: lags without the split
        loop.add_reader(ours.fileno(), self._arrived)
        return self

    def _read_sched(self) -> tuple[float, int, int]:
        assert self._schedstat is not None
        run, wait, _ = os.pread(self._schedstat, 128, 0).split()
        return _clock(), int(run), int(wait)

    def _arrived(self) -> None:
        now = _clock()
        assert self._sock is not None
        try:
            data = self._sock.recv(_STAMP.size)
        except BlockingIOError:
            return
        if len(data) < _STAMP.size:
            return  # the child has gone (or a short read: nothing to count)
        (stamped,) = _STAMP.unpack(data)
        self.lags.append(now - stamped)
        self.posted.append(stamped)
        if self._schedstat is not None:
            self._sched.append((now, *self._read_sched()[1:]))
        self._sock.send(b"k")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None and self._child is not None
        loop.remove_reader(self._sock.fileno())
        self._sock.close()  # the child sees it closed and ends
        if self._schedstat is not None:
            os.close(self._schedstat)
        await asyncio.to_thread(self._child.wait, 10)

    def stalls(self, at_least: float) -> list[Stall]:
        """The samples that lagged ``at_least`` seconds, each with the loop thread's
        running and waiting for a core since the sample before (empty splits where
        the kernel keeps no schedstat)."""
        found = []
        for index, lag in enumerate(self.lags):
            if lag < at_least:
                continue
            if len(self._sched) == len(self.lags) + 1:
                (before, run0, wait0), (after, run1, wait1) = self._sched[index : index + 2]
                running, waiting = (run1 - run0) / 1e9, (wait1 - wait0) / 1e9
                found.append(Stall(lag, running, waiting, after - before, self.posted[index]))
            else:
                found.append(Stall(lag, 0.0, 0.0, 0.0, self.posted[index]))
        return found

    @property
    def samples(self) -> int:
        return len(self.lags)

    @property
    def max(self) -> float:
        return max(self.lags)

    @property
    def median(self) -> float:
        return statistics.median(self.lags)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
