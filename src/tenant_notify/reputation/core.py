"""What the Notifier and the Dispatcher ask about a tenant's reputation, in one place.

:class:`Reputation` holds the suppression lists, the breaker, the link signer
and the engagement store, and answers the few questions the pipeline has:

* at the call (:meth:`check_call`): is the channel paused, is the recipient
  suppressed, can the tenant's provider track as the tenant asks? Asked of the
  store only when it answers in process, so the caller never waits on Redis;
* before the provider is called (:meth:`hold`): the same, authoritatively, on
  the delivery side: a held notification ends ``suppressed`` or ``failed``
  without a provider call;
* on the rendered email (:meth:`decorate`): one-click unsubscribe headers, and
  the library's own tracking or the provider's tracking flags;
* after a failed attempt (:meth:`after_failure`): count a sender fault, suppress
  a recipient the provider says must not be sent to again;
* for delivery events (:meth:`apply_feedback`): suppress on hard bounces,
  complaints and unsubscribes, lift on resubscribes, record opens and clicks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from ..config import KindSettings, Settings
from ..errors import (
    ConfigurationError,
    DeliveryError,
    NotifyError,
    RecipientSuppressedError,
    UnsupportedFeatureError,
)
from ..log import get_logger, mask_recipient
from ..metrics import MetricsRecorder, NullMetrics, observe_engagement
from ..models import (
    Channel,
    DeliveryState,
    DeliveryStatus,
    EmailMessage,
    Engagement,
    Feature,
    Notification,
    utcnow,
)
from ..observers import StatusObserver, notify_engagement
from .breaker import Breaker, paused_error
from .links import ROUTES, LinkSigner
from .store import MemoryReputationStore, ReputationStore
from .suppressions import Suppression, SuppressionReason, Suppressions, first_covering
from .tracking import track_html

if TYPE_CHECKING:
    from .._pool import ProviderPool
    from ..stores import StatusStore
    from ..tenants import Tenant

__all__ = ["ONE_CLICK", "Held", "Reputation", "suppressed_error"]

#: The header RFC 8058 pairs with List-Unsubscribe.
ONE_CLICK = "List-Unsubscribe=One-Click"


class Held:
    """Why a notification is not handed to a provider.

    Attributes:
        state: ``suppressed`` or ``failed``.
        error: The error recorded with it.
    """

    __slots__ = ("error", "state")

    def __init__(self, state: DeliveryState, error: NotifyError) -> None:
        self.state = state
        self.error = error


class Reputation:
    """A tenant's reputation, as the pipeline asks about it.

    Args:
        settings: ``[kinds]``, ``[links]``, ``[breaker]``, ``mask_recipients``.
        store: Suppressions, breaker state and engagement (memory or Redis).
        metrics: Told of pauses and of opens and clicks.
    """

    def __init__(
        self,
        settings: Settings,
        store: ReputationStore | None = None,
        *,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        self.settings = settings
        self.store = store if store is not None else MemoryReputationStore()
        self.metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self.suppressions = Suppressions(self.store, mask_recipients=settings.mask_recipients)
        self.breaker = Breaker(self.store, settings.breaker, metrics=self.metrics)
        self.links = LinkSigner(settings.links) if settings.links.enabled else None
        #: Told of opens and clicks (lifecycle events), once the dispatcher has one.
        self.observer: StatusObserver | None = None
        self._mask = mask_recipient if settings.mask_recipients else str
        self._log = get_logger()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        status_store: StatusStore,
        *,
        metrics: MetricsRecorder | None = None,
    ) -> Reputation:
        """Reputation state beside the status store: in Redis when the statuses are."""
        from ..stores.redis import RedisStatusStore

        store: ReputationStore = MemoryReputationStore()
        if isinstance(status_store, RedisStatusStore):
            from .redis import RedisReputationStore

            store = RedisReputationStore.from_settings(settings, status_store.client)
        return cls(settings, store, metrics=metrics)

    # --- questions about kinds -----------------------------------------------------------

    def kind(self, kind: str) -> KindSettings:
        return self.settings.kind(kind)

    def category(self, kind: str) -> str | None:
        """The category suppression entries are matched against: None for transactional."""
        settings = self.kind(kind)
        return None if settings.transactional else settings.category

    def tracking(self, tenant: Tenant, kind: str) -> tuple[bool, bool]:
        """``(track_opens, track_clicks)`` for an email of ``kind`` from ``tenant``."""
        settings = self.kind(kind)
        return (
            tenant.track_opens and settings.track_opens,
            tenant.track_clicks and settings.track_clicks,
        )

    # --- at the call -----------------------------------------------------------------------

    def check_call(
        self,
        tenant: Tenant,
        kind: str,
        channel: Channel,
        recipient: str,
        providers: ProviderPool,
    ) -> None:
        """The checks a send makes before anything is queued.

        The pause and the suppression list are asked only when the store answers
        in process; the delivery side asks again in every case (:meth:`hold`).

        Raises:
            TenantPausedError: the tenant's channel is paused.
            RecipientSuppressedError: the recipient is suppressed for this kind.
            UnsupportedFeatureError: the tenant tracks, and neither its provider
                nor the library (no ``[links]``) can.
        """
        self.check_tracking(tenant, kind, channel, providers)
        self.check_holds(tenant, kind, channel, recipient)

    def check_tracking(
        self, tenant: Tenant, kind: str, channel: Channel, providers: ProviderPool
    ) -> None:
        """The part of :meth:`check_call` that depends only on the tenant, the kind
        and the channel (settings, not state): a caller may keep its answer.

        Raises:
            UnsupportedFeatureError: the tenant tracks, and neither its provider
                nor the library (no ``[links]``) can.
        """
        if channel is not Channel.EMAIL:
            return
        feature = self._tracking_gap(tenant, kind, providers.tracking(tenant, channel))
        if feature is not None:
            name = providers.provider_name(tenant, channel)
            raise UnsupportedFeatureError(
                f"provider {name!r} cannot {feature.replace('_', ' ')} and the "
                "library's own tracking needs [links] base_url and signing_keys",
                feature=feature,
                provider=name,
                tenant_id=tenant.id,
            )

    def check_holds(self, tenant: Tenant, kind: str, channel: Channel, recipient: str) -> None:
        """The part of :meth:`check_call` that reads state: the pause and the
        suppression list, asked only when the store answers in process.

        Raises:
            TenantPausedError: the tenant's channel is paused.
            RecipientSuppressedError: the recipient is suppressed for this kind.
        """
        if not self.store.answers_locally:
            return
        self.breaker.check(tenant.id, channel)
        entry = self._suppression(tenant.id, kind, channel, recipient)
        if entry is not None:
            raise suppressed_error(entry, self._mask)

    def _tracking_gap(
        self, tenant: Tenant, kind: str | None, native: frozenset[Feature]
    ) -> Feature | None:
        """The tracking ``tenant`` asks for (for ``kind``, or any kind) that neither its
        provider (``native``: what it does itself) nor the library can do, if any."""
        wanted = (
            self.tracking(tenant, kind)
            if kind is not None
            else (tenant.track_opens, tenant.track_clicks)
        )
        for asked, feature in zip(wanted, (Feature.TRACK_OPENS, Feature.TRACK_CLICKS), strict=True):
            if asked and feature not in native and self.links is None:
                return feature
        return None

    def check_tenant(self, tenant: Tenant, providers: ProviderPool) -> None:
        """Build-time check of a tenant's reputation settings against its email provider.

        Raises:
            ConfigurationError: the tenant tracks, and neither its provider nor the
                library (no ``[links]``) can.
        """
        feature = self._tracking_gap(tenant, None, providers.tracking(tenant, Channel.EMAIL))
        if feature is not None:
            name = providers.provider_name(tenant, Channel.EMAIL)
            raise ConfigurationError(
                f"provider {name!r} cannot {feature.replace('_', ' ')}; set [links] "
                "base_url and signing_keys for the library's own tracking",
                key=f"tenants.{tenant.id}.{feature.value}",
                tenant_id=tenant.id,
            )

    def _suppression(
        self,
        tenant_id: str,
        kind: str,
        channel: Channel,
        recipient: str,
        entries: list[Suppression] | None = None,
    ) -> Suppression | None:
        """The entry that stops a send of ``kind`` (of ``entries``, else looked up),
        unless the kind is not suppressible (then logged)."""
        if entries is None:
            entries = self.store.get_suppressions(tenant_id, channel, recipient)
        entry = first_covering(entries, self.category(kind)) if entries else None
        if entry is not None and not self.kind(kind).suppressible:
            self._log.warning(
                "suppression_overridden",
                tenant_id=tenant_id,
                kind=kind,
                channel=channel.value,
                to=self._mask(recipient),
                reason=entry.reason.value,
            )
            return None
        return entry

    # --- the delivery side ---------------------------------------------------------------

    def hold_reads(self, notification: Notification, claims: object) -> tuple[tuple[str, str], ...]:
        """What :meth:`hold` needs read, for the delivery claim on ``claims`` (the
        idempotency store) to read in its own round trip: ``(command, key)`` pairs
        when both stores are on one Redis client, else none (``hold`` asks the
        store itself)."""
        store: Any = self.store
        shares = getattr(store, "shares_redis_with", None)
        if shares is None or not shares(claims):
            return ()
        reads: tuple[tuple[str, str], ...] = store.hold_reads(
            notification.tenant_id, notification.channel, notification.to
        )
        return reads

    def hold(self, notification: Notification, replies: Sequence[Any] = ()) -> Held | None:
        """Why ``notification`` must not reach a provider now, or None to send it.

        One question to the store (one round trip on Redis) for both the pause and
        the recipient's entries; none when ``replies`` are the replies to
        :meth:`hold_reads`, read with the delivery's claim.
        """
        tenant_id, channel, to = notification.tenant_id, notification.channel, notification.to
        if replies:
            pause, entries = cast(Any, self.store).hold_from(replies)
        else:
            pause, entries = self.store.hold_state(tenant_id, channel, to)
        if pause is not None:
            return Held(DeliveryState.FAILED, paused_error(pause, notification_id=notification.id))
        entry = self._suppression(tenant_id, notification.kind, channel, to, entries)
        if entry is not None:
            return Held(
                DeliveryState.SUPPRESSED,
                suppressed_error(entry, self._mask, notification_id=notification.id),
            )
        return None

    def decorate(
        self,
        message: EmailMessage,
        notification: Notification,
        tenant: Tenant,
        native: frozenset[Feature],
    ) -> EmailMessage:
        """``message`` with unsubscribe headers and tracking, as its kind and tenant ask.

        ``native`` is the tracking the provider does itself (it gets the flags); the
        rest the library does in the HTML part.
        """
        category = self.category(notification.kind)
        opens, clicks = self.tracking(tenant, notification.kind)
        if category is None and not opens and not clicks:
            return message  # transactional and untracked: the common case, untouched
        headers = message.headers
        if category is not None and not any(n.lower() == "list-unsubscribe" for n in headers):
            headers = {**headers, **self.unsubscribe_headers(tenant, notification.to, category)}
        html = message.html
        if html is not None and self.links is not None:
            links = self.links
            own_opens = opens and Feature.TRACK_OPENS not in native
            own_clicks = clicks and Feature.TRACK_CLICKS not in native
            if own_opens or own_clicks:
                unsubscribe = links.base_url + ROUTES["unsubscribe"].partition("{")[0]
                ids = (tenant.id, notification.id, notification.kind)
                html = track_html(
                    html,
                    click_url=(lambda url: links.click_url(*ids, url)) if own_clicks else None,
                    open_url=links.open_url(*ids) if own_opens else None,
                    keep=lambda url: url.startswith(unsubscribe),
                )
        return replace(
            message,
            headers=headers,
            html=html,
            track_opens=opens and Feature.TRACK_OPENS in native,
            track_clicks=clicks and Feature.TRACK_CLICKS in native,
        )

    def unsubscribe_headers(self, tenant: Tenant, recipient: str, category: str) -> dict[str, str]:
        """RFC 8058 ``List-Unsubscribe`` (HTTPS, and the tenant's mailto if any) and
        ``List-Unsubscribe-Post``."""
        assert self.links is not None  # settings refuse non-transactional kinds without links
        entries = [f"<{self.links.unsubscribe_url(tenant.id, recipient, category)}>"]
        if tenant.unsubscribe_mailto is not None:
            address = quote(tenant.unsubscribe_mailto.email, safe="@")
            entries.append(f"<mailto:{address}?subject=unsubscribe>")
        return {"List-Unsubscribe": ", ".join(entries), "List-Unsubscribe-Post": ONE_CLICK}

    def after_failure(self, notification: Notification, error: NotifyError) -> None:
        """Count a sender fault; suppress a recipient the provider refused for good."""
        if not isinstance(error, DeliveryError):
            return
        if error.sender_fault:
            self.breaker.record(error, notification.tenant_id, notification.channel)
        if error.suppress_as is not None:
            self.suppressions.add(
                notification.tenant_id,
                notification.to,
                channel=notification.channel,
                reason=error.suppress_as,
                source=error.provider or "provider",
                detail=error.provider_response or error.message,
            )

    # --- delivery events -------------------------------------------------------------------

    def suppress(
        self,
        tenant_id: str,
        channel: Channel,
        recipient: str,
        reason: SuppressionReason,
        *,
        kind: str | None,
        source: str,
        detail: str | None = None,
    ) -> Suppression:
        """Suppress after a provider's event: unsubscribes cover the kind's category
        (every category for a transactional or unknown kind), the rest cover all."""
        category = None
        if reason is SuppressionReason.UNSUBSCRIBE and kind is not None:
            category = self.category(kind)
        return self.suppressions.add(
            tenant_id,
            recipient,
            channel=channel,
            reason=reason,
            category=category,
            source=source,
            detail=detail,
        )

    def record_open(
        self,
        tenant_id: str,
        notification_id: str,
        kind: str,
        at: dt.datetime | None = None,
        status: DeliveryStatus | None = None,
    ) -> Engagement:
        """Count an open (from the pixel or a provider's event); ``status``, when
        known, goes to the lifecycle observer with the new engagement."""
        engagement = self.store.record_open(notification_id, at or utcnow())
        return self._engaged(engagement, "opened", tenant_id, notification_id, kind, status)

    def record_click(
        self,
        tenant_id: str,
        notification_id: str,
        kind: str,
        url: str,
        at: dt.datetime | None = None,
        status: DeliveryStatus | None = None,
    ) -> Engagement:
        """Count a click on ``url``; ``status`` as for :meth:`record_open`."""
        engagement = self.store.record_click(notification_id, url, at or utcnow())
        return self._engaged(engagement, "clicked", tenant_id, notification_id, kind, status)

    @property
    def observes_engagement(self) -> bool:
        """Whether the observer takes opens and clicks (``engagement_recorded``)."""
        return getattr(self.observer, "engagement_recorded", None) is not None

    def _engaged(
        self,
        engagement: Engagement,
        event: str,
        tenant_id: str,
        notification_id: str,
        kind: str,
        status: DeliveryStatus | None,
    ) -> Engagement:
        """Count, log and pass on one open or click that was just recorded."""
        observe_engagement(self.metrics, tenant_id=tenant_id, kind=kind, event=event)
        if status is not None and self.observer is not None:
            notify_engagement(self.observer, replace(status, engagement=engagement), event)
        self._log.info(
            f"notification_{event}",
            tenant_id=tenant_id,
            notification_id=notification_id,
            kind=kind,
            opens=engagement.opens,
            clicks=engagement.click_count,
        )
        return engagement

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def __repr__(self) -> str:
        return f"Reputation({self.store!r})"


def suppressed_error(
    entry: Suppression, mask: Any = mask_recipient, **context: str | None
) -> RecipientSuppressedError:
    """The error a send to a suppressed recipient raises (or records)."""
    scope = f" from {entry.category}" if entry.category else ""
    return RecipientSuppressedError(
        f"{mask(entry.recipient)} is suppressed{scope} ({entry.reason.value}, "
        f"{entry.source}, {entry.created_at:%Y-%m-%d})",
        channel=entry.channel.value,
        reason=entry.reason.value,
        tenant_id=entry.tenant_id,
        **context,
    )
