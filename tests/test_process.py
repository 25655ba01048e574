"""The process id the writer and the publisher check is the process's own after a fork."""

from __future__ import annotations

import multiprocessing
import os

from tenant_notify import _process


def _child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put((_process.pid(), os.getpid()))


def test_the_pid_is_read_again_in_a_forked_child():
    assert _process.pid() == os.getpid()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue,))
    process.start()
    seen, actual = queue.get(timeout=20)
    process.join(20)
    assert seen == actual != os.getpid()
