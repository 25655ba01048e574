"""This process's id, without a system call each time it is asked for.

The Redis writer and the Celery publisher check on every send whether they run
in the process that opened their connections (a forked child must open its own);
``os.getpid()`` is a system call each time. The id is read once and again in
every child ``os.fork()`` makes (``os.register_at_fork``; C code that forks and
goes on running Python calls ``PyOS_AfterFork_Child``, which runs it too).
"""

from __future__ import annotations

import os

__all__ = ["pid"]

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """``os.getpid()``, as of the last fork."""
    return _pid
