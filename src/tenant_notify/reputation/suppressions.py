"""Suppression lists: recipients a tenant must not send to again, per channel.

A :class:`Suppression` names a tenant, a channel, a recipient, why (a hard
bounce, a spam complaint, an unsubscribe, or by hand) and the category it
covers: ``None`` for every category (bounces, complaints, STOP), or one category
(an RFC 8058 unsubscribe from a ``marketing`` email suppresses ``marketing``
only; order confirmations still go out).

:class:`Suppressions` is what a host uses (``notify.suppressions``); the entries
live in a :class:`~tenant_notify.reputation.store.SuppressionStore` (memory in
process, Redis beside the Celery stores).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .._validation import check_identifier, normalize_email, normalize_phone
from ..config import CATEGORY
from ..errors import ValidationError
from ..log import get_logger, mask_recipient
from ..models import Channel, utcnow
from .store import SuppressionStore

__all__ = ["Suppression", "SuppressionReason", "Suppressions", "first_covering"]


class SuppressionReason(enum.StrEnum):
    """Why a recipient is suppressed."""

    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Suppression:
    """One entry of a tenant's suppression list.

    Attributes:
        tenant_id: Whose list.
        channel: ``email`` or ``sms``.
        recipient: The normalised address or E.164 number.
        reason: Why.
        category: The one category it covers, or None for every category.
        source: What added it (``"sendgrid"``, ``"twilio"``, ``"list-unsubscribe"``,
            ``"api"``, ``"cli"``).
        created_at: When (UTC).
        detail: The provider's words (a bounce reason), if any; never a secret.
    """

    tenant_id: str
    channel: Channel
    recipient: str
    reason: SuppressionReason
    category: str | None = None
    source: str = "api"
    created_at: dt.datetime = field(default_factory=utcnow)
    detail: str | None = None

    def covers(self, category: str | None) -> bool:
        """Whether this entry stops a send of ``category``."""
        return self.category is None or self.category == category

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "channel": self.channel.value,
            "recipient": self.recipient,
            "reason": self.reason.value,
            "category": self.category,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Suppression:
        return cls(
            tenant_id=data["tenant_id"],
            channel=Channel(data["channel"]),
            recipient=data["recipient"],
            reason=SuppressionReason(data["reason"]),
            category=data.get("category"),
            source=data.get("source") or "api",
            created_at=dt.datetime.fromisoformat(data["created_at"]),
            detail=data.get("detail"),
        )

    def __repr__(self) -> str:
        # Recipients stay masked wherever they are not needed, reprs included.
        category = f", category={self.category!r}" if self.category else ""
        return (
            f"Suppression(tenant_id={self.tenant_id!r}, channel={self.channel.value!r}, "
            f"recipient={mask_recipient(self.recipient)!r}, reason={self.reason.value!r}"
            f"{category})"
        )


def _channel(value: Channel | str) -> Channel:
    try:
        return Channel(value)
    except ValueError:
        raise ValidationError(f"{value!r} is not a channel (email, sms)", field="channel") from None


def _recipient(channel: Channel, recipient: str) -> str:
    if channel is Channel.EMAIL:
        return normalize_email(recipient, "recipient")
    return normalize_phone(recipient, "recipient")


def _category(category: str | None) -> str | None:
    if category is None:
        return None
    if not isinstance(category, str) or not CATEGORY.fullmatch(category):
        raise ValidationError(
            "is not a category name (lower case letters, digits, '_', '.', '-')",
            field="category",
        )
    return category


class Suppressions:
    """A tenant-scoped view of the suppression lists (``notify.suppressions``).

    Args:
        store: Where the entries live.
        mask: How recipients appear in log lines.
    """

    def __init__(self, store: SuppressionStore, *, mask_recipients: bool = True) -> None:
        self.store = store
        self._mask = mask_recipient if mask_recipients else str
        self._log = get_logger()

    def add(
        self,
        tenant_id: str,
        recipient: str,
        *,
        channel: Channel | str = Channel.EMAIL,
        reason: SuppressionReason | str = SuppressionReason.MANUAL,
        category: str | None = None,
        source: str = "api",
        detail: str | None = None,
    ) -> Suppression:
        """Suppress ``recipient`` for ``tenant_id`` on ``channel``.

        Args:
            category: Only sends of this category (None: every category).
            source: What asked for it, for the list and the log.
            detail: The provider's words, if any.

        Returns:
            The entry (an existing entry for the same recipient and category is
            replaced).

        Raises:
            ValidationError: a bad tenant id, recipient, channel, reason or category.
        """
        channel = _channel(channel)
        try:
            reason = SuppressionReason(reason)
        except ValueError:
            known = ", ".join(r.value for r in SuppressionReason)
            raise ValidationError(f"{reason!r} is not one of {known}", field="reason") from None
        entry = Suppression(
            tenant_id=check_identifier(tenant_id, "tenant_id"),
            channel=channel,
            recipient=_recipient(channel, recipient),
            reason=reason,
            category=_category(category),
            source=source,
            detail=detail,
        )
        self.store.add_suppression(entry)
        self._log.info(
            "recipient_suppressed",
            tenant_id=entry.tenant_id,
            channel=channel.value,
            to=self._mask(entry.recipient),
            reason=reason.value,
            category=entry.category,
            source=source,
        )
        return entry

    def remove(
        self,
        tenant_id: str,
        recipient: str,
        *,
        channel: Channel | str = Channel.EMAIL,
        category: str | None = None,
        reasons: Iterable[SuppressionReason] | None = None,
        source: str = "api",
    ) -> int:
        """Lift suppressions of ``recipient``.

        Args:
            category: Lift only the entry of this category; None lifts every
                entry of the recipient on the channel.
            reasons: Lift only entries with one of these reasons (an SMS START
                lifts a STOP, not a hard bounce).

        Returns:
            How many entries were lifted.
        """
        channel = _channel(channel)
        tenant_id = check_identifier(tenant_id, "tenant_id")
        address = _recipient(channel, recipient)
        wanted = frozenset(reasons) if reasons is not None else None
        removed = 0
        for entry in self.store.get_suppressions(tenant_id, channel, address):
            if category is not None and entry.category != _category(category):
                continue
            if wanted is not None and entry.reason not in wanted:
                continue
            removed += self.store.remove_suppression(tenant_id, channel, address, entry.category)
        if removed:
            self._log.info(
                "recipient_unsuppressed",
                tenant_id=tenant_id,
                channel=channel.value,
                to=self._mask(address),
                category=category,
                source=source,
                removed=removed,
            )
        return removed

    def check(
        self,
        tenant_id: str,
        recipient: str,
        *,
        channel: Channel | str = Channel.EMAIL,
        category: str | None = None,
    ) -> Suppression | None:
        """The entry that stops a send of ``category`` to ``recipient``, or None.

        ``category`` None asks about a transactional send, which only entries
        for every category stop.
        """
        channel = _channel(channel)
        entries = self.store.get_suppressions(
            check_identifier(tenant_id, "tenant_id"), channel, _recipient(channel, recipient)
        )
        return first_covering(entries, category)

    def list(
        self,
        tenant_id: str,
        *,
        channel: Channel | str | None = None,
        limit: int | None = None,
    ) -> list[Suppression]:
        """The tenant's entries, newest first (on one channel, or both)."""
        tenant_id = check_identifier(tenant_id, "tenant_id")
        channels = list(Channel) if channel is None else [_channel(channel)]
        entries = [e for ch in channels for e in self.store.list_suppressions(tenant_id, ch)]
        entries.sort(key=lambda e: e.created_at, reverse=True)
        return entries if limit is None else entries[:limit]

    def __repr__(self) -> str:
        return f"Suppressions({self.store!r})"


def first_covering(entries: Iterable[Suppression], category: str | None) -> Suppression | None:
    """The entry among ``entries`` that stops a send of ``category``: one for every
    category first, else one for that category."""
    matching = [e for e in entries if e.covers(category)]
    matching.sort(key=lambda e: e.category is not None)
    return matching[0] if matching else None
