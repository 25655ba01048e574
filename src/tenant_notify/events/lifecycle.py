"""Lifecycle events out: each status change as a signed callback and on a topic exchange.

:class:`LifecycleEvents` is the library's
:class:`~tenant_notify.observers.StatusObserver`. For every status change it is
told of (``queued``, ``sent``, ``failed``, ``delivered``, ``bounced``, ... as
``[events.callbacks] states`` says) it

* POSTs a callback to the tenant's ``[tenants.X.callbacks] url``, following
  `Standard Webhooks <https://www.standardwebhooks.com/>`_: headers
  ``webhook-id`` (the same on every attempt of one callback, so a receiver can
  drop repeats), ``webhook-timestamp`` and ``webhook-signature``
  (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``, keyed with the
  tenant's ``whsec_`` secret, made by the ``standardwebhooks`` package).
  A 5xx, a 429 (its ``Retry-After`` honoured) or a connection error is retried
  with exponential backoff; after ``max_attempts``, or at once on another 4xx,
  the callback is dead-lettered: to ``[events.callbacks] dead_letter_queue`` on
  the broker when there is one, else kept in :attr:`LifecycleEvents.dead_letters`;
  logged as ``callback_dead_lettered`` either way;
* publishes it, as a CloudEvent of type ``tenant_notify.notification.<state>``,
  to ``[events] lifecycle_exchange`` with the routing key ``notification.<state>``.

Opens and clicks of tracked emails (engagement, not state changes) go the same
way as ``notification.opened`` and ``notification.clicked`` when the states list
them, with the status and its ``engagement`` in the data.

``status_changed`` only puts the status on a queue: worker threads of this
object do the rest, so a slow receiver never slows a delivery. Callbacks carry
no recipient, and errors in them are masked.

Body of a callback (``type`` is ``notification.<state>``, or
``alert.failure_rate`` for :mod:`~tenant_notify.events.alerts`)::

    {"type": "notification.sent", "timestamp": "2026-12-01T10:00:01.2+00:00",
     "data": {"notification_id": "...", "tenant_id": "acme", "kind": "order_confirmation",
              "channel": "email", "state": "sent", "attempts": 1, "provider": "smtp",
              "provider_message_id": "...", "error": null, "error_type": null,
              "created_at": "...", "updated_at": "...", "next_attempt_at": null}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import EventsSettings, Settings
from ..errors import EnqueueError, MissingDependencyError, NotifyError
from ..log import get_logger
from ..models import DeliveryStatus
from ..retry import RetryPolicy
from ..tenants import CallbackTarget, StaticTenantResolver, TenantResolver
from ._mask import mask_text
from .envelope import dump_event, new_event

if TYPE_CHECKING:
    from .alerts import FailureRateMonitor
    from .publisher import EventPublisher

__all__ = ["LIFECYCLE_SOURCE", "DeadCallback", "LifecycleEvents", "callback_body"]

#: CloudEvents ``source`` of the lifecycle events on the exchange.
LIFECYCLE_SOURCE = "/tenant-notify"
_USER_AGENT = "tenant-notify-callbacks"
_KEEP_DEAD = 1000


def _standardwebhooks() -> Any:
    try:
        import standardwebhooks
    except ModuleNotFoundError as err:
        raise MissingDependencyError("standardwebhooks", "events", key="events.callbacks") from err
    return standardwebhooks


def _status_data(status: DeliveryStatus) -> dict[str, Any]:
    data = status.to_dict()
    data["notification_id"] = data.pop("id")
    if data["error"]:
        data["error"] = mask_text(data["error"])
    return data


def callback_body(event_type: str, data: Mapping[str, Any], at: dt.datetime) -> bytes:
    """The JSON body of a callback: ``{"type", "timestamp", "data"}``."""
    document = {"type": event_type, "timestamp": at.isoformat(), "data": dict(data)}
    return json.dumps(document, separators=(",", ":"), default=str).encode("utf-8")


@dataclass(frozen=True, slots=True)
class DeadCallback:
    """A callback that was not delivered.

    Attributes:
        webhook_id: Its ``webhook-id``.
        tenant_id: Whose URL it was for.
        url: The URL, without its query (which may hold a token).
        type: ``notification.<state>`` or ``alert.failure_rate``.
        attempts: Attempts made.
        error: The last answer or error (masked).
        body: The JSON body.
    """

    webhook_id: str
    tenant_id: str
    url: str
    type: str
    attempts: int
    error: str
    body: bytes = field(repr=False)


@dataclass(slots=True)
class _Callback:
    webhook_id: str
    tenant_id: str
    target: CallbackTarget
    type: str
    body: bytes
    attempts: int = 0


@dataclass(slots=True)
class _Publish:
    routing_key: str
    body: bytes
    message_id: str
    attempts: int = 0


_Job = DeliveryStatus | tuple[str, dict[str, Any]] | _Callback | _Publish


class LifecycleEvents:
    """Turns status changes into signed callbacks and lifecycle-exchange messages.

    Args:
        tenants: Where each tenant's callback target is found.
        settings: ``[events]`` (callbacks, lifecycle exchange).
        callbacks: Send callbacks at all.
        publisher: For ``lifecycle_exchange``; None publishes nothing.
        dead_letter: For ``[events.callbacks] dead_letter_queue``; None keeps
            dead callbacks in memory only.
        monitor: The failure-rate monitor, if alerts are on.
        client: An ``httpx.Client`` (default: one of its own).
        clock: Seconds, monotonic (tests).
    """

    def __init__(
        self,
        *,
        tenants: TenantResolver,
        settings: EventsSettings,
        callbacks: bool = True,
        publisher: EventPublisher | None = None,
        dead_letter: EventPublisher | None = None,
        monitor: FailureRateMonitor | None = None,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenants = tenants
        self.settings = settings.callbacks
        self.callbacks = callbacks
        self.publisher = publisher
        self.dead_letter = dead_letter
        self.monitor = monitor
        self._client = client
        self._clock = clock
        self._policy = RetryPolicy(
            max_attempts=self.settings.max_attempts,
            initial_delay=self.settings.initial_delay,
            max_delay=self.settings.max_delay,
        )
        self._states = frozenset(self.settings.states)
        self._log = get_logger()
        self._jobs: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._closed = False
        #: Callbacks that could not be delivered (the latest 1,000), newest last.
        self.dead_letters: deque[DeadCallback] = deque(maxlen=_KEEP_DEAD)
        self.dropped = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, tenants: TenantResolver, *, registry: Any = None
    ) -> LifecycleEvents | None:
        """The observer ``settings`` ask for, or None when they ask for none.

        Callbacks are on when ``[events.callbacks] enabled`` says so, or (unset)
        when some static tenant has a ``callbacks`` table.
        """
        events = settings.events
        enabled = events.callbacks.enabled
        if enabled is None:
            enabled = isinstance(tenants, StaticTenantResolver) and any(
                tenant.callbacks is not None for tenant in tenants
            )
        if not (enabled or events.lifecycle_exchange or events.alerts.enabled):
            return None
        from .publisher import EventPublisher

        url = events.broker_url or settings.celery.broker_url
        publisher = dead_letter = None
        if events.lifecycle_exchange:
            publisher = EventPublisher(
                url, events.lifecycle_exchange, timeout=events.publish_timeout, mandatory=False
            )
        broker_known = bool(events.broker_url) or settings.transport.backend == "celery"
        if enabled and events.callbacks.dead_letter_queue and broker_known:
            queue = events.callbacks.dead_letter_queue
            dead_letter = EventPublisher(url, "", timeout=events.publish_timeout, queue=queue)
        monitor = None
        if events.alerts.enabled:
            from .alerts import FailureRateMonitor

            monitor = FailureRateMonitor(events.alerts, registry=registry)
        if enabled:
            _standardwebhooks()  # fail now, naming the extra, not in a thread later
        return cls(
            tenants=tenants,
            settings=events,
            callbacks=enabled,
            publisher=publisher,
            dead_letter=dead_letter,
            monitor=monitor,
        )

    # --- the observer --------------------------------------------------------------

    def status_changed(self, status: DeliveryStatus) -> None:
        """Queue the callbacks and messages ``status`` calls for; return at once."""
        if self.monitor is not None:
            alert = self.monitor.observe(status)
            if alert is not None:
                self._put(("alert.failure_rate", alert))
        if status.state.value in self._states:
            self._put(status)

    def engagement_recorded(self, status: DeliveryStatus, event: str) -> None:
        """Queue ``notification.opened`` / ``notification.clicked`` for ``status`` (its
        ``engagement`` in the data), when ``[events.callbacks] states`` lists the
        event; return at once."""
        if event not in self._states:
            return
        data = _status_data(status)
        data["event"] = event
        data["raised_at"] = dt.datetime.now(dt.UTC).isoformat()
        self._put((f"notification.{event}", data))

    def alert(self, data: dict[str, Any]) -> None:
        """Send a ``alert.failure_rate`` lifecycle event for ``data["tenant_id"]``."""
        self._put(("alert.failure_rate", data))

    def _put(self, job: _Job, delay: float = 0.0) -> None:
        with self._changed:
            if self._closed:
                self._dead(job, "the notifier was closing")
                return
            if len(self._jobs) + self._busy >= self.settings.queue_size:
                self.dropped += 1
                self._log.error(
                    "lifecycle_event_dropped",
                    queue_size=self.settings.queue_size,
                    dropped=self.dropped,
                )
                return
            heapq.heappush(self._jobs, (self._clock() + delay, next(self._seq), job))
            if len(self._threads) < self.settings.workers and self._busy + len(self._jobs) > len(
                self._threads
            ):
                thread = threading.Thread(
                    target=self._work, name="tenant-notify-lifecycle", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._changed.notify()

    # --- the workers ---------------------------------------------------------------

    def _next(self) -> _Job | None:
        with self._changed:
            while True:
                if self._jobs:
                    due = self._jobs[0][0] - self._clock()
                    if due <= 0:
                        self._busy += 1
                        return heapq.heappop(self._jobs)[2]
                    if self._closed:
                        return None
                    self._changed.wait(min(due, 1.0))
                elif self._closed:
                    return None
                else:
                    self._changed.wait(1.0)

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._run(job)
            except Exception:
                self._log.exception("lifecycle_event_crashed")
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()

    def _run(self, job: _Job) -> None:
        if isinstance(job, _Callback):
            self._attempt_callback(job)
        elif isinstance(job, _Publish):
            self._attempt_publish(job)
        elif isinstance(job, DeliveryStatus):
            self._fan_out(
                f"notification.{job.state.value}",
                _status_data(job),
                job.tenant_id,
                identity=(job.id, job.state.value, str(job.attempts)),
                at=job.updated_at,
                state=job.state.value,
            )
        else:
            event_type, data = job
            self._fan_out(
                event_type,
                data,
                data["tenant_id"],
                identity=(event_type, data["tenant_id"], data["channel"], data["raised_at"]),
                at=dt.datetime.fromisoformat(data["raised_at"]),
                state=None,
            )

    def _fan_out(
        self,
        event_type: str,
        data: dict[str, Any],
        tenant_id: str,
        *,
        identity: tuple[str, ...],
        at: dt.datetime,
        state: str | None,
    ) -> None:
        webhook_id = "msg_" + hashlib.sha256("\x00".join(identity).encode()).hexdigest()[:32]
        if self.publisher is not None:
            event = new_event(
                f"tenant_notify.{event_type}",
                data,
                source=LIFECYCLE_SOURCE,
                tenant_id=tenant_id,
                id=webhook_id,
                time=at,
            )
            self._run(_Publish(event_type, dump_event(event), webhook_id))
        if not self.callbacks:
            return
        try:
            target = self.tenants.get(tenant_id).callbacks
        except NotifyError:
            return  # a tenant removed meanwhile has no URL to call
        if target is None:
            return
        if state is not None and target.states is not None and state not in target.states:
            return
        body = callback_body(event_type, data, at)
        self._attempt_callback(_Callback(webhook_id, tenant_id, target, event_type, body))

    def _attempt_callback(self, job: _Callback) -> None:
        job.attempts += 1
        error, retry_after, retryable = self._post(job)
        if error is None:
            self._log.info(
                "callback_delivered",
                tenant_id=job.tenant_id,
                webhook_id=job.webhook_id,
                type=job.type,
                attempts=job.attempts,
            )
            return
        if retryable and job.attempts < self._policy.max_attempts:
            delay = self._policy.backoff(job.attempts)
            if retry_after is not None:
                delay = max(delay, retry_after)
            delay = min(delay, self._policy.max_delay)
            self._log.warning(
                "callback_retry_scheduled",
                tenant_id=job.tenant_id,
                webhook_id=job.webhook_id,
                attempts=job.attempts,
                error=error,
                retry_in=round(delay, 3),
            )
            self._put(job, delay)
            return
        self._dead(job, error)

    def _post(self, job: _Callback) -> tuple[str | None, float | None, bool]:
        """One attempt: (error or None, Retry-After seconds, retryable)."""
        import httpx

        now = dt.datetime.now(dt.UTC)
        secret = job.target.secret.get_secret_value()
        signature = (
            _standardwebhooks().Webhook(secret).sign(job.webhook_id, now, job.body.decode("utf-8"))
        )
        headers = {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            "webhook-id": job.webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        try:
            response = self.client.post(job.target.url, content=job.body, headers=headers)
        except httpx.HTTPError as err:
            return mask_text(f"{type(err).__name__}: {err}"), None, True
        if 200 <= response.status_code < 300:
            return None, None, True
        error = f"HTTP {response.status_code}"
        if response.status_code == 429 or response.status_code >= 500:
            return error, _retry_after(response.headers.get("retry-after")), True
        return error, None, False

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.Client(
                timeout=self.settings.timeout, follow_redirects=False, trust_env=False
            )
        return self._client

    def _attempt_publish(self, job: _Publish) -> None:
        assert self.publisher is not None
        job.attempts += 1
        try:
            self.publisher.publish(job.body, routing_key=job.routing_key, message_id=job.message_id)
        except EnqueueError as err:
            if job.attempts < self._policy.max_attempts:
                self._put(job, self._policy.backoff(job.attempts))
                return
            self._log.error(
                "lifecycle_publish_failed",
                routing_key=job.routing_key,
                message_id=job.message_id,
                attempts=job.attempts,
                error=str(err),
            )

    def _dead(self, job: _Job, error: str) -> None:
        if not isinstance(job, _Callback):
            self._log.error("lifecycle_event_abandoned", error=error)
            return
        url = job.target.url.split("?", 1)[0]
        dead = DeadCallback(
            job.webhook_id, job.tenant_id, url, job.type, job.attempts, error, job.body
        )
        self.dead_letters.append(dead)
        queued = False
        if self.dead_letter is not None:
            try:
                self.dead_letter.publish(
                    job.body,
                    routing_key=self.dead_letter.queue_name or "",
                    content_type="application/json",
                    message_id=job.webhook_id,
                    headers={
                        "x-tenant-notify-reason": error,
                        "x-tenant-notify-tenant": job.tenant_id,
                        "x-tenant-notify-url": url,
                        "x-tenant-notify-attempts": job.attempts,
                        "webhook-id": job.webhook_id,
                    },
                )
                queued = True
            except EnqueueError as err:
                error = f"{error}; the dead-letter queue too: {err}"
        self._log.error(
            "callback_dead_lettered",
            tenant_id=job.tenant_id,
            webhook_id=job.webhook_id,
            type=job.type,
            attempts=job.attempts,
            error=error,
            queue=self.dead_letter.queue_name if queued and self.dead_letter else None,
        )

    # --- shutdown ------------------------------------------------------------------

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no job is due or running (jobs waiting for a retry later
        than ``timeout`` stay); True when everything settled in time."""
        deadline = self._clock() + timeout
        with self._changed:
            while self._busy or self._jobs:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True

    def close(self, timeout: float | None = None) -> None:
        """Finish what is due within ``timeout`` (default 5 s); dead-letter the rest."""
        self.drain(5.0 if timeout is None else timeout)
        with self._changed:
            self._closed = True
            left = [job for _, _, job in self._jobs]
            self._jobs.clear()
            self._changed.notify_all()
        for job in left:
            self._dead(job, "not delivered before the notifier closed")
        for thread in self._threads:
            thread.join(1.0)
        if self._client is not None:
            self._client.close()
        for publisher in (self.publisher, self.dead_letter):
            if publisher is not None:
                publisher.close()

    def __repr__(self) -> str:
        return (
            f"<LifecycleEvents callbacks={self.callbacks} "
            f"exchange={self.publisher.exchange_name if self.publisher else None!r}>"
        )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
