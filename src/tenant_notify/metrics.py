"""Delivery metrics: an attempt counter and a latency histogram, for Prometheus.

Off unless asked for: ``Notifier(settings, metrics=True)`` or the setting
``metrics = true`` (``TENANT_NOTIFY_METRICS=true``) records into
prometheus-client's default registry; ``metrics=<CollectorRegistry>`` into that
registry; any object with an ``observe_attempt`` method (a
:class:`MetricsRecorder`) receives the figures itself. Prometheus needs the extra
``tenant-notify[metrics]``; without it, asking for metrics is a
:class:`~tenant_notify.errors.ConfigurationError` when the notifier is built.
Left off, the dispatcher calls a recorder that does nothing, and
prometheus-client is never imported.

The :class:`~tenant_notify.dispatcher.Dispatcher` reports every delivery attempt
once, with the labels ``kind``, ``channel``, ``provider`` (the one that took the
message or whose error ended the attempt; ``"none"`` when none was reached) and
``outcome`` (``sent``, ``retrying``, ``failed``, ``suppressed``, ``paused``).
Never by recipient or tenant: those would make one time series per address or
per customer.

* ``tenant_notify_delivery_attempts_total``: a counter.
* ``tenant_notify_delivery_duration_seconds``: a histogram of how long the
  attempt took (render, send, failover included).

The template renderer's caches are exported too, read when Prometheus scrapes
(nothing is counted on the delivery path for them), labelled ``cache``
(``templates``, ``lookups``, ``kinds``; see
:meth:`~tenant_notify.templates.TemplateRenderer.cache_stats`) and summed over
the notifiers of the process: ``tenant_notify_template_cache_hits_total``,
``tenant_notify_template_cache_misses_total`` (counters),
``tenant_notify_template_cache_entries`` and
``tenant_notify_template_cache_max_entries`` (gauges).

Two counters are by tenant, because what they count is about one tenant's
reputation and is rare next to deliveries (see ``docs/deliverability.md`` and
``docs/tracking.md``):

* ``tenant_notify_sender_pauses_total`` (``tenant_id``, ``channel``): the
  sender-fault breaker paused that tenant's channel.
* ``tenant_notify_engagement_events_total`` (``tenant_id``, ``kind``, ``event``:
  ``opened`` or ``clicked``): opens and clicks of tracked emails.

Two are by tenant because they are about fairness between tenants (see
``docs/workers.md#fairness-across-tenants``); one series per tenant is the point:

* ``tenant_notify_backlog`` (``tenant_id``): a gauge, read at scrape time, of
  the notifications waiting for delivery: in the in-process queue, or on a
  Celery worker, those in the tenant's broker queue (the ``[celery] fair``
  queues; the shared queue counts as ``tenant_id="*"``) plus those the worker
  holds. Summed over the transports and workers of the process.
* ``tenant_notify_queue_wait_seconds`` (``tenant_id``): a histogram of how long
  a notification waited between being queued (or falling due, for a retry or
  a delayed one) and a worker starting its attempt.

Limits and pacing (``docs/workers.md``):

* ``tenant_notify_rate_limited_total`` (``tenant_id``, ``channel``, ``limit``:
  ``email``, ``sms``, ``email_daily`` or ``sms_daily``; ``action``: ``raised``
  at the call or ``delayed`` on the delivery side): sends over a tenant's limit.
* ``tenant_notify_provider_pauses_total`` (``provider``): a provider throttled
  an account and its deliveries were paused.
* ``tenant_notify_provider_paused_seconds`` (``provider``, ``account``): a gauge,
  the seconds left of the last pause this process recorded, read at scrape time
  (0 once over); ``account`` is a digest of the provider settings, no secret.

A recipient of one's own needs only ``observe_attempt``; ``observe_pause``,
``observe_engagement``, ``observe_rate_limited`` and ``observe_provider_pause``
are called when it has them.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Final, Protocol, runtime_checkable

from .errors import ConfigurationError
from .log import get_logger

__all__ = [
    "ATTEMPTS",
    "BACKLOG",
    "CACHE_ENTRIES",
    "CACHE_HITS",
    "CACHE_MAX_ENTRIES",
    "CACHE_MISSES",
    "DURATION",
    "ENGAGEMENT",
    "LABELS",
    "PAUSES",
    "PROVIDER_PAUSED",
    "PROVIDER_PAUSES",
    "QUEUE_WAIT",
    "RATE_LIMITED",
    "MetricsRecorder",
    "NullMetrics",
    "PrometheusMetrics",
    "observe_engagement",
    "observe_pause",
    "observe_queue_wait",
    "resolve_metrics",
    "watch_backlog",
]

ATTEMPTS: Final = "tenant_notify_delivery_attempts"
DURATION: Final = "tenant_notify_delivery_duration_seconds"
LABELS: Final = ("kind", "channel", "provider", "outcome")
CACHE_HITS: Final = "tenant_notify_template_cache_hits"
CACHE_MISSES: Final = "tenant_notify_template_cache_misses"
CACHE_ENTRIES: Final = "tenant_notify_template_cache_entries"
CACHE_MAX_ENTRIES: Final = "tenant_notify_template_cache_max_entries"
PAUSES: Final = "tenant_notify_sender_pauses"
ENGAGEMENT: Final = "tenant_notify_engagement_events"
BACKLOG: Final = "tenant_notify_backlog"
QUEUE_WAIT: Final = "tenant_notify_queue_wait_seconds"
# Time in a queue: nothing (an idle worker) to hours (a backlog, a delayed send).
WAIT_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0
)  # fmt: skip
RATE_LIMITED: Final = "tenant_notify_rate_limited"
PROVIDER_PAUSES: Final = "tenant_notify_provider_pauses"
PROVIDER_PAUSED: Final = "tenant_notify_provider_paused_seconds"
# Provider calls: a few milliseconds (memory, a local relay) to a minute (a slow API's timeout).
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@runtime_checkable
class MetricsRecorder(Protocol):
    """Receives one call per delivery attempt. It must not raise."""

    def observe_attempt(
        self, *, kind: str, channel: str, provider: str, outcome: str, seconds: float
    ) -> None:
        """Record one attempt.

        Args:
            kind: The notification kind.
            channel: ``"email"`` or ``"sms"``.
            provider: Provider name, or ``"none"``.
            outcome: ``"sent"``, ``"retrying"`` or ``"failed"``.
            seconds: How long the attempt took.
        """


class NullMetrics:
    """Records nothing: the default."""

    def observe_attempt(
        self, *, kind: str, channel: str, provider: str, outcome: str, seconds: float
    ) -> None:
        return None

    def __repr__(self) -> str:
        return "NullMetrics()"


class PrometheusMetrics:
    """Counts attempts and observes their duration in a prometheus-client registry.

    Build it with :func:`resolve_metrics`, which makes one per registry: a
    registry refuses a second metric of the same name, and several notifiers in
    one process (tests, one per worker thread) share it.

    Args:
        registry: A ``prometheus_client.CollectorRegistry``; None for the default one.

    Attributes:
        attempts: The ``tenant_notify_delivery_attempts_total`` counter.
        duration: The ``tenant_notify_delivery_duration_seconds`` histogram.
    """

    def __init__(self, registry: Any = None) -> None:
        prometheus_client = _import_prometheus()
        if registry is None:
            registry = prometheus_client.REGISTRY
        self.registry = registry
        self.attempts = prometheus_client.Counter(
            ATTEMPTS, "Delivery attempts of tenant-notify.", LABELS, registry=registry
        )
        self.duration = prometheus_client.Histogram(
            DURATION,
            "How long a tenant-notify delivery attempt took.",
            LABELS,
            registry=registry,
            buckets=BUCKETS,
        )

        self._caches = _TemplateCacheCollector()
        registry.register(self._caches)
        self.pauses = prometheus_client.Counter(
            PAUSES,
            "Pauses of a tenant's channel by the sender-fault breaker.",
            ("tenant_id", "channel"),
            registry=registry,
        )
        self.engagement = prometheus_client.Counter(
            ENGAGEMENT,
            "Opens and clicks of tracked tenant-notify emails.",
            ("tenant_id", "kind", "event"),
            registry=registry,
        )

        self.queue_wait = prometheus_client.Histogram(
            QUEUE_WAIT,
            "How long a tenant-notify notification waited in a queue for a worker.",
            ("tenant_id",),
            registry=registry,
            buckets=WAIT_BUCKETS,
        )
        self._backlogs = _BacklogCollector()
        registry.register(self._backlogs)

        self.rate_limited = prometheus_client.Counter(
            RATE_LIMITED,
            "Sends over a tenant's limit: raised at the call or delayed.",
            ("tenant_id", "channel", "limit", "action"),
            registry=registry,
        )
        self.provider_pauses = prometheus_client.Counter(
            PROVIDER_PAUSES,
            "Pauses of a provider account after a throttling reply.",
            ("provider",),
            registry=registry,
        )
        self._paused_until: dict[tuple[str, str], float] = {}
        self.provider_paused = prometheus_client.Gauge(
            PROVIDER_PAUSED,
            "Seconds left of a provider account's pause (0 when over).",
            ("provider", "account"),
            registry=registry,
        )

    def observe_attempt(
        self, *, kind: str, channel: str, provider: str, outcome: str, seconds: float
    ) -> None:
        labels = (kind, channel, provider, outcome)
        self.attempts.labels(*labels).inc()
        self.duration.labels(*labels).observe(seconds)

    def watch_template_caches(self, renderer: Any) -> None:
        """Export ``renderer.cache_stats()`` with the others, for as long as it lives."""
        self._caches.renderers.add(renderer)

    def observe_pause(self, *, tenant_id: str, channel: str) -> None:
        self.pauses.labels(tenant_id, channel).inc()

    def observe_engagement(self, *, tenant_id: str, kind: str, event: str) -> None:
        self.engagement.labels(tenant_id, kind, event).inc()

    def observe_queue_wait(self, *, tenant_id: str, seconds: float) -> None:
        self.queue_wait.labels(tenant_id).observe(max(0.0, seconds))

    def watch_backlog(self, source: Any) -> None:
        """Export ``source.backlog()`` (tenant id -> waiting) at scrape time, while it lives."""
        self._backlogs.sources.add(source)

    def observe_rate_limited(
        self, *, tenant_id: str, channel: str, limit: str, action: str
    ) -> None:
        self.rate_limited.labels(tenant_id, channel, limit, action).inc()

    def observe_provider_pause(self, *, provider: str, account: str, seconds: float) -> None:
        self.provider_pauses.labels(provider).inc()
        key = (provider, account)
        if key not in self._paused_until:
            until = self._paused_until
            # Read when Prometheus scrapes, so the gauge falls to 0 by itself.
            self.provider_paused.labels(*key).set_function(
                lambda: max(0.0, until.get(key, 0.0) - time.time())
            )
        self._paused_until[key] = time.time() + seconds

    def __repr__(self) -> str:
        return f"PrometheusMetrics(registry={self.registry!r})"


class _BacklogCollector:
    """A prometheus-client collector: the watched queues' backlogs, at scrape time."""

    def __init__(self) -> None:
        self.sources: weakref.WeakSet[Any] = weakref.WeakSet()

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            BACKLOG, "Notifications waiting for delivery, by tenant.", labels=["tenant_id"]
        )
        totals: dict[str, int] = {}
        for source in list(self.sources):
            try:
                backlog = source.backlog()
            except Exception:
                # A broker out of reach must not break the scrape.
                get_logger().debug("metrics_backlog_failed", exc_info=True)
                continue
            for tenant_id, count in backlog.items():
                totals[tenant_id] = totals.get(tenant_id, 0) + count
        for tenant_id, count in sorted(totals.items()):
            family.add_metric([tenant_id], count)
        return [family]


class _TemplateCacheCollector:
    """A prometheus-client collector: the caches of the watched renderers, at scrape time."""

    def __init__(self) -> None:
        self.renderers: weakref.WeakSet[Any] = weakref.WeakSet()

    def describe(self) -> list[Any]:
        return []  # collect() then runs at scrape time only, not on registration

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {
            "hits": CounterMetricFamily(
                CACHE_HITS, "Template cache lookups that found an entry.", labels=["cache"]
            ),
            "misses": CounterMetricFamily(
                CACHE_MISSES, "Template cache lookups that did not.", labels=["cache"]
            ),
            "size": GaugeMetricFamily(
                CACHE_ENTRIES, "Entries in a template cache.", labels=["cache"]
            ),
            "max_size": GaugeMetricFamily(
                CACHE_MAX_ENTRIES, "Most entries a template cache holds.", labels=["cache"]
            ),
        }
        totals: dict[str, dict[str, int]] = {}
        for renderer in list(self.renderers):
            for cache, stats in renderer.cache_stats().items():
                sums = totals.setdefault(cache, dict.fromkeys(families, 0))
                for field in families:
                    sums[field] += getattr(stats, field)
        for cache, sums in sorted(totals.items()):
            for field, family in families.items():
                family.add_metric([cache], sums[field])
        return list(families.values())


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as err:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'tenant-notify[metrics]'", key="metrics"
        ) from err
    return prometheus_client


def observe_pause(recorder: MetricsRecorder, *, tenant_id: str, channel: str) -> None:
    """Tell ``recorder`` of a pause, if it counts them; never raises."""
    _optional(recorder, "observe_pause", tenant_id=tenant_id, channel=channel)


def observe_engagement(recorder: MetricsRecorder, *, tenant_id: str, kind: str, event: str) -> None:
    """Tell ``recorder`` of an open or a click, if it counts them; never raises."""
    _optional(recorder, "observe_engagement", tenant_id=tenant_id, kind=kind, event=event)


def observe_queue_wait(recorder: MetricsRecorder, *, tenant_id: str, seconds: float) -> None:
    """Tell ``recorder`` how long a notification waited, if it counts that; never raises."""
    _optional(recorder, "observe_queue_wait", tenant_id=tenant_id, seconds=seconds)


def watch_backlog(recorder: MetricsRecorder, source: Any) -> None:
    """Have ``recorder`` export ``source.backlog()``, if it exports backlogs."""
    _optional(recorder, "watch_backlog", source=source)


def _optional(recorder: object, name: str, **labels: Any) -> None:
    method = getattr(recorder, name, None)
    if method is None:
        return
    try:
        method(**labels)
    except Exception:
        # A broken recorder must not turn what it observes into a failure.
        get_logger().exception("metrics_failed", metric=name)


_NULL: Final = NullMetrics()
_by_registry: weakref.WeakKeyDictionary[Any, PrometheusMetrics] = weakref.WeakKeyDictionary()
_by_registry_lock = threading.Lock()


def resolve_metrics(option: Any) -> MetricsRecorder:
    """The recorder for a ``metrics=`` option, chosen once when a notifier is built.

    Args:
        option: None or False (record nothing), True (prometheus-client's default
            registry), a ``CollectorRegistry``, or a :class:`MetricsRecorder`.

    Raises:
        ConfigurationError: Prometheus was asked for and prometheus-client is not
            installed, or ``option`` is none of the above.
    """
    if option is None or option is False:
        return _NULL
    if isinstance(option, MetricsRecorder):
        return option
    if option is True:
        registry = _import_prometheus().REGISTRY
    else:
        registry = option
        if not isinstance(registry, _import_prometheus().CollectorRegistry):
            raise ConfigurationError(
                f"{option!r} is not a bool, a prometheus_client.CollectorRegistry or an object "
                "with an observe_attempt method",
                key="metrics",
            )
    with _by_registry_lock:
        recorder = _by_registry.get(registry)
        if recorder is None:
            recorder = _by_registry[registry] = PrometheusMetrics(registry)
        return recorder
