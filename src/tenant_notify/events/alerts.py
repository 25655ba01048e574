"""The failure-rate alert: per tenant and channel, a threshold over a sliding window.

With ``[events.alerts] enabled = true``, :class:`FailureRateMonitor` watches the
outcomes this process records (``sent`` counts as a success, ``failed`` and
``bounced`` as failures) per tenant and channel over the last ``window``
seconds. When at least ``min_outcomes`` are in the window and the failed share
reaches ``failure_rate``, it raises an alert, once:

* a log line ``failure_rate_alert`` (warning) with ``tenant_id``, ``channel``,
  ``failure_rate``, ``failed``, ``outcomes``, ``window``;
* the metrics ``tenant_notify_failure_rate_alerts_total`` (counter) and
  ``tenant_notify_failure_rate_alert_active`` (gauge, 1 while alerting), both
  labelled ``tenant_id`` and ``channel``, when Prometheus metrics are on: only
  tenants that alert get a series;
* a lifecycle event ``alert.failure_rate`` to the tenant's callback URL and on
  the lifecycle exchange (routing key ``alert.failure_rate``).

The alert clears (log line ``failure_rate_recovered``, the gauge back to 0) once
the rate falls to half the threshold, so a rate hovering at the threshold does
not alert again and again. Each process watches what it records itself: run
the Prometheus rules of ``examples/monitoring/`` for a figure across workers.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import AlertSettings
from ..log import get_logger
from ..models import DeliveryState, DeliveryStatus

__all__ = ["ALERTS", "ALERT_ACTIVE", "FailureRateMonitor"]

ALERTS = "tenant_notify_failure_rate_alerts"
ALERT_ACTIVE = "tenant_notify_failure_rate_alert_active"
_FAILURES = frozenset({DeliveryState.FAILED, DeliveryState.BOUNCED})
_BUCKETS = 30  # a window is kept as this many counts, not one entry per outcome


class _Window:
    __slots__ = ("active", "buckets")

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque()  # [start, outcomes, failed]
        self.active = False


class FailureRateMonitor:
    """Counts outcomes per (tenant, channel) and says when one crosses the threshold.

    Args:
        settings: ``[events.alerts]``.
        registry: A prometheus-client registry for the alert metrics, or None.
        clock: Seconds, monotonic (tests).
    """

    def __init__(
        self,
        settings: AlertSettings,
        *,
        registry: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._bucket = settings.window / _BUCKETS
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()
        self._log = get_logger()
        self._alerts: Any = None
        self._active: Any = None
        if registry is not None:
            import prometheus_client

            self._alerts = prometheus_client.Counter(
                ALERTS,
                "Failure-rate alerts raised, per tenant and channel.",
                ("tenant_id", "channel"),
                registry=registry,
            )
            self._active = prometheus_client.Gauge(
                ALERT_ACTIVE,
                "1 while a tenant's channel is over its failure-rate threshold.",
                ("tenant_id", "channel"),
                registry=registry,
            )

    def observe(self, status: DeliveryStatus) -> dict[str, Any] | None:
        """Count ``status`` if it is an outcome; the alert's data if it raises one."""
        if status.state is DeliveryState.SENT:
            failed = False
        elif status.state in _FAILURES:
            failed = True
        else:
            return None
        key = (status.tenant_id, status.channel.value)
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(key, _Window())
            buckets = window.buckets
            while buckets and buckets[0][0] <= now - self.settings.window:
                buckets.popleft()
            if not buckets or buckets[-1][0] + self._bucket <= now:
                buckets.append([now, 0, 0])
            buckets[-1][1] += 1
            buckets[-1][2] += failed
            outcomes = int(sum(b[1] for b in buckets))
            failures = int(sum(b[2] for b in buckets))
            rate = failures / outcomes
            threshold = self.settings.failure_rate
            if not window.active and outcomes >= self.settings.min_outcomes and rate >= threshold:
                window.active = True
                raised = True
            elif window.active and rate <= threshold / 2:
                window.active = False
                raised = False
            else:
                return None
        tenant_id, channel = key
        if not raised:
            self._log.info(
                "failure_rate_recovered",
                tenant_id=tenant_id,
                channel=channel,
                failure_rate=round(rate, 4),
            )
            if self._active is not None:
                self._active.labels(tenant_id, channel).set(0)
            return None
        data = {
            "tenant_id": tenant_id,
            "channel": channel,
            "failure_rate": round(rate, 4),
            "failed": failures,
            "outcomes": outcomes,
            "window": self.settings.window,
            "threshold": threshold,
            "raised_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        self._log.warning("failure_rate_alert", **data)
        if self._alerts is not None:
            self._alerts.labels(tenant_id, channel).inc()
            self._active.labels(tenant_id, channel).set(1)
        return data

    def active(self) -> list[tuple[str, str]]:
        """The (tenant, channel) pairs alerting now."""
        with self._lock:
            return sorted(key for key, window in self._windows.items() if window.active)

    def __repr__(self) -> str:
        return (
            f"FailureRateMonitor(rate={self.settings.failure_rate}, "
            f"window={self.settings.window}s, min={self.settings.min_outcomes})"
        )
