"""The store contracts."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..models import DeliveryStatus

__all__ = ["Claim", "ClaimState", "IdempotencyStore", "StatusStore"]


@runtime_checkable
class StatusStore(Protocol):
    """Keeps the latest :class:`DeliveryStatus` of each notification."""

    def save(self, status: DeliveryStatus) -> None:
        """Record ``status`` as the latest for its id, waking any waiter."""

    def get(self, notification_id: str) -> DeliveryStatus | None:
        """The latest status, or None when the id is unknown (or expired)."""

    def discard(self, notification_id: str) -> None:
        """Forget an id (a submission that never reached the transport)."""

    # Optional (both built-in stores have them; the Notifier falls back to
    # ``save`` and ``discard`` without them):
    #
    # def save_first(self, status) -> bool | Callable[[], bool]
    #     Record a new notification's first ``queued`` status unless its id has a
    #     status already; tell whether it had one: a bool when known at once, else
    #     a callable that finds out (it may wait for the store).
    # def discard_queued(self, status) -> None
    #     Forget the id only while its status is still exactly ``status`` (the
    #     ``queued`` one this send wrote), so a failed repeat of a send never
    #     erases what an earlier one recorded.

    def find_by_provider_message_id(
        self, provider: str, provider_message_id: str
    ) -> DeliveryStatus | None:
        """The latest status whose ``provider`` and ``provider_message_id`` are these,
        or None. Delivery webhooks that name only the provider's id (Twilio's
        ``MessageSid``) use it to find their notification.

        Implementations index every saved status that has a ``provider_message_id``
        and forget the entry with the status (expiry, eviction, ``discard``).
        """

    def wait(self, notification_id: str, timeout: float | None) -> DeliveryStatus | None:
        """Block until the status is final or ``timeout`` passes; return the latest
        status (final or not), or None for an unknown id."""

    def close(self) -> None:
        """Release connections."""


class ClaimState(enum.Enum):
    ACQUIRED = "acquired"  # the caller now holds the lease and must deliver
    DONE = "done"  # delivered (or finally failed) before: do nothing
    BUSY = "busy"  # someone else holds the lease: come back later


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    retry_in: float = 0.0  # with BUSY: seconds until the other lease runs out
    # With ACQUIRED, when the store read it in the same step (``status_read``): the
    # notification's latest status, so the dispatcher knows whether an earlier
    # attempt completed without asking the status store again.
    status: DeliveryStatus | None = None
    status_read: bool = False
    # With ACQUIRED: the replies of the reads asked for with the claim (a Redis
    # store's ``claim(..., reads=...)``), in their order; empty otherwise.
    reads: tuple[Any, ...] = ()
    # With ACQUIRED: the provider an earlier holder of the claim was handing the
    # message to (``mark_handed``) when it stopped without completing or releasing
    # the claim (its worker died after the point of no return), else None.
    handed: str | None = None


@runtime_checkable
class IdempotencyStore(Protocol):
    """Remembers idempotency keys, atomically.

    Two uses: ``reserve`` maps a caller's key to the first notification id sent
    with it (so a second send returns the first receipt), and ``claim`` /
    ``complete`` / ``release`` guard the delivery of one notification id, so a
    redelivered message is not sent twice.
    """

    def reserve(self, key: str, notification_id: str, ttl: float) -> str | None:
        """Map ``key`` to ``notification_id`` unless it is mapped already.

        Returns None when this call reserved it, else the id it was reserved for.
        """

    def forget(self, key: str) -> None:
        """Drop a reservation (the send it was made for never got queued)."""

    def claim(self, key: str, lease: float) -> Claim:
        """Take a lease on ``key`` unless it is done or leased by someone else.

        The lease runs out ``lease`` seconds later unless :meth:`renew` extends it,
        so the claim of a process that died is free again within one lease.
        """

    def renew(self, keys: Sequence[str], lease: float) -> list[str]:
        """Extend this process's leases on ``keys`` to ``lease`` seconds from now.

        Returns the keys whose lease this process no longer holds (it ran out and
        was taken, or was completed).
        """

    def complete(self, key: str, ttl: float) -> None:
        """Mark ``key`` done for ``ttl`` seconds: later claims get DONE."""

    def release(self, key: str) -> None:
        """Give a lease back without completing (the attempt failed, will retry)."""

    # Optional (both built-in stores have them; without them a worker that dies
    # after handing a message to its provider has the redelivered copy sent again):
    #
    # def mark_handed(self, key, provider, ttl) -> None
    #     Record, without waiting for the store, that the holder of the lease on
    #     ``key`` is handing its message to ``provider``, right before the point of
    #     no return; ordered before the holder's later writes. The record lasts
    #     (``ttl`` seconds at most) until ``complete`` or ``release`` of the key, so
    #     a later ``claim`` that finds it (the lease ran out) reports it as
    #     :attr:`Claim.handed`. Raises StoreUnavailableError when it cannot be sent.
    # def clear_handed(self, key) -> None
    #     Drop this holder's record (the provider certainly refused the message:
    #     the attempt fails over to the next one), without waiting.

    def close(self) -> None:
        """Release connections."""
