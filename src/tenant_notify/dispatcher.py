"""The delivery side of the pipeline: one code path for every transport.

:meth:`Dispatcher.deliver` takes a :class:`~tenant_notify.models.Notification` and
makes one attempt: resolve the tenant, claim the delivery, render, pick the
tenant's provider, send, record the status. It returns an :class:`Outcome` that
tells the transport whether (and when) to try again; the transport only carries
that out, so eager, in-process and Celery deliveries behave the same.

Failover happens here too, within one attempt: when the channel lists fallback
providers and a provider fails in a way that means the message was certainly not
accepted (:attr:`DeliveryError.may_fail_over <tenant_notify.errors.DeliveryError.may_fail_over>`),
the next one is tried at once. After an ambiguous error (perhaps accepted) or a
refused recipient the attempt ends there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import structlog

from . import _call_gate
from ._pool import ProviderPool
from .config import Settings
from .errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    NotifyError,
    PermanentDeliveryError,
    StoreUnavailableError,
    TransientDeliveryError,
)
from .limiting import Account, Pacing, Slot, TenantLimits
from .log import LazyBound, get_logger, mask_recipient
from .metrics import MetricsRecorder, NullMetrics
from .models import (
    Address,
    Channel,
    DeliveryResult,
    DeliveryState,
    DeliveryStatus,
    EmailMessage,
    Message,
    Notification,
    SmsMessage,
    utcnow,
)
from .observers import NullObserver, StatusObserver, notify_observer
from .reputation import Held, Reputation
from .retry import RetryPolicy
from .stores import Claim, ClaimState, IdempotencyStore, StatusStore
from .templates import TemplateRenderer
from .tenants import StaticTenantResolver, Tenant, TenantResolver

__all__ = ["Dispatcher", "Outcome"]

_T = TypeVar("_T")
# error_type of the status abandon() records.
_NOT_ENQUEUED = "EnqueueError"


def _read_pid() -> None:
    global _pid
    _pid = os.getpid()


# The process id, read again in a forked child: os.getpid() is a system call, and
# _Leases.hold asks for every claim.
_pid = os.getpid()
os.register_at_fork(after_in_child=_read_pid)


class _Leases:
    """The delivery claims this process holds, renewed while their attempts run.

    One daemon thread per process (started with the first claim, again in a forked
    child) renews every held lease each third of the lease, in one store call, so
    a live attempt keeps its claim however long its provider takes, and the claim
    of a process that died is free one lease after its last renewal.
    """

    def __init__(self, store: IdempotencyStore, lease: float) -> None:
        self._store = store
        self._lease = lease
        self._held: dict[str, int] = {}  # key -> attempts holding it (a repeat may too)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0
        self._log = get_logger()

    def hold(self, key: str) -> None:
        with self._lock:
            self._held[key] = self._held.get(key, 0) + 1
            if self._pid != _pid:  # the first claim in this process (or a forked child)
                self._pid = _pid
                self._wake = threading.Event()
                threading.Thread(
                    target=self._run, args=(self._wake,), name="tenant-notify-leases", daemon=True
                ).start()

    def drop(self, key: str) -> None:
        with self._lock:
            count = self._held.get(key, 0) - 1
            if count > 0:
                self._held[key] = count
            else:
                self._held.pop(key, None)

    def stop(self) -> None:
        self._wake.set()

    def _run(self, stop: threading.Event) -> None:
        renew = getattr(self._store, "renew", None)
        if renew is None:
            return
        interval = self._lease / 3
        while not stop.wait(interval):
            with self._lock:
                keys = list(self._held)
            if not keys:
                continue
            try:
                lost = renew(keys, self._lease)
            except Exception as err:
                # Redis is out of reach: try again at the next beat (the lease has
                # two more beats' worth left).
                self._log.warning("lease_renew_failed", error=f"{type(err).__name__}: {err}")
                continue
            if lost:
                self._log.warning("lease_lost", claims=len(lost))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one delivery attempt came to.

    Attributes:
        status: The status recorded after the attempt.
        retry_in: Seconds until the next attempt is due, or None for none.
        deferred: True when no attempt was made: the notification waits for a
            tenant limit (``on_limit = "delay"``) or a paused provider account.
            The transport runs the *same* attempt number again after
            ``retry_in`` seconds; nothing was claimed or recorded.
        repeat: True when an earlier delivery of the same notification had already
            finished it (a redelivered message, a repeat of a keyed send): nothing
            was attempted, and ``status`` is that earlier delivery's. A transport
            does nothing more for it (no second dead letter).
    """

    status: DeliveryStatus | None
    retry_in: float | None = None
    deferred: bool = False
    repeat: bool = False


class _Deferred(Exception):
    """The provider account cannot take the call now: defer, no attempt made."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class _CallGate:
    """One provider call's last checks (:mod:`tenant_notify._call_gate`): the
    account's pause right before the request leaves, a throttling recorded the
    moment the provider reads it, and the hand-over recorded right before the
    point of no return.

    Args:
        first: No provider of the chain was called before this one: a pause
            defers the notification (no attempt made) rather than failing over.
        hand_over: Records the hand-over (see :meth:`handing`), or None when the
            idempotency store cannot.
    """

    __slots__ = (
        "_hand_over",
        "_pacing",
        "account",
        "first",
        "handed",
        "looked",
        "provider",
        "stopped",
        "until",
    )

    def __init__(
        self,
        pacing: Pacing,
        account: Account,
        provider: str,
        *,
        first: bool,
        hand_over: Callable[[str], None] | None = None,
    ) -> None:
        self._pacing = pacing
        self._hand_over = hand_over
        self.account = account
        self.provider = provider
        self.first = first
        self.stopped = False  # the call did not go: the account was paused
        self.handed = False  # the hand-over was recorded: the provider may have the message
        self.looked = False  # an announcement on its way in was looked for once
        self.until: float | None = None  # the pause this call recorded: until (monotonic)

    def handing(self) -> None:
        """The provider is about to write its point of no return: record that this
        attempt hands its message to this provider, before the write goes.

        The record is a write the store does not wait for, ordered before the
        attempt's later writes (the Redis store's pipelined writer), so it costs no
        round trip. Should the worker die after it, the redelivered copy finds it
        and ends as ambiguous (:meth:`Dispatcher._handed_over`). Should the worker
        die between this record and the write it announces, the provider never
        had the message but the redelivery reports it ambiguous all the same: a
        loss that is reported, never a silent one, in a window of two system calls
        (the record's write and the provider's).

        Raises:
            TransientDeliveryError: the store could not take the record (Redis
                unreachable): the provider does not write on, nothing is handed
                over, and the attempt is retried.
        """
        if self.handed or self._hand_over is None:
            return
        try:
            self._hand_over(self.provider)
        except StoreUnavailableError as err:
            raise TransientDeliveryError(
                f"not sent: the hand-over could not be recorded ({err})", provider=self.provider
            ) from err
        self.handed = True

    def stop(self, seconds: float) -> NoReturn:
        """Do not call: the account is paused for ``seconds``."""
        self.stopped = True
        if self.first:
            raise _Deferred(seconds)  # no provider called yet: no attempt
        raise TransientDeliveryError(
            "the provider account is paused", provider=self.provider, retry_after=seconds
        )

    def before_request(self) -> None:
        try:
            # From memory while this process listens, and (the first time) an
            # announcement that has reached the process but is not read yet; a
            # second look, after the hand-over, is memory's alone.
            seconds = self._pacing.paused(self.account, latest=not self.looked)
            self.looked = True
        except StoreUnavailableError:
            return  # the checks before the call let it through; do not fail it here
        if seconds is not None:
            self.stop(seconds)

    def throttled(self, retry_after: float | None) -> None:
        with contextlib.suppress(NotifyError):  # record() tries again, and logs
            self.record(retry_after)

    def record(self, retry_after: float | None) -> float:
        """Pause the account for every worker, once for the call's reply (each
        provider reads ``retry_after`` from the same reply's headers); the seconds
        it is paused for.

        Raises:
            StoreUnavailableError: Redis did not answer.
        """
        now = time.monotonic()
        if self.until is None:
            self.until = now + self._pacing.throttled(self.account, retry_after)
        return max(0.0, self.until - now)


class Dispatcher:
    """Delivers notifications; the same object runs under every transport.

    Args:
        tenants: Resolves tenant ids on the delivery side.
        renderer: Renders the tenant's templates.
        providers: Provider instances per tenant and channel.
        status_store: Where statuses are recorded.
        idempotency_store: Guards against delivering one notification twice.
        retry_policy: Decides whether and when to retry.
        idempotency_ttl: How long a completed delivery is remembered.
        delivery_lease: Seconds a delivery claim lasts unless renewed; renewed every
            third of it while the attempt runs, so a dead worker's claim is free
            again within one lease.
        mask_recipients: Mask recipients in log lines.
        metrics: Told the outcome and duration of every attempt (see
            :mod:`tenant_notify.metrics`); records nothing by default.
        observer: Told of every status this dispatcher records (see
            :mod:`tenant_notify.observers`); by default nobody is.
        reputation: Suppression lists, the sender-fault breaker, unsubscribe
            headers and tracking (:mod:`tenant_notify.reputation`); by default
            in memory, with every kind transactional.
        limits: The tenants' limits (:mod:`tenant_notify.limiting`); by default
            none, counted in memory.
        pacing: Pacing per provider account (``max_rate``, learned pauses); by
            default in memory.
    """

    def __init__(
        self,
        *,
        tenants: TenantResolver,
        renderer: TemplateRenderer,
        providers: ProviderPool,
        status_store: StatusStore,
        idempotency_store: IdempotencyStore,
        retry_policy: RetryPolicy,
        idempotency_ttl: float = 86_400.0,
        delivery_lease: float = 15.0,
        mask_recipients: bool = True,
        metrics: MetricsRecorder | None = None,
        observer: StatusObserver | None = None,
        reputation: Reputation | None = None,
        limits: TenantLimits | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        self.tenants = tenants
        self.renderer = renderer
        self.providers = providers
        self.status_store = status_store
        self.idempotency_store = idempotency_store
        self.retry_policy = retry_policy
        self.idempotency_ttl = idempotency_ttl
        self.delivery_lease = delivery_lease
        self._leases = _Leases(idempotency_store, delivery_lease)
        self._mask = mask_recipient if mask_recipients else str
        self._log = get_logger()
        self.metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self.observer: StatusObserver = observer if observer is not None else NullObserver()
        # A recorder that can also export the template caches (Prometheus) is given them.
        watch = getattr(self.metrics, "watch_template_caches", None)
        if watch is not None:
            watch(renderer)
        self.reputation = reputation or Reputation(Settings(), metrics=self.metrics)
        self.reputation.observer = self.observer
        self.limits = limits or TenantLimits(metrics=self.metrics)
        self.pacing = pacing or Pacing(metrics=self.metrics)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        tenants: TenantResolver,
        status_store: StatusStore,
        idempotency_store: IdempotencyStore,
        metrics: MetricsRecorder | None = None,
        observer: StatusObserver | None = None,
    ) -> Dispatcher:
        """Build a dispatcher (renderer, provider pool, policy) from settings.

        Without ``observer``, the lifecycle events ``[events]`` asks for
        (callbacks, the lifecycle exchange, alerts), if any.
        """
        from .stores.redis import RedisStatusStore

        # Counted where the statuses are: in Redis, every process counts together.
        client = status_store.client if isinstance(status_store, RedisStatusStore) else None
        if observer is None:
            from .events.lifecycle import LifecycleEvents

            observer = LifecycleEvents.from_settings(
                settings, tenants, registry=getattr(metrics, "registry", None)
            )
        return cls(
            tenants=tenants,
            renderer=TemplateRenderer(
                settings.templates_dir,
                max_output_chars=settings.templates.max_output_chars,
                render_timeout=settings.templates.render_timeout,
                auto_reload=settings.templates.auto_reload,
                cache_size=settings.templates.cache_size,
            ),
            providers=ProviderPool.from_settings(settings),
            status_store=status_store,
            idempotency_store=idempotency_store,
            retry_policy=RetryPolicy.from_settings(settings.retry),
            idempotency_ttl=settings.idempotency.ttl,
            delivery_lease=settings.idempotency.lease,
            mask_recipients=settings.mask_recipients,
            metrics=metrics,
            observer=observer,
            reputation=Reputation.from_settings(settings, status_store, metrics=metrics),
            limits=TenantLimits(
                settings.limits,
                client=client,
                key_prefix=settings.redis.key_prefix,
                metrics=metrics,
            ),
            pacing=Pacing(client=client, key_prefix=settings.redis.key_prefix, metrics=metrics),
        )

    def check_providers(self) -> None:
        """Build-time check of the provider tables: the global ones, and each tenant's
        when the tenants are known up front (a static resolver).

        Raises:
            ConfigurationError: naming the key at fault.
        """
        self.providers.check()
        if isinstance(self.tenants, StaticTenantResolver):
            for tenant in self.tenants:
                self.providers.check(tenant)

    # --- one attempt -----------------------------------------------------------------

    def deliver(self, notification: Notification, attempt: int = 1) -> Outcome:
        """Make delivery attempt number ``attempt`` of ``notification``.

        Never raises for a delivery problem: every failure is recorded in the
        status store and reported through the returned :class:`Outcome`.
        """
        # What structlog.contextvars.bound_contextvars does, restored from the tokens
        # instead of a copy of every context variable taken first.
        tokens = structlog.contextvars.bind_contextvars(
            tenant_id=notification.tenant_id, notification_id=notification.id
        )
        try:
            return self._deliver(notification, attempt)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    def _deliver(self, notification: Notification, attempt: int) -> Outcome:
        log = LazyBound(
            self._log,
            tenant_id=notification.tenant_id,
            notification_id=notification.id,
            kind=notification.kind,
            channel=notification.channel.value,
            attempt=attempt,
        )
        deferred, tenant, account = self._admission(notification, log)
        if deferred is not None:
            return deferred
        claim_key = f"delivery:{notification.id}"
        # On one Redis, the claim reads the reputation's pause and suppression entries
        # too: one round trip for both.
        reads = self.reputation.hold_reads(notification, self.idempotency_store)
        if reads:
            store: Any = self.idempotency_store
            claim = store.claim(claim_key, self.delivery_lease, reads=reads)
        else:
            claim = self.idempotency_store.claim(claim_key, self.delivery_lease)
        if claim.state is ClaimState.DONE:
            log.info("notification_already_delivered")
            return Outcome(self.status_store.get(notification.id), repeat=True)
        if claim.state is ClaimState.BUSY:
            log.info("notification_delivery_in_progress", retry_in=round(claim.retry_in, 3))
            return Outcome(self.status_store.get(notification.id), retry_in=claim.retry_in)
        self._leases.hold(claim_key)
        try:
            return self._attempt(notification, attempt, claim, claim_key, log, tenant, account)
        except StoreUnavailableError:
            # Redis failed before anything was sent: give the claim back if it can
            # be (else its lease runs out), and let the transport redeliver.
            try:
                self.idempotency_store.release(claim_key)
            except NotifyError:
                log.warning("claim_release_failed")
            raise
        finally:
            self._leases.drop(claim_key)

    def _attempt(
        self,
        notification: Notification,
        attempt: int,
        claim: Claim,
        claim_key: str,
        log: Any,
        tenant: Tenant | None = None,
        account: Account | None = None,
    ) -> Outcome:
        # What the last attempt recorded, read with the claim when the store can.
        previous = claim.status if claim.status_read else self.status_store.get(notification.id)
        # (A ``failed`` the caller's side recorded because the broker never
        # confirmed the message does not count: the message did arrive.)
        if previous is not None and previous.is_final and previous.error_type != _NOT_ENQUEUED:
            # An earlier attempt completed (its status landed, but the claim's
            # completion did not, or this is a repeat of a finished send): do not
            # send again.
            log.info("notification_already_delivered", state=previous.state.value)
            self._settle(
                lambda: self.idempotency_store.complete(claim_key, self.idempotency_ttl), log
            )
            return Outcome(previous, repeat=True)
        current = previous if previous is not None else DeliveryStatus.queued(notification)
        if claim.handed is not None:
            return self._handed_over(notification, current, attempt, claim, claim_key, log)
        status = current.evolve(state=DeliveryState.SENDING, attempts=attempt, next_attempt_at=None)
        self._record(status)
        started = time.perf_counter()
        # Suppressed recipient or paused channel: settle it without a provider call.
        held = self.reputation.hold(notification, claim.reads)
        if held is not None:
            return self._held(notification, status, held, claim_key, log, started)
        tried: list[str] = []  # provider names, as they are tried
        paused: list[DeliveryError] = []  # throttlings whose pause every worker knows now
        provider_name: str | None = None
        try:
            if tenant is None:  # admission could not resolve it: the error is recorded here
                tenant = self.tenants.get(notification.tenant_id)
            chain = self.providers.chain(tenant, notification.channel, notification.options)
            provider_name = chain[0][1]
            message = self.build_message(notification, tenant)
            if isinstance(message, EmailMessage):
                native = self.providers.tracking(tenant, notification.channel)
                message = self.reputation.decorate(message, notification, tenant, native)
            result = self._send(
                tenant, notification.channel, chain, message, tried, log, account, paused, claim_key
            )
        except _Deferred as wait:
            return self._deferred(notification, current, claim_key, wait.seconds, log)
        except StoreUnavailableError:
            # Redis out of reach before any provider had the message (a fallback
            # provider's max_rate turn, a resolver or renderer reading Redis); a
            # provider's own hand-over turns it into a TransientDeliveryError, and
            # nothing after a call raises it. Nothing was sent: _deliver gives the
            # claim back and the transport redelivers. Recorded as a failure, a
            # passing Redis fault would dead-letter the notification.
            raise
        except NotifyError as err:
            if isinstance(err, DeliveryError) and any(err is known for known in paused):
                # Throttled, and the pause is known everywhere: wait for its end
                # like every notification behind it; not an attempt spent.
                return self._throttled(notification, status, err, claim_key, log, started)
            if isinstance(err, DeliveryError) and err.provider is not None:
                provider_name = err.provider
            elif tried:
                provider_name = tried[-1]
            return self._failed(
                notification, status, attempt, err, provider_name, claim_key, log, started
            )
        except Exception as err:
            provider_name = tried[-1] if tried else provider_name
            # A bug in a provider or a resolver: record it rather than lose the
            # notification, and log the traceback for whoever owns that code.
            log.exception("delivery_crashed", provider=provider_name)
            wrapped = PermanentDeliveryError(
                f"unexpected {type(err).__name__}: {err}", provider=provider_name
            )
            return self._failed(
                notification, status, attempt, wrapped, provider_name, claim_key, log, started
            )

        status = status.evolve(
            state=DeliveryState.SENT,
            provider=result.provider,
            provider_message_id=result.provider_message_id,
            error=None,
            error_type=None,
        )
        self._complete(claim_key, status, log)
        log.info(
            "notification_sent",
            provider=result.provider,
            provider_message_id=result.provider_message_id,
            to=self._mask(notification.to),
        )
        self._observe(notification, result.provider, DeliveryState.SENT, started, log)
        return Outcome(status)

    def _handed_over(
        self,
        notification: Notification,
        current: DeliveryStatus,
        attempt: int,
        claim: Claim,
        claim_key: str,
        log: Any,
    ) -> Outcome:
        """An earlier claim of this notification handed it to a provider and then
        recorded nothing: its worker died (or lost its lease) after the point of no
        return, before the provider's reply was recorded. The provider may have the
        message, exactly as after a connection dropped after the final dot: end it
        the same way, with an :class:`AmbiguousDeliveryError` that the retry policy
        retries only with ``retry_ambiguous``."""
        provider = claim.handed or None
        error = AmbiguousDeliveryError(
            f"the worker of an earlier attempt stopped after handing the message to "
            f"{provider or 'the provider'} and before its reply was recorded: "
            "it may have been sent",
            provider=provider,
        )
        log.warning("earlier_attempt_handed_over", provider=provider)
        status = current.evolve(attempts=max(attempt, current.attempts), next_attempt_at=None)
        started = time.perf_counter()
        return self._failed(notification, status, attempt, error, provider, claim_key, log, started)

    def _admission(
        self, notification: Notification, log: Any
    ) -> tuple[Outcome | None, Tenant | None, Account | None]:
        """Whether ``notification`` must wait before an attempt: for its tenant's
        limit (``on_limit = "delay"``) or for its provider account's pause.

        Returns:
            A deferred Outcome or None to go ahead; with the tenant and the
            channel's provider account, resolved once for the attempt too
            (None when they cannot be: the attempt records that problem).
        """
        try:
            tenant = self.tenants.get(notification.tenant_id)
            account = self.providers.account(tenant, notification.channel)
        except NotifyError:
            return None, None, None
        paused = self.pacing.paused(account)  # from memory while no account is paused
        if paused is not None:
            log.info("delivery_deferred", reason="provider_paused", retry_in=round(paused, 3))
            return self._defer_for(notification, paused), tenant, account
        limited = self.limits.admit(tenant, notification.channel)
        if limited is not None:
            limited += random.uniform(0, min(1.0, max(limited, 0.05)))
            log.info("delivery_deferred", reason="tenant_limit", retry_in=round(limited, 3))
            outcome = Outcome(self._current(notification), retry_in=limited, deferred=True)
            return outcome, tenant, account
        # The channel's own provider's max_rate turn (a short wait happens here).
        turn = self.pacing.acquire(account)
        if turn is not None:
            log.info("delivery_deferred", reason="provider_max_rate", retry_in=round(turn, 3))
            outcome = Outcome(self._current(notification), retry_in=turn, deferred=True)
            return outcome, tenant, account
        return None, tenant, account

    def _defer_for(self, notification: Notification, paused: float) -> Outcome:
        # Spread the comeback over a little time: not every worker at once.
        wait = paused + random.uniform(0, min(1.0, paused / 10))
        return Outcome(self._current(notification), retry_in=wait, deferred=True)

    def _deferred(
        self,
        notification: Notification,
        before: DeliveryStatus,
        claim_key: str,
        paused: float,
        log: Any,
    ) -> Outcome:
        """The account was paused (or its probe was out) when the call was due:
        put the status back as it was, free the claim, come back after the pause."""
        wait = paused + random.uniform(0, min(1.0, paused / 10))
        self._release(claim_key, before, log)
        log.info("delivery_deferred", reason="provider_paused", retry_in=round(wait, 3))
        return Outcome(before, retry_in=wait, deferred=True)

    def _throttled(
        self,
        notification: Notification,
        status: DeliveryStatus,
        error: DeliveryError,
        claim_key: str,
        log: Any,
        started: float,
    ) -> Outcome:
        """The provider throttled this call and every worker knows the pause now:
        retry after it as the same attempt (a throttling is no failed attempt)."""
        paused = error.retry_after if error.retry_after is not None else 0.0
        wait = paused + random.uniform(0, min(1.0, max(paused, 0.05) / 10))
        status = status.evolve(
            state=DeliveryState.RETRYING,
            provider=error.provider,
            error=str(error),
            error_type=type(error).__name__,
            next_attempt_at=utcnow() + dt.timedelta(seconds=wait),
        )
        self._release(claim_key, status, log)
        log.warning(
            "delivery_throttled",
            provider=error.provider,
            error=str(error),
            retry_in=round(wait, 3),
        )
        self._observe(notification, error.provider, DeliveryState.RETRYING, started, log)
        return Outcome(status, retry_in=wait, deferred=True)

    def _record(self, status: DeliveryStatus) -> None:
        """Save ``status`` and tell the observer."""
        self.status_store.save(status)
        notify_observer(self.observer, status)

    def _complete(self, claim_key: str, status: DeliveryStatus, log: Any) -> None:
        """Mark the claim done and record the final ``status``, held until both land."""

        def write() -> None:
            self.idempotency_store.complete(claim_key, self.idempotency_ttl)
            self.status_store.save(status)

        self._settle(write, log)
        notify_observer(self.observer, status)

    def _release(self, claim_key: str, status: DeliveryStatus, log: Any) -> None:
        """Record ``status`` and free the claim (a later attempt may take it), held
        until both land; then tell the observer."""

        def write() -> None:
            # The status first: once the claim is free, a repeat may take it.
            self.status_store.save(status)
            self.idempotency_store.release(claim_key)

        self._settle(write, log)
        notify_observer(self.observer, status)

    def _settle(self, write: Callable[[], _T], log: Any) -> _T:
        """Run ``write`` (writes that record how an attempt ended) until the store
        answers.

        Once a provider has been called, losing the record of it would have the
        redelivered message sent again; so the attempt holds (and with it the
        broker's message, unacknowledged) until the store takes the writes. The
        lease heartbeat keeps the claim meanwhile; a worker's hard time limit is
        the bound.
        """
        delay = 0.05
        while True:
            try:
                return write()
            except StoreUnavailableError as err:
                log.warning("completion_write_retry", error=str(err), retry_in=delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _observe(
        self,
        notification: Notification,
        provider: str | None,
        outcome: DeliveryState | str,
        started: float,
        log: Any,
    ) -> None:
        try:
            self.metrics.observe_attempt(
                kind=notification.kind,
                channel=notification.channel.value,
                provider=provider or "none",
                outcome=str(outcome),
                seconds=time.perf_counter() - started,
            )
        except Exception:
            # The status is recorded already; a broken recorder must not turn
            # a delivery into a failure (or a retry into a second send).
            log.exception("metrics_failed")

    def _send(
        self,
        tenant: Tenant,
        channel: Channel,
        chain: tuple[tuple[int, str], ...],
        message: Message,
        tried: list[str],
        log: Any,
        primary: Account | None = None,
        paused: list[DeliveryError] | None = None,
        claim_key: str | None = None,
    ) -> DeliveryResult:
        """Send through the channel's provider, failing over down ``chain``
        (``(position, name)`` pairs from :meth:`ProviderPool.chain`).

        With ``claim_key``, each provider call records its hand-over on that
        claim (see :meth:`_CallGate.handing`) when the idempotency store can.

        Raises:
            DeliveryError: every provider tried failed. Which error is raised
                decides what happens next: the first one the retry policy would
                retry (a later attempt starts again at the first provider), else
                the last one.
        """
        errors: list[DeliveryError] = []
        hand_over = self._hand_over(claim_key)
        for index, (position, name) in enumerate(chain):
            tried.append(name)
            if position == 0 and primary is not None:
                account = primary  # resolved at admission
            else:
                account = self.providers.account(tenant, channel, position)
            slot: float | Slot | None = None
            gate = _CallGate(self.pacing, account, name, first=not errors, hand_over=hand_over)
            try:
                if position:  # the channel's own provider had its turn at admission
                    self._pace(account)
                # Paused since admission, or coming back from a pause (one probe first)?
                slot = self.pacing.before_call(account)
                if isinstance(slot, float):
                    gate.stop(slot)
                # The provider checks again right before its request leaves, and
                # records a throttling the moment it reads one (HTTP providers).
                with _call_gate.gated(gate):
                    result = self.providers.get(tenant, channel, position).send(message)
            except DeliveryError as err:
                if err.provider is None:
                    err.provider = name
                if err.throttled:
                    # Every worker waits for the account now, not only this attempt.
                    try:
                        err.retry_after = gate.record(err.retry_after)
                        if paused is not None:
                            paused.append(err)
                    except NotifyError:
                        # Unrecorded, the pause is this attempt's alone; it still retries.
                        log.exception("provider_pause_not_recorded", provider=name)
                if isinstance(slot, Slot):
                    # A call the gate stopped said nothing of the limit.
                    self.pacing.after_call(slot, throttled=err.throttled, answered=not gate.stopped)
                errors.append(err)
                if index + 1 == len(chain) or not err.may_fail_over:
                    break
                if gate.handed and claim_key is not None:
                    # Certainly not accepted: a worker dying from here on must not
                    # have its redelivery take this provider's refusal for a maybe.
                    self._take_back(claim_key, log)
                log.warning(
                    "provider_failover",
                    provider=name,
                    next_provider=chain[index + 1][1],
                    error=str(err),
                    error_type=type(err).__name__,
                )
                continue
            except BaseException:
                if isinstance(slot, Slot):
                    self.pacing.after_call(slot, answered=False)
                raise
            if isinstance(slot, Slot):
                self.pacing.after_call(slot)
            return result
        raise next((err for err in errors if self.retry_policy.is_retryable(err)), errors[-1])

    def _hand_over(self, claim_key: str | None) -> Callable[[str], None] | None:
        """What records a provider call's hand-over on ``claim_key``, if the store can."""
        mark = getattr(self.idempotency_store, "mark_handed", None)
        if claim_key is None or mark is None:
            return None
        ttl = self.idempotency_ttl

        def hand_over(provider: str) -> None:
            mark(claim_key, provider, ttl)

        return hand_over

    def _take_back(self, claim_key: str, log: Any) -> None:
        clear = getattr(self.idempotency_store, "clear_handed", None)
        if clear is None:
            return
        try:
            clear(claim_key)
        except StoreUnavailableError:
            # Kept, a redelivery after a crash would say "ambiguous" of a message
            # no provider took: reported, not lost in silence.
            log.warning("hand_over_not_cleared")

    def _pace(self, account: Account) -> None:
        """Wait for ``account``'s ``max_rate`` turn; one too far off is a throttling."""
        wait = self.pacing.acquire(account)
        if wait is not None:
            raise TransientDeliveryError(
                f"over the provider account's max_rate of {account.max_rate}",
                provider=account.provider,
                retry_after=wait,
            )

    def _held(
        self,
        notification: Notification,
        status: DeliveryStatus,
        held: Held,
        claim_key: str,
        log: Any,
        started: float,
    ) -> Outcome:
        # Final: a redelivery of this message must not send it either.
        status = status.evolve(
            state=held.state,
            error=str(held.error),
            error_type=type(held.error).__name__,
            next_attempt_at=None,
        )
        self._complete(claim_key, status, log)
        suppressed = held.state is DeliveryState.SUPPRESSED
        log.warning(
            "notification_suppressed" if suppressed else "notification_paused",
            error=str(held.error),
            to=self._mask(notification.to),
        )
        self._observe(notification, None, held.state if suppressed else "paused", started, log)
        return Outcome(status)

    def _failed(
        self,
        notification: Notification,
        status: DeliveryStatus,
        attempt: int,
        error: NotifyError,
        provider_name: str | None,
        claim_key: str,
        log: Any,
        started: float,
    ) -> Outcome:
        retry_in = self.retry_policy.delay_for(attempt, error)
        reason = str(error)
        if retry_in is not None:
            status = status.evolve(
                state=DeliveryState.RETRYING,
                provider=provider_name,
                error=reason,
                error_type=type(error).__name__,
                next_attempt_at=utcnow() + dt.timedelta(seconds=retry_in),
            )
            self._release(claim_key, status, log)
            log.warning(
                "delivery_retry_scheduled",
                provider=provider_name,
                error=reason,
                retry_in=round(retry_in, 3),
            )
            self._observe(notification, provider_name, DeliveryState.RETRYING, started, log)
            self._after_failure(notification, error, log)
            return Outcome(status, retry_in=retry_in)
        status = status.evolve(
            state=DeliveryState.FAILED,
            provider=provider_name,
            error=reason,
            error_type=type(error).__name__,
            next_attempt_at=None,
        )
        if (
            isinstance(error, DeliveryError)
            and not isinstance(error, AmbiguousDeliveryError)
            and notification.idempotency_key is None
        ):
            # Certainly not accepted: a replayed dead letter may go through.
            self._release(claim_key, status, log)
        else:
            # Perhaps accepted, never sendable, or the key's first send (a failed
            # send keeps its key): a redelivery or a repeat must not try again.
            self._complete(claim_key, status, log)
        log.error(
            "delivery_failed",
            provider=provider_name,
            error=reason,
            error_type=type(error).__name__,
            to=self._mask(notification.to),
        )
        self._observe(notification, provider_name, DeliveryState.FAILED, started, log)
        self._after_failure(notification, error, log)
        return Outcome(status)

    def _after_failure(self, notification: Notification, error: NotifyError, log: Any) -> None:
        try:
            self.reputation.after_failure(notification, error)
        except NotifyError:
            # The status is recorded; a breaker or a list that cannot be written
            # must not turn the failure into a redelivery.
            log.exception("reputation_update_failed")

    def abandon(self, notification: Notification, reason: str) -> None:
        """Record that ``notification`` will not be attempted again (shutdown)."""
        status = self._current(notification).evolve(
            state=DeliveryState.FAILED,
            error=reason,
            error_type=_NOT_ENQUEUED,
            next_attempt_at=None,
        )
        self._record(status)
        self._log.error(
            "delivery_abandoned",
            tenant_id=notification.tenant_id,
            notification_id=notification.id,
            kind=notification.kind,
            error=reason,
        )

    def _current(self, notification: Notification) -> DeliveryStatus:
        return self.status_store.get(notification.id) or DeliveryStatus.queued(notification)

    # --- rendering -------------------------------------------------------------------

    def template_context(
        self, notification: Notification, tenant: Tenant, locale: str
    ) -> dict[str, Any]:
        """What the templates of ``notification`` see."""
        context = notification.template_context()
        context["tenant"] = tenant.template_view()
        context["locale"] = locale
        return context

    def build_message(self, notification: Notification, tenant: Tenant) -> Message:
        """Render ``notification`` with ``tenant``'s templates into a message."""
        locale = notification.locale or tenant.locale
        context = self.template_context(notification, tenant, locale)
        common: Mapping[str, Any] = {
            "notification_id": notification.id,
            "tenant_id": tenant.id,
            "kind": notification.kind,
        }
        if notification.channel is Channel.SMS:
            if tenant.sms_from is None:
                raise ConfigurationError(
                    "the tenant has no sms_from", key=f"tenants.{tenant.id}.sms_from"
                )
            body = self.renderer.render_sms(
                notification.kind, context, templates_dir=tenant.templates_dir, locale=locale
            )
            return SmsMessage(from_number=tenant.sms_from, to=notification.to, body=body, **common)
        sender = tenant.sender
        if sender is None:
            raise ConfigurationError(
                "the tenant has no email_from", key=f"tenants.{tenant.id}.email_from"
            )
        rendered = self.renderer.render_email(
            notification.kind, context, templates_dir=tenant.templates_dir, locale=locale
        )
        message = EmailMessage(
            from_addr=sender,
            to=(Address(notification.to),),
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            reply_to=tenant.reply_to,
            **common,
        )
        return notification.options.apply(message) if notification.options else message

    def close(self) -> None:
        """Close every provider and the renderer; let the observer finish."""
        self._leases.stop()
        self.pacing.close()
        try:
            self.observer.close()
        finally:
            self.providers.close()
            self.renderer.close()
            self.reputation.close()
