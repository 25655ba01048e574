"""Limits per tenant (``[limits]``) and pacing per provider account (``max_rate``).

Two kinds of counting share one storage, on the `limits`_ package:

* **Tenant limits.** ``[limits]`` applies to every tenant and
  ``[tenants.<id>.limits]`` overrides it key by key::

      [limits]
      email = "100/minute"        # a rate: a moving window
      sms = "10/second"
      email_daily = 50000         # a cap per UTC day
      sms_daily = 2000
      on_limit = "raise"          # or "delay"

  With ``on_limit = "raise"`` a send over a limit raises
  :class:`~tenant_notify.errors.RateLimitedError` at the call (its
  ``retry_after`` says when it would pass) and nothing is queued; sends are
  counted when they are made. With ``"delay"`` the send is queued as usual and
  counted when its delivery comes up: one over a limit waits (it is deferred,
  not failed, and the wait is no delivery attempt) until the limit lets it
  through.

* **Pacing per provider account.** ``max_rate = "14/second"`` on a provider
  table holds every worker's deliveries through that account to the rate
  (a worker thread waits for its turn), and an account the provider throttled
  (:attr:`DeliveryError.throttled <tenant_notify.errors.DeliveryError.throttled>`:
  HTTP 429 with ``Retry-After`` or ``X-RateLimit-Reset``, Twilio 20429, SES
  ``Throttling``) is paused until the time the provider gave (or for
  :data:`DEFAULT_THROTTLE_PAUSE` seconds): deliveries through it are deferred
  until then in every worker, instead of each one meeting the limit.

In process the counts are kept in memory. With shared stores (Redis: the
``celery`` transport) they are kept in Redis under ``[redis] key_prefix``, so
web processes and every worker count together; every count is one atomic
operation there (the package's Lua scripts)::

    <prefix>limits:...                   the package's counters (moving windows, days)
    <prefix>pace:pause:<account>         a paused account: until when (epoch seconds)
    <prefix>pace:pauses                  sorted set of paused accounts by end time
    <prefix>pace:announce                pub/sub: "pause <account> <until>", "open <account>"
    <prefix>pace:probe:<account>         the process whose call goes first after a pause

.. _limits: https://limits.readthedocs.io/
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import _process
from .errors import ConfigurationError, RateLimitedError, StoreUnavailableError
from .log import get_logger
from .models import Channel

if TYPE_CHECKING:
    import redis

    from .tenants import Tenant

__all__ = [
    "DEFAULT_THROTTLE_PAUSE",
    "Account",
    "LimitSettings",
    "Pacing",
    "Slot",
    "TenantLimits",
    "parse_rate",
]

#: Seconds an account is paused after a throttling reply that says no time.
DEFAULT_THROTTLE_PAUSE = 1.0
#: A worker thread waits this long at most for a ``max_rate`` token; a longer
#: wait defers the notification instead of holding the thread.
MAX_PACING_WAIT = 5.0
# Storages are made on first use, which may be in several worker threads at once.
_INIT_LOCK = threading.Lock()


def parse_rate(value: str) -> Any:
    """``"14/second"``, ``"100/minute"``, ``"10 per 1 second"`` as a rate item of the
    `limits` package.

    Raises:
        ValueError: not a rate.
    """
    import limits

    try:
        items = limits.parse_many(value)
    except ValueError:
        items = []
    if len(items) != 1:
        raise ValueError(
            f"{value!r} is not a rate: write it as '<count>/<second|minute|hour|day>', "
            "such as '100/minute'"
        )
    return items[0]


class LimitSettings(BaseModel):
    """``[limits]`` (every tenant) or ``[tenants.<id>.limits]`` (one tenant's keys
    over it).

    Attributes:
        email: Rate of email sends, ``"<count>/<second|minute|hour|day>"``.
        sms: Rate of SMS sends.
        email_daily: Emails per UTC day.
        sms_daily: SMS messages per UTC day.
        on_limit: ``"raise"``: a send over a limit raises RateLimitedError at the
            call, nothing queued. ``"delay"``: it is queued and goes out when the
            limit allows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str | None = None
    sms: str | None = None
    email_daily: int | None = Field(default=None, ge=0)
    sms_daily: int | None = Field(default=None, ge=0)
    on_limit: Literal["raise", "delay"] = "raise"

    @field_validator("email", "sms")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    def over(self, override: LimitSettings | None) -> LimitSettings:
        """These settings with the keys ``override`` sets laid over them."""
        if override is None or not override.model_fields_set:
            return self
        return self.model_copy(
            update={key: getattr(override, key) for key in override.model_fields_set}
        )

    def rate(self, channel: Channel) -> str | None:
        return self.email if channel is Channel.EMAIL else self.sms

    def daily(self, channel: Channel) -> int | None:
        return self.email_daily if channel is Channel.EMAIL else self.sms_daily

    def limits(self, channel: Channel) -> bool:
        """Whether anything limits ``channel``."""
        return self.rate(channel) is not None or self.daily(channel) is not None


def _seconds_to_utc_midnight(now: float) -> float:
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)
    return max(0.0, midnight.timestamp() - now)


def _storage(client: redis.Redis | None, key_prefix: str) -> Any:
    """The package's Redis storage over the stores' client; None for memory."""
    if client is None:
        return None
    from limits.storage import RedisStorage

    # The stores' own connection pool: one set of connections, one URL.
    return RedisStorage(
        "redis://", connection_pool=client.connection_pool, key_prefix=f"{key_prefix}limits"
    )


def _unanswered(err: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(f"Redis did not answer: {type(err).__name__}: {err}")


@dataclass(frozen=True, slots=True)
class _Stats:
    reset_time: float
    remaining: int


class _MemoryMoving:
    """A moving window per key in this process: the times of the hits it holds.

    The package's own memory storage expires entries on a timer thread that can
    let a window hold more hits than its limit when threads count at once; this
    is the same arithmetic under one lock.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._hits: dict[tuple[str, ...], deque[float]] = {}

    def _window(self, item: Any, ids: tuple[str, ...], now: float) -> deque[float]:
        key = (str(item), *ids)
        hits = self._hits.setdefault(key, deque())
        horizon = now - item.get_expiry()
        while hits and hits[0] <= horizon:
            hits.popleft()
        if not hits:
            del self._hits[key]
            hits = self._hits.setdefault(key, deque())
        return hits

    def hit(self, item: Any, *ids: str) -> bool:
        with self._lock:
            now = time.time()
            hits = self._window(item, ids, now)
            if len(hits) >= item.amount:
                return False
            hits.append(now)
            return True

    def get_window_stats(self, item: Any, *ids: str) -> _Stats:
        with self._lock:
            now = time.time()
            hits = self._window(item, ids, now)
            reset = hits[0] + item.get_expiry() if len(hits) >= item.amount else now
            return _Stats(reset, max(0, item.amount - len(hits)))


class _MemoryFixed:
    """A counter per key that ends ``expiry`` seconds after its first hit."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._counts: dict[tuple[str, ...], tuple[int, float]] = {}

    def _current(self, item: Any, ids: tuple[str, ...], now: float) -> tuple[int, float]:
        key = (str(item), *ids)
        count, ends = self._counts.get(key, (0, now + item.get_expiry()))
        if ends <= now:
            count, ends = 0, now + item.get_expiry()
        # Forget windows that are over, so old days do not pile up.
        for other in [k for k, (_, e) in self._counts.items() if e <= now]:
            del self._counts[other]
        return count, ends

    def hit(self, item: Any, *ids: str) -> bool:
        with self._lock:
            now = time.time()
            count, ends = self._current(item, ids, now)
            if count >= item.amount:
                return False
            self._counts[(str(item), *ids)] = (count + 1, ends)
            return True

    def get_window_stats(self, item: Any, *ids: str) -> _Stats:
        with self._lock:
            now = time.time()
            count, ends = self._current(item, ids, now)
            return _Stats(ends, max(0, item.amount - count))


class _Counter:
    """Moving and fixed windows: the package's strategies over Redis, with its
    errors translated, or the same in memory."""

    def __init__(self, storage: Any) -> None:
        self.moving: Any
        self.fixed: Any
        if storage is None:
            lock = threading.Lock()
            self.moving, self.fixed = _MemoryMoving(lock), _MemoryFixed(lock)
            self._errors: tuple[type[Exception], ...] = ()
            return
        from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        self.moving = MovingWindowRateLimiter(storage)
        self.fixed = FixedWindowRateLimiter(storage)
        errors = storage.base_exceptions
        self._errors = tuple(errors) if isinstance(errors, tuple) else (errors,)

    def call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._errors as err:
            raise _unanswered(err) from err


class TenantLimits:
    """Counts each tenant's sends against its limits.

    Args:
        defaults: The ``[limits]`` table.
        client: Redis to count in (shared by every process), or None for memory.
        key_prefix: Prefix of the Redis keys.
        metrics: Told of every send over a limit (``observe_rate_limited``), if it counts them.
        clock: Wall-clock seconds (replaceable in tests).
    """

    def __init__(
        self,
        defaults: LimitSettings | None = None,
        *,
        client: redis.Redis | None = None,
        key_prefix: str = "tenant_notify:",
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.defaults = defaults or LimitSettings()
        self.shared = client is not None
        self._storage_args = (client, key_prefix)
        self._counter_instance: _Counter | None = None
        self._metrics = metrics
        self._clock = clock
        self._items: dict[str, Any] = {}
        # tenant id -> (the Tenant object it was computed for, its limits)
        self._by_tenant: dict[str, tuple[Tenant, LimitSettings]] = {}

    def for_tenant(self, tenant: Tenant) -> LimitSettings:
        """The limits of ``tenant``: its own keys over ``[limits]``."""
        known = self._by_tenant.get(tenant.id)
        if known is not None and known[0] is tenant:
            return known[1]
        limits = self.defaults.over(tenant.limits)
        self._by_tenant[tenant.id] = (tenant, limits)
        return limits

    def check_call(self, tenant: Tenant, channel: Channel) -> None:
        """Count a send at the call, for tenants with ``on_limit = "raise"``.

        Raises:
            RateLimitedError: the send is over a limit; it was not counted.
            StoreUnavailableError: Redis did not answer.
        """
        limits = self.for_tenant(tenant)
        if limits.on_limit != "raise" or not limits.limits(channel):
            return
        refused = self._hit(tenant.id, channel, limits)
        if refused is not None:
            self._observe(tenant.id, channel, refused.limit, "raised")
            raise refused

    def admit(self, tenant: Tenant, channel: Channel) -> float | None:
        """Count a delivery that comes up, for tenants with ``on_limit = "delay"``.

        Returns:
            None to deliver now (it was counted), else the seconds to wait first.

        Raises:
            StoreUnavailableError: Redis did not answer.
        """
        limits = self.for_tenant(tenant)
        if limits.on_limit != "delay" or not limits.limits(channel):
            return None
        refused = self._hit(tenant.id, channel, limits)
        if refused is None:
            return None
        self._observe(tenant.id, channel, refused.limit, "delayed")
        return refused.retry_after

    def usage(self, tenant: Tenant, channel: Channel) -> dict[str, Any]:
        """What is left of ``tenant``'s limits on ``channel`` (for ``tenant-notify limits``)."""
        limits = self.for_tenant(tenant)
        now = self._clock()
        report: dict[str, Any] = {"on_limit": limits.on_limit}
        rate = limits.rate(channel)
        if rate is not None:
            item = self._item(rate)
            stats = self._counter.call(
                lambda: self._counter.moving.get_window_stats(item, tenant.id, channel.value)
            )
            report["rate"] = rate
            report["rate_remaining"] = stats.remaining
        cap = limits.daily(channel)
        if cap is not None:
            item = self._item(f"{cap}/day")
            day = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
            stats = self._counter.call(
                lambda: self._counter.fixed.get_window_stats(item, tenant.id, channel.value, day)
            )
            report["daily"] = cap
            report["daily_used"] = cap - stats.remaining
        return report

    @property
    def _counter(self) -> _Counter:
        # Made on first use: a notifier without limits never starts the
        # memory storage's expiry timer or touches Redis.
        if self._counter_instance is None:
            with _INIT_LOCK:
                if self._counter_instance is None:
                    self._counter_instance = _Counter(_storage(*self._storage_args))
        return self._counter_instance

    def _item(self, rate: str) -> Any:
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse_rate(rate)
        return item

    def _hit(
        self, tenant_id: str, channel: Channel, limits: LimitSettings
    ) -> RateLimitedError | None:
        """Count one send against the rate, then the daily cap; the refusal if over."""
        counter = self._counter
        rate = limits.rate(channel)
        if rate is not None:
            item = self._item(rate)
            if not counter.call(lambda: counter.moving.hit(item, tenant_id, channel.value)):
                stats = counter.call(
                    lambda: counter.moving.get_window_stats(item, tenant_id, channel.value)
                )
                wait = max(0.0, stats.reset_time - self._clock())
                return RateLimitedError(
                    f"over the tenant's {channel.value} rate of {rate}",
                    channel=channel.value,
                    limit=channel.value,
                    retry_after=round(wait, 3),
                    tenant_id=tenant_id,
                )
        cap = limits.daily(channel)
        if cap is not None:
            now = self._clock()
            day = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
            if cap == 0 or not counter.call(
                lambda: counter.fixed.hit(self._item(f"{cap}/day"), tenant_id, channel.value, day)
            ):
                return RateLimitedError(
                    f"over the tenant's {channel.value}_daily cap of {cap} (UTC day {day})",
                    channel=channel.value,
                    limit=f"{channel.value}_daily",
                    retry_after=round(_seconds_to_utc_midnight(now), 3),
                    tenant_id=tenant_id,
                )
        return None

    def _observe(self, tenant_id: str, channel: Channel, limit: str, action: str) -> None:
        method = getattr(self._metrics, "observe_rate_limited", None)
        if method is None:
            return
        try:
            method(tenant_id=tenant_id, channel=channel.value, limit=limit, action=action)
        except Exception:
            get_logger().exception("metrics_failed", metric="observe_rate_limited")


@dataclass(frozen=True, slots=True)
class Account:
    """One provider account, as pacing sees it.

    Attributes:
        key: Stable across processes for the same settings (a hash of the
            validated table; no secret can be read from it).
        provider: The provider name.
        max_rate: The table's ``max_rate``, if any.
    """

    key: str
    provider: str
    max_rate: str | None = None


_PAUSE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local ends = tonumber(ARGV[1])
if ends > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[2], ends, ARGV[3])
  redis.call('PUBLISH', KEYS[3], 'pause ' .. ARGV[3] .. ' ' .. ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
return tostring(math.max(ends, current))
"""

# The probe's turn, unless the account is paused again (a probe that met the limit
# records the new pause before it gives the turn back).
_PROBE = """
local ends = tonumber(redis.call('GET', KEYS[1]) or '0')
if ends > tonumber(ARGV[1]) then
  return tostring(ends)
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return 'probe'
end
return ''
"""

#: Seconds a delivery thread waits in line for the probe's answer (or for a
#: place while calls ramp up again after a pause) before its notification is
#: deferred instead.
GATE_WAIT = 1.0
#: Seconds a probe's turn lasts in Redis: a prober that died frees it after this.
PROBE_TTL = 15.0
#: Seconds the check right before a request waits, at most, for the pause
#: listener thread to finish reading an announcement it has begun to read.
ANNOUNCEMENT_WAIT = 0.05
#: Calls in flight per process while an account ramps up after a pause: the
#: probe alone, then two, one more with each answer that is not a throttling,
#: until this many (then no gate at all).
RAMP_END = 64


@dataclass(eq=False, slots=True)
class _Gate:
    """The calls one account lets through while it comes back from a pause."""

    probing: bool = True  # the next call is a probe: one at a time, in every process
    probe_out: bool = False  # this process's probe is in flight
    next_try: float = 0.0  # monotonic: when to ask Redis for the probe's turn again
    cap: int = 1
    inflight: int = 0


@dataclass(eq=False, slots=True)
class Slot:
    """A provider call let through an account's gate (see :meth:`Pacing.before_call`);
    give it back with :meth:`Pacing.after_call`."""

    account: Account
    gate: _Gate
    probe: bool


class Pacing:
    """Paces deliveries per provider account: ``max_rate`` and learned pauses.

    A pause (a throttling reply) is written to Redis and announced on a Redis
    channel that every process listens to, so each process knows every pause
    from memory: checking an account before a delivery costs nothing while no
    account is paused (a process that cannot listen reads Redis instead). When
    a pause ends, one call goes first (the *probe*, one in all processes); the
    others wait for its answer, then come back a few at a time (in flight per
    process: 2, then one more with each answer, up to :data:`RAMP_END`), so a
    limit that is still there is met by one call, not by every thread at once.

    Args:
        client: Redis to share the pacing with every process, or None for memory.
        key_prefix: Prefix of the Redis keys.
        metrics: Told of every pause (``observe_provider_pause``), if it counts them.
        clock: Wall-clock seconds (replaceable in tests).
        sleep: How a worker thread waits for its turn (replaceable in tests).
        listen: Listen for other processes' pauses (with ``client``); off, every
            check reads Redis.
    """

    def __init__(
        self,
        *,
        client: redis.Redis | None = None,
        key_prefix: str = "tenant_notify:",
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        listen: bool = True,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._channel = f"{key_prefix}pace:announce"
        self._storage_args = (client, key_prefix)
        self._counter: _Counter | None = None
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._items: dict[str, Any] = {}
        # What this process knows: account key -> paused until (epoch seconds).
        self._paused: dict[str, float] = {}
        # Accounts coming back from a pause.
        self._gates: dict[str, _Gate] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pause_script: Any = None
        self._probe_script: Any = None
        self._listen = listen and client is not None
        self._listener_pid = 0
        self._listening = False  # subscribed, and caught up with the pauses in Redis
        self._stop = threading.Event()
        # The subscription's socket while the listener waits on it (None: it
        # cannot be polled, or nobody listens), and the listener's reading.
        self._announcements: int | None = None
        self._pubsub: Any = None
        self._reading = threading.Lock()
        self._polls = threading.local()  # each thread's poll object for it

    # --- max_rate ------------------------------------------------------------------

    def acquire(self, account: Account) -> float | None:
        """Take a ``max_rate`` token for one provider call through ``account``.

        Waits in this thread while the next token is at most
        :data:`MAX_PACING_WAIT` seconds away.

        Returns:
            None when the call may go now, else the seconds to defer it.
        """
        if account.max_rate is None:
            return None
        counter = self._counter_for()
        item = self._items.get(account.max_rate)
        if item is None:
            item = self._items[account.max_rate] = parse_rate(account.max_rate)
        waited = 0.0
        while True:
            if counter.call(lambda: counter.moving.hit(item, "pace", account.key)):
                return None
            stats = counter.call(lambda: counter.moving.get_window_stats(item, "pace", account.key))
            wait = max(0.001, float(stats.reset_time) - self._clock())
            if waited + wait > MAX_PACING_WAIT:
                return wait
            # A little jitter, so the threads that wait do not all wake at once.
            wait += random.uniform(0, wait / 4)
            self._sleep(wait)
            waited += wait

    def _counter_for(self) -> _Counter:
        if self._counter is None:
            with _INIT_LOCK:
                if self._counter is None:
                    self._counter = _Counter(_storage(*self._storage_args))
        return self._counter

    # --- pauses -------------------------------------------------------------------

    def paused(self, account: Account, *, latest: bool = False) -> float | None:
        """Seconds left of a pause of ``account``, or None when it is not paused.

        From memory while this process listens to the pause announcements (the
        listener starts on the first call); a Redis GET otherwise.

        Args:
            latest: The last check before a request is written: an announcement
                whose bytes have reached this process but that the listener
                thread has not read yet (it waits for the interpreter behind the
                delivery threads) is waited for, up to :data:`ANNOUNCEMENT_WAIT`
                seconds. Costs one ``poll`` of the subscription's socket.

        Raises:
            StoreUnavailableError: Redis did not answer.
        """
        now = self._clock()
        key = account.key
        until = self._paused.get(key, 0.0)
        if until <= now and self._client is not None:
            if not self._heard():
                try:
                    value = self._client.get(f"{self._prefix}pace:pause:{key}")
                except Exception as err:
                    raise _unanswered(err) from err
                if value and float(value) > now:
                    until = self._learn(key, float(value))
            elif latest:
                self._caught_up()
                # Again, whatever it found: its poll let other threads run meanwhile,
                # this process's reader of a 429 among them.
                until = self._paused.get(key, 0.0)
        if until <= now:
            return None
        return until - now

    def _caught_up(self) -> bool:
        """Read what has reached the subscription's socket, if anything has, in
        this thread (the listener thread may be waiting for the interpreter behind
        the delivery threads); whether there was something.

        One ``poll`` of the socket when nothing has arrived.
        """
        fd = self._announcements
        if fd is None or (not self._reading.locked() and self._arrived(fd) != select.POLLIN):
            # Nothing arrived, or the connection failed: that is the listener's to
            # meet (and to start again on), not a delivery's.
            return False
        # Something is on its way in (or the listener is reading it): read it
        # here, or wait for the listener to finish.
        if not self._reading.acquire(timeout=ANNOUNCEMENT_WAIT):
            return True
        try:
            pubsub = self._pubsub
            with contextlib.suppress(Exception):  # the listener meets it too
                if (
                    self._announcements == fd
                    and pubsub is not None
                    and self._arrived(fd) == select.POLLIN
                ):
                    self._read_announcements(pubsub)
        finally:
            self._reading.release()
        return True

    def _arrived(self, fd: int) -> int:
        """The poll events on the subscription's socket ``fd`` now (0: none)."""
        polls = self._polls
        poller = getattr(polls, "poller", None)
        if poller is None or polls.fd != fd:
            # One per thread: a poll object refuses two threads at once.
            poller = polls.poller = select.poll()
            poller.register(fd, select.POLLIN)
            polls.fd = fd
        events = poller.poll(0)
        return events[0][1] if events else 0

    def _heard(self) -> bool:
        """Whether this process hears every pause (starting the listener if need be)."""
        if not self._listen:
            return False
        if self._listener_pid != _process.pid():
            with self._lock:
                if self._listener_pid != _process.pid():
                    self._listener_pid = _process.pid()
                    self._listening = False
                    self._announcements = self._pubsub = None
                    self._reading = threading.Lock()  # the parent's listener may hold it
                    self._stop = threading.Event()
                    threading.Thread(
                        target=self._run_listener,
                        args=(self._stop,),
                        name="tenant-notify-pauses",
                        daemon=True,
                    ).start()
        return self._listening

    def _learn(self, key: str, until: float) -> float:
        """Record a pause of ``key`` until ``until`` heard of (or read) from elsewhere."""
        with self._changed:
            until = max(until, self._paused.get(key, 0.0))
            if until <= self._clock() and key not in self._gates:
                return until  # over already (a late announcement): nothing to wait for
            self._paused[key] = until
            gate = self._gates.get(key)
            if gate is None:
                self._gates[key] = _Gate()
            else:
                gate.probing, gate.cap = True, 1
            self._changed.notify_all()
        return until

    def _opened(self, key: str) -> None:
        """Another process's probe got an answer that was no throttling."""
        with self._changed:
            gate = self._gates.get(key)
            if gate is not None and gate.probing and not gate.probe_out:
                gate.probing, gate.cap = False, max(gate.cap, 2)
                if self._paused.get(key, 0.0) <= self._clock():
                    self._paused.pop(key, None)
                self._changed.notify_all()

    def _run_listener(self, stop: threading.Event) -> None:
        """Listen for the announcements: subscribe, catch up with the pauses in
        Redis, then read each announcement as it comes.

        It waits in ``poll`` on the subscription's socket and reads under
        ``_reading``, which the check right before a request
        (:meth:`_caught_up`) takes to read an announcement itself when it finds
        one arrived and not read yet; where the socket cannot be polled the
        listener waits in redis-py's read and that check reads nothing.
        """
        assert self._client is not None
        log = get_logger()
        while not stop.is_set():
            pubsub: Any = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._channel)
                # Subscribed: what was announced before is in the sorted set.
                now = self._clock()
                entries: list[tuple[Any, Any]] = self._client.zrangebyscore(  # type: ignore[assignment]
                    f"{self._prefix}pace:pauses", now, "+inf", withscores=True
                )
                for member, score in entries:
                    name = member.decode() if isinstance(member, bytes) else str(member)
                    self._learn(name, float(score))
                sock = _socket_of(pubsub)
                if sock is None:  # nothing to poll: wait in redis-py's read
                    self._listening = True
                    while not stop.is_set():
                        self._announced(pubsub.get_message(timeout=1.0))
                    return
                poller = select.poll()
                poller.register(sock.fileno(), select.POLLIN)
                self._pubsub = pubsub
                self._announcements = sock.fileno()
                self._listening = True
                while not stop.is_set():
                    events = self._wait_for_announcement(poller)
                    if not events:
                        continue
                    if any(event & ~select.POLLIN for _, event in events):
                        raise ConnectionError("the subscription's connection failed")
                    with self._reading:
                        # A delivery thread's check may have read it meanwhile.
                        if self._arrived(sock.fileno()) & select.POLLIN:
                            self._read_announcements(pubsub)
                    if _socket_of(pubsub) is not sock:
                        raise ConnectionError("the subscription's connection was replaced")
            except Exception as err:
                self._listening = False
                self._announcements = None
                log.warning("pause_listener_failed", error=f"{type(err).__name__}: {err}")
                stop.wait(1.0)
            finally:
                self._listening = False
                self._announcements = None
                self._pubsub = None
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _wait_for_announcement(self, poller: Any) -> list[tuple[int, int]]:
        """The listener's wait for the subscription's socket (up to a second)."""
        events: list[tuple[int, int]] = poller.poll(1000)
        return events

    def _read_announcements(self, pubsub: Any) -> None:
        """Read every announcement the subscription has received (at least one
        reply has: its socket polled readable)."""
        connection = pubsub.connection
        while True:
            # A reply cut short is completed within the timeout.
            self._announced(pubsub.get_message(timeout=0.05))
            if not connection.can_read(timeout=0):
                return

    def _announced(self, message: Any) -> None:
        """Act on one message of the subscription (None, or a subscription's
        confirmation: nothing to do)."""
        if message is None or message.get("type") != "message":
            return
        data = message["data"]
        text = data.decode() if isinstance(data, bytes) else str(data)
        verb, _, rest = text.partition(" ")
        if verb == "pause":
            key, _, until = rest.rpartition(" ")
            self._learn(key, float(until))
        elif verb == "open":
            self._opened(rest)

    @property
    def listening(self) -> bool:
        """Whether this process hears every pause (from Redis's announcements)."""
        return self._listening

    def close(self) -> None:
        """Stop listening for pause announcements."""
        self._stop.set()

    def throttled(self, account: Account, retry_after: float | None) -> float:
        """Record that the provider throttled ``account``: pause it for
        ``retry_after`` seconds (or :data:`DEFAULT_THROTTLE_PAUSE`), in every process.

        Returns:
            The seconds the account is paused for (a longer pause already
            recorded stands).

        Raises:
            StoreUnavailableError: Redis did not answer (this process knows of
                the pause all the same).
        """
        now = self._clock()
        seconds = DEFAULT_THROTTLE_PAUSE if retry_after is None else max(0.0, retry_after)
        until = self._learn(account.key, now + seconds)
        if self._client is not None:
            if self._pause_script is None:
                self._pause_script = self._client.register_script(_PAUSE)
            try:
                answer = self._pause_script(
                    keys=[
                        f"{self._prefix}pace:pause:{account.key}",
                        f"{self._prefix}pace:pauses",
                        self._channel,
                    ],
                    args=[repr(until), max(1, int(seconds * 1000)), account.key, repr(now)],
                )
            except Exception as err:
                raise _unanswered(err) from err
            until = self._learn(account.key, float(answer))
        get_logger().warning(
            "provider_account_paused",
            provider=account.provider,
            account=account.key,
            seconds=round(until - now, 3),
        )
        method = getattr(self._metrics, "observe_provider_pause", None)
        if method is not None:
            try:
                method(provider=account.provider, account=account.key, seconds=until - now)
            except Exception:
                get_logger().exception("metrics_failed", metric="observe_provider_pause")
        return until - now

    # --- the gate around each call -----------------------------------------------

    def before_call(self, account: Account) -> float | Slot | None:
        """Right before a provider call through ``account``: may it go?

        Returns:
            None: go (the account is not coming back from a pause). A
            :class:`Slot`: go, and give it back with :meth:`after_call`. A number:
            do not call; defer the notification by that many seconds (the account
            is paused, or the probe's answer did not come within :data:`GATE_WAIT`).
        """
        key = account.key
        if key not in self._gates:
            if not self._listen or self._listening:
                return None
            # Not listening (a process starting, its listener not caught up, or
            # reconnecting): read the pause, or a pause since admission would go
            # unnoticed. Redis out of reach, the call goes as the admission let it:
            # this check must not fail a notification whose claim is taken.
            try:
                left = self.paused(account)
            except StoreUnavailableError:
                return None
            if left is None and key not in self._gates:
                return None
        deadline = time.monotonic() + GATE_WAIT
        with self._changed:
            while True:
                gate = self._gates.get(key)
                if gate is None:
                    return None
                now = self._clock()
                until = self._paused.get(key, 0.0)
                if until > now:
                    return until - now
                if gate.probing:
                    if not gate.probe_out and time.monotonic() >= gate.next_try:
                        turn = self._take_probe(key, now)
                        if turn is True:
                            gate.probe_out = True
                            gate.inflight += 1
                            return Slot(account, gate, probe=True)
                        gate.next_try = time.monotonic() + 0.1
                        if turn is not False:  # paused again, not yet heard of here
                            self._paused[key] = max(turn, self._paused.get(key, 0.0))
                            continue
                elif gate.inflight < gate.cap:
                    gate.inflight += 1
                    return Slot(account, gate, probe=False)
                left = deadline - time.monotonic()
                if left <= 0:
                    return GATE_WAIT + random.uniform(0, GATE_WAIT / 2)
                self._changed.wait(min(left, 0.1))

    def after_call(self, slot: Slot, *, throttled: bool = False, answered: bool = True) -> None:
        """The call ``slot`` let through is over.

        Args:
            throttled: The provider throttled it (:meth:`throttled` was told).
            answered: The provider answered (False: the call broke off in a way
                that says nothing about the limit).
        """
        key = slot.account.key
        opened = False
        with self._changed:
            gate = slot.gate
            gate.inflight -= 1
            current = self._gates.get(key) is gate
            if slot.probe:
                gate.probe_out = False
                if current and answered and not throttled and gate.probing:
                    gate.probing, gate.cap, opened = False, 2, True
            elif current and answered and not throttled and not gate.probing:
                gate.cap += 1
                if gate.cap >= RAMP_END:
                    del self._gates[key]
            self._changed.notify_all()
        if slot.probe and self._client is not None:
            with contextlib.suppress(Exception):  # else it expires after PROBE_TTL
                self._client.delete(f"{self._prefix}pace:probe:{key}")
                if opened:
                    self._client.publish(self._channel, f"open {key}")

    def _take_probe(self, key: str, now: float) -> bool | float:
        """The probe's turn for this process (True), unless another process has it
        (False) or the account is paused again (until when, from Redis)."""
        if self._client is None:
            return True
        if self._probe_script is None:
            self._probe_script = self._client.register_script(_PROBE)
        try:
            answer = self._probe_script(
                keys=[f"{self._prefix}pace:pause:{key}", f"{self._prefix}pace:probe:{key}"],
                args=[repr(now), str(os.getpid()), int(PROBE_TTL * 1000)],
            )
        except Exception:
            return True  # Redis is out of reach: this process probes on its own
        if isinstance(answer, bytes):
            answer = answer.decode()
        if answer == "probe":
            return True
        return float(answer) if answer else False

    def pauses(self) -> Mapping[str, float]:
        """Accounts paused now -> seconds left (this process's, or every process's with Redis)."""
        now = self._clock()
        if self._client is not None:
            try:
                entries: list[tuple[str, float]] = self._client.zrangebyscore(  # type: ignore[assignment]
                    f"{self._prefix}pace:pauses", now, "+inf", withscores=True
                )
            except Exception as err:
                raise _unanswered(err) from err
            return {str(member): float(score) - now for member, score in entries}
        return {key: until - now for key, until in self._paused.items() if until > now}


def _socket_of(pubsub: Any) -> Any:
    """The socket of a redis-py subscription, or None where it has none to poll."""
    if not hasattr(select, "poll"):
        return None
    sock = getattr(pubsub.connection, "_sock", None)
    return sock if sock is not None and hasattr(sock, "fileno") else None


def check_max_rate(value: Any, key: str) -> str:
    """Validate a provider table's ``max_rate``.

    Raises:
        ConfigurationError: naming ``key``.
    """
    if not isinstance(value, str):
        raise ConfigurationError("must be a rate such as '14/second'", key=key)
    try:
        parse_rate(value)
    except ValueError as err:
        raise ConfigurationError(str(err), key=key) from None
    return value
