"""How many deliveries this process runs at once, for pools to size themselves by.

The in-process transport (its worker threads) and ``tenant-notify worker`` (its
delivery threads) declare their concurrency when they start; an HTTP provider
with no ``max_connections`` of its own keeps that many keep-alive connections,
so no delivery thread waits for a connection another one holds idle.
"""

from __future__ import annotations

import threading

__all__ = ["declare_concurrency", "delivery_concurrency"]

#: Connections an HTTP provider keeps when no transport has said how many run at once.
DEFAULT = 20

_lock = threading.Lock()
_declared = 0


def declare_concurrency(count: int) -> None:
    """Say that ``count`` more deliveries may run at once in this process."""
    global _declared
    with _lock:
        _declared += max(0, count)


def delivery_concurrency() -> int:
    """Deliveries this process may run at once (:data:`DEFAULT` if nobody said)."""
    return _declared or DEFAULT
