"""The sender-fault breaker: pause a tenant's channel when its sending setup is broken.

A provider marks an error :attr:`~tenant_notify.errors.DeliveryError.sender_fault`
when what it refused is the tenant's setup rather than the recipient (SendGrid's
403 for an unverified sender, SES ``MessageRejected`` for an unverified identity,
SMTP 5.7.x policy and authentication refusals such as Gmail's ``550 5.7.26``,
Twilio's invalid From). Such errors are counted per tenant and channel; after
``[breaker] threshold`` of them within ``window`` seconds the channel is paused
for ``cooldown`` seconds: sends fail fast with
:class:`~tenant_notify.errors.TenantPausedError` (at the call where the store
answers in process, else on the delivery side, without a provider call), an
error line ``tenant_paused`` and the ``tenant_notify_sender_pauses_total`` metric
say why. ``tenant-notify resume TENANT`` lifts it. Other tenants, and the
tenant's other channel, are not affected.
"""

from __future__ import annotations

import datetime as dt

from ..config import BreakerSettings
from ..errors import DeliveryError, TenantPausedError
from ..log import get_logger
from ..metrics import MetricsRecorder, NullMetrics, observe_pause
from ..models import Channel, utcnow
from .store import Pause, PauseStore

__all__ = ["Breaker"]


class Breaker:
    """Counts sender faults and pauses tenants' channels.

    Args:
        store: Where counts and pauses live (shared by every process on Redis).
        settings: ``[breaker]``.
        metrics: Told of every pause.
    """

    def __init__(
        self,
        store: PauseStore,
        settings: BreakerSettings | None = None,
        *,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or BreakerSettings()
        self.metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self._log = get_logger()

    def paused(self, tenant_id: str, channel: Channel) -> Pause | None:
        """The pause of ``tenant_id``'s ``channel`` in force, or None."""
        return self.store.get_pause(tenant_id, channel)

    def check(self, tenant_id: str, channel: Channel) -> None:
        """Raise if the channel is paused.

        Raises:
            TenantPausedError: naming the reason and when it ends.
        """
        pause = self.paused(tenant_id, channel)
        if pause is not None:
            raise paused_error(pause)

    def record(self, error: DeliveryError, tenant_id: str, channel: Channel) -> Pause | None:
        """Count ``error`` if it is a sender fault; pause when the threshold is reached.

        Returns:
            The pause this fault started, or None.
        """
        if not self.settings.enabled or not error.sender_fault:
            return None
        faults = self.store.count_sender_fault(tenant_id, channel, self.settings.window)
        if faults < self.settings.threshold:
            self._log.warning(
                "sender_fault",
                tenant_id=tenant_id,
                channel=channel.value,
                provider=error.provider,
                faults=faults,
                threshold=self.settings.threshold,
                error=str(error),
            )
            return None
        now = utcnow()
        pause = Pause(
            tenant_id=tenant_id,
            channel=channel,
            reason=str(error),
            faults=faults,
            since=now,
            until=now + dt.timedelta(seconds=self.settings.cooldown),
        )
        self.store.pause(pause)
        self._log.error(
            "tenant_paused",
            tenant_id=tenant_id,
            channel=channel.value,
            provider=error.provider,
            faults=faults,
            window=self.settings.window,
            until=pause.until.isoformat(),
            error=pause.reason,
        )
        observe_pause(self.metrics, tenant_id=tenant_id, channel=channel.value)
        return pause

    def resume(self, tenant_id: str, channel: Channel | None = None) -> list[Channel]:
        """Lift the pause of one channel (or both) of ``tenant_id``.

        Returns:
            The channels that were paused and no longer are.
        """
        resumed = [
            ch
            for ch in ([channel] if channel is not None else list(Channel))
            if self.store.resume(tenant_id, ch)
        ]
        for ch in resumed:
            self._log.warning("tenant_resumed", tenant_id=tenant_id, channel=ch.value)
        return resumed

    def pauses(self) -> list[Pause]:
        """Every pause in force."""
        return self.store.list_pauses()

    def __repr__(self) -> str:
        s = self.settings
        return f"Breaker(threshold={s.threshold}, window={s.window}, cooldown={s.cooldown})"


def paused_error(pause: Pause, **context: str | None) -> TenantPausedError:
    """The error a send to a paused channel raises (or records)."""
    return TenantPausedError(
        f"the tenant's {pause.channel.value} is paused until {pause.until:%Y-%m-%d %H:%M:%S} UTC "
        f"after {pause.faults} sender faults (last: {pause.reason}); fix the sending setup, "
        "then run: tenant-notify resume " + pause.tenant_id,
        channel=pause.channel.value,
        reason=pause.reason,
        until=pause.until,
        tenant_id=pause.tenant_id,
        **context,
    )
