"""Status and idempotency stores: small interfaces, an in-memory implementation each.

The in-memory stores serve one process (the embedded default). Shared stores
(Redis) implement the same protocols so that a web process can read what a
worker on another machine recorded.
"""

from __future__ import annotations

from .base import Claim, ClaimState, IdempotencyStore, StatusStore
from .memory import MemoryIdempotencyStore, MemoryStatusStore

__all__ = [
    "Claim",
    "ClaimState",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "MemoryStatusStore",
    "StatusStore",
]
