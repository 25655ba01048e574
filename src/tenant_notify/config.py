"""Settings: one model, loaded from a mapping, a TOML/YAML file or the environment.

Environment variables use the prefix ``TENANT_NOTIFY_`` and ``__`` between levels
(``TENANT_NOTIFY_EMAIL__PROVIDER=smtp``, ``TENANT_NOTIFY_TENANTS__ACME__NAME=Acme``).
``TENANT_NOTIFY_CONFIG_FILE`` names a TOML (or, with PyYAML, YAML) file read under
the environment, which wins over it. See ``docs/configuration.md`` for every key.

Provider tables (``[email]``, ``[sms]``, ``[tenants.X.email]``) are free-form here
and validated against the chosen provider's own ``Config`` model when the
Notifier is built, so a misspelt key fails then, naming it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ._redact import register_url_secrets
from ._validation import normalize_locale
from .errors import ConfigurationError, MissingDependencyError
from .limiting import LimitSettings
from .templates._loader import check_apart
from .tenants import Tenant, protect_secrets

__all__ = [
    "AlertSettings",
    "BreakerSettings",
    "CallbackSettings",
    "CelerySettings",
    "EventRule",
    "EventsSettings",
    "IdempotencySettings",
    "KindSettings",
    "LimitSettings",
    "LinkSettings",
    "RedisSettings",
    "RetrySettings",
    "Settings",
    "StoresSettings",
    "TemplateSettings",
    "TransportSettings",
    "load_settings",
    "require_tenants",
    "settings_origin",
    "validation_error",
]

ENV_PREFIX = "TENANT_NOTIFY_"
CONFIG_FILE_VARIABLE = f"{ENV_PREFIX}CONFIG_FILE"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoresSettings(_Section):
    """What the status and idempotency stores keep, and for how long.

    Attributes:
        retention: Seconds the Redis stores keep what they write about a
            notification (its status, its provider-id index entry, its engagement,
            its idempotency and dead-letter keys) after the last change: every
            such key gets this TTL, or a shorter one (``[idempotency] ttl``,
            leases). Suppression lists are not notification data and do not expire.
        memory_max_statuses: Statuses the in-memory status store keeps (the
            embedded default). Past the bound the oldest final status goes, in
            constant time (of its shard, for a bound of 1,024 or more: see
            :mod:`tenant_notify.stores.memory`); statuses still in flight are
            never evicted. About 600 bytes each.
        memory_max_keys: Entries the in-memory idempotency store keeps: one
            delivery claim per notification. Past the bound the oldest goes, in
            constant time; a claim held by a running attempt is never evicted.
            About 250 bytes each.
    """

    retention: float = Field(default=7 * 86_400.0, gt=0)
    memory_max_statuses: int = Field(default=50_000, ge=1)
    memory_max_keys: int = Field(default=50_000, ge=1)


class TransportSettings(_Section):
    """``transport = "inprocess"`` or a table ``[transport] backend = ...``.

    Attributes:
        backend: ``eager``, ``inprocess``, ``celery`` or a dotted path to a Transport.
        workers: In-process worker threads: deliveries at once (default 16; each
            waits on the provider's network, so more than the CPUs). HTTP
            providers keep as many keep-alive connections by default.
        queue_size: In-process queue bound; a full queue blocks the caller.
        enqueue_timeout: Seconds a send may block on a full queue before
            :class:`~tenant_notify.errors.QueueFullError`.
        drain_timeout: Seconds ``close()`` waits for queued work to finish.
    """

    backend: str = "inprocess"
    workers: int = Field(default=16, ge=1, le=256)
    queue_size: int = Field(default=10_000, ge=1)
    enqueue_timeout: float = Field(default=5.0, ge=0)
    drain_timeout: float = Field(default=30.0, ge=0)


class RetrySettings(_Section):
    """Backoff for transient failures, applied the same way by every transport."""

    max_attempts: int = Field(default=5, ge=1, le=100)
    initial_delay: float = Field(default=1.0, ge=0)
    max_delay: float = Field(default=300.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.2, ge=0, le=1)
    retry_ambiguous: bool = False


class TemplateSettings(_Section):
    """Limits on rendering tenant templates (which are untrusted input).

    Attributes:
        max_output_chars: Most characters one rendered part may have; also the
            largest value a template may build, and (times 8) the work one part
            may do. See ``docs/templates.md``.
        render_timeout: CPU seconds one render call (a part, or all parts of an
            email) may use in its thread; five times it in wall-clock time at most.
        auto_reload: Notice edited template files without a restart.
        cache_size: Compiled templates kept in memory (least recently used
            dropped first); lookup answers are kept for 4 x as many.
    """

    max_output_chars: int = Field(default=262_144, ge=1024)
    render_timeout: float = Field(default=2.0, gt=0)
    # Off: production templates do not change under a running process, and
    # noticing edits costs stat calls on every render. Development turns it on.
    auto_reload: bool = False
    cache_size: int = Field(default=2000, ge=1)


class IdempotencySettings(_Section):
    """Idempotency keys and delivery claims.

    Attributes:
        ttl: Seconds a delivered (or finally failed) notification is remembered:
            a repeat of its send (same tenant, kind and key) within it sends nothing.
            At most ``[stores] retention``.
        lease: Seconds a worker's claim on a delivery lasts unless renewed. It is
            renewed every third of it while the attempt runs, so a worker that dies
            in any way frees its deliveries for another within one lease.
    """

    ttl: float = Field(default=86_400.0, gt=0)
    lease: float = Field(default=15.0, gt=0)


def _env_default(name: str, fallback: str | None) -> Any:
    # Celery's usual variables, read when the settings do not name a URL (an
    # explicit [celery] key or TENANT_NOTIFY_CELERY__* variable wins).
    return lambda: os.environ.get(name) or fallback


class CelerySettings(_Section):
    """The ``celery`` transport: broker, result backend, queues, worker behaviour.

    URLs may hold passwords: they are left out of ``repr`` and never logged.

    Attributes:
        broker_url: Broker URL; default ``$CELERY_BROKER_URL``, else a local RabbitMQ.
        result_backend: Celery result backend; default ``$CELERY_RESULT_BACKEND``,
            else none. When it is Redis it is also the default ``[redis] url``.
        queue: Queue the notifications go to (and the worker consumes).
        dead_letter_queue: Queue that keeps notifications whose last attempt
            failed, for an operator to inspect and replay; ``""`` turns it off.
        soft_time_limit: Seconds one delivery attempt may run before it is
            interrupted; keep it above the providers' timeouts.
        time_limit: Seconds after which the worker process running an attempt is
            killed (the message is redelivered). Above ``soft_time_limit``.
        prefetch_multiplier: Messages a worker process reserves ahead (1-4 suits
            I/O-bound deliveries; higher only hides work from idle workers).
        concurrency: Worker processes for ``tenant-notify worker`` (default: CPUs).
        threads: Deliveries at once in each ``tenant-notify worker`` process
            (threads waiting on the providers; default 32). HTTP providers keep
            as many keep-alive connections by default.
        fair: Give every tenant of ``[tenants]`` a queue of its own
            (``<queue>.tenant.<id>``) that ``tenant-notify worker`` serves in
            turn, weighted by the tenant's ``weight``; false sends everything to
            ``queue`` (first in, first out).
        result_expires: Seconds Celery keeps a task result.
        ignore_result: Store no Celery results (statuses are in the status store anyway).
        publisher_confirms: ``"async"``: a send returns once the message is written
            to the broker connection; the broker's confirm is collected in the
            background and an unconfirmed message is published again after a
            reconnect (the status turns ``failed`` if that cannot happen within
            ``publish_timeout``). ``"sync"``: every send waits for its confirm.
            ``"off"``: no confirms (not recommended).
        connect_timeout: Seconds to wait for a broker connection.
        publish_timeout: Seconds a send keeps retrying an unreachable broker
            before it raises EnqueueError.
        pool_limit: Broker connections a process keeps for sending.
        send_events: Workers send task events (``celery events``, Flower), and
            every send a ``task-sent`` event, so Flower shows a notification from
            the moment it is queued. Off by default, as in Celery: publishing three
            events per task is a large share of a worker's CPU, and Flower
            switches the workers' on while it watches (not the senders').
    """

    broker_url: str = Field(
        default_factory=_env_default("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
        repr=False,
    )
    result_backend: str | None = Field(
        default_factory=_env_default("CELERY_RESULT_BACKEND", None), repr=False
    )
    queue: str = Field(default="tenant_notify", min_length=1)
    dead_letter_queue: str = "tenant_notify.dead"
    soft_time_limit: float = Field(default=60.0, gt=0)
    time_limit: float = Field(default=90.0, gt=0)
    prefetch_multiplier: int = Field(default=4, ge=1, le=64)
    concurrency: int | None = Field(default=None, ge=1)
    threads: int = Field(default=32, ge=1, le=1024)
    fair: bool = True
    result_expires: float = Field(default=86_400.0, gt=0)
    ignore_result: bool = False
    publisher_confirms: Literal["async", "sync", "off"] = "async"
    connect_timeout: float = Field(default=2.0, gt=0)
    publish_timeout: float = Field(default=5.0, gt=0)
    pool_limit: int = Field(default=10, ge=1)
    send_events: bool = False

    @model_validator(mode="after")
    def _check_limits(self) -> CelerySettings:
        if self.time_limit <= self.soft_time_limit:
            raise ValueError("time_limit must be above soft_time_limit")
        if self.dead_letter_queue == self.queue:
            raise ValueError("dead_letter_queue must differ from queue")
        return self


class RedisSettings(_Section):
    """Redis for the shared status and idempotency stores.

    Attributes:
        url: ``redis://`` URL; default: ``[celery] result_backend`` when that is
            Redis, else ``redis://localhost:6379/0``. Not shown in ``repr``.
        key_prefix: Prefix of every key the stores write.
        status_ttl: Deprecated: ``[stores] retention`` applies to statuses too.
            When set, statuses (and engagement) are kept this long instead.
        socket_timeout: Seconds to wait for Redis before a call fails.
        max_connections: Connections a process keeps in its pool.
    """

    url: str | None = Field(default=None, repr=False)
    key_prefix: str = "tenant_notify:"
    status_ttl: float | None = Field(default=None, gt=0)
    socket_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=64, ge=1)


class EventRule(_Section):
    """One ``[[events.rules]]`` table: which notification an event type sends.

    Paths (``to``, ``locale`` and the values of ``context``) point into the
    CloudEvent: ``data.customer_email``, ``data.items.0.name``, ``subject``,
    ``tenantid``. They are checked against the type's schema when the Notifier
    is built.

    Attributes:
        type: The CloudEvents ``type`` it applies to (``com.example.order.created``).
        kind: The notification kind to send (``order_confirmation``, or your own).
        to: Path to the recipient (an address, or an E.164 number for sms).
        channel: ``email`` or ``sms``.
        context: Template field name -> path.
        locale: Path to a locale, if the event carries one.
        name: Names the rule in idempotency keys; needed only when two rules of
            one type send the same kind on the same channel to the same path.
    """

    type: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    to: str = Field(min_length=1)
    channel: Literal["email", "sms"] = "email"
    context: dict[str, str] = Field(default_factory=dict)
    locale: str | None = None
    name: str | None = None

    @property
    def identity(self) -> str:
        """What makes this rule's sends for one event distinct from other rules'."""
        return self.name or f"{self.kind}:{self.channel}:{self.to}"


class CallbackSettings(_Section):
    """Lifecycle callbacks to each tenant's URL (``[tenants.X.callbacks]``).

    Attributes:
        enabled: Send callbacks. Default: when some ``[tenants.X.callbacks]``
            table is set (with your own tenant resolver, set it to true).
        states: The transitions that are called back.
        max_attempts: Attempts per callback before it is dead-lettered.
        initial_delay: Seconds before the second attempt; doubled after each.
        max_delay: Longest wait between attempts.
        timeout: Seconds one HTTP attempt may take.
        workers: Threads sending callbacks in each process.
        queue_size: Callbacks waiting to be sent before new ones are dropped
            (and logged) rather than block a delivery.
        dead_letter_queue: RabbitMQ queue that keeps callbacks whose last
            attempt failed (on ``events.broker_url``); ``""`` keeps them in
            memory only (``LifecycleEvents.dead_letters``) and logs them.
    """

    enabled: bool | None = None
    states: tuple[str, ...] = ("queued", "sent", "failed", "delivered", "bounced")
    max_attempts: int = Field(default=5, ge=1, le=50)
    initial_delay: float = Field(default=1.0, ge=0)
    max_delay: float = Field(default=60.0, ge=0)
    timeout: float = Field(default=5.0, gt=0)
    workers: int = Field(default=2, ge=1, le=64)
    queue_size: int = Field(default=10_000, ge=1)
    dead_letter_queue: str = "tenant_notify.callbacks.dead"

    @field_validator("states")
    @classmethod
    def _check_states(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = {
            "queued",
            "sending",
            "retrying",
            "sent",
            "failed",
            "delivered",
            "bounced",
            "suppressed",
            "opened",
            "clicked",
        }
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown state(s) {unknown}; choose from {sorted(known)}")
        return value


class AlertSettings(_Section):
    """The failure-rate alert per tenant and channel.

    Attributes:
        enabled: Watch failure rates in this process.
        failure_rate: Alert when this share of the window's outcomes failed
            (``failed`` or ``bounced``), 0 < rate <= 1.
        window: Seconds of outcomes the rate is computed over.
        min_outcomes: Outcomes a window needs before it can alert (one failure
            out of one is not a trend).
    """

    enabled: bool = False
    failure_rate: float = Field(default=0.2, gt=0, le=1)
    window: float = Field(default=300.0, gt=0)
    min_outcomes: int = Field(default=20, ge=1)


class EventsSettings(_Section):
    """Domain events in (``[events]``, ``[[events.rules]]``) and lifecycle events out.

    Attributes:
        broker_url: RabbitMQ URL for events; default ``[celery] broker_url``.
            Not shown in ``repr``.
        exchange: Topic exchange host services publish CloudEvents to (declared durable).
        queue: The consumer's queue, bound to ``exchange``.
        dead_letter_queue: Where invalid, unmapped or unsendable events go, with
            the reason in the ``x-tenant-notify-reason`` header.
        routing_keys: Binding keys of ``queue``; default: the rules' types.
        schemas_dir: Folder of JSON Schemas, ``<type>.v<N>.json``; when set,
            every rule's type needs one and every event is validated.
        source: Default CloudEvents ``source`` of ``Notifier.publish_event``.
        local: Apply the rules in this process instead of publishing to the
            broker (``publish_event``); default: on unless the transport is ``celery``.
        prefetch: Events the consumer takes from the broker ahead.
        publish_timeout: Seconds ``publish_event`` waits for the broker's confirm.
        lifecycle_exchange: Topic exchange to publish lifecycle events to
            (routing keys ``notification.<state>``); ``""`` (default) for none.
        rules: The ``[[events.rules]]`` tables.
        callbacks: Lifecycle callbacks to tenants' URLs.
        alerts: The failure-rate alert.
    """

    broker_url: str | None = Field(default=None, repr=False)
    exchange: str = Field(default="domain_events", min_length=1)
    queue: str = Field(default="tenant_notify.events", min_length=1)
    dead_letter_queue: str = Field(default="tenant_notify.events.dead", min_length=1)
    routing_keys: tuple[str, ...] | None = None
    schemas_dir: Path | None = None
    source: str = Field(default="/tenant-notify", min_length=1)
    local: bool | None = None
    prefetch: int = Field(default=64, ge=1, le=65_535)
    publish_timeout: float = Field(default=5.0, gt=0)
    lifecycle_exchange: str = ""
    rules: tuple[EventRule, ...] = ()
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @model_validator(mode="after")
    def _check_queues(self) -> EventsSettings:
        if self.dead_letter_queue == self.queue:
            raise ValueError("dead_letter_queue must differ from queue")
        return self


#: The category of kinds that are purely transactional: no unsubscribe headers.
TRANSACTIONAL = "transactional"
#: What a category name may be.
CATEGORY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class KindSettings(_Section):
    """One ``[kinds.<kind>]`` table: how the library treats a kind of notification.

    Every kind not listed (the built-in ones included) has the defaults: it is
    transactional, suppressible, and tracked when its tenant asks.

    Attributes:
        category: ``"transactional"`` (the default: order confirmations, password
            resets) or any other name (``"marketing"``, ``"newsletter"``). Emails
            of other categories carry RFC 8058 one-click ``List-Unsubscribe``
            headers, and an unsubscribe suppresses the recipient for that
            category only.
        suppressible: False sends even to suppressed recipients (legal notices,
            security alerts), and logs that it did.
        track_opens: False never tracks opens of this kind, whatever its tenant says.
        track_clicks: False never rewrites this kind's links (password resets).
        urgent: True delivers this kind ahead of its own tenant's other (bulk)
            notifications waiting in the queue (password resets, one-time codes);
            see docs/workers.md#fairness-across-tenants.
    """

    category: str = Field(default=TRANSACTIONAL, pattern=f"^{CATEGORY.pattern}$")
    suppressible: bool = True
    track_opens: bool = True
    track_clicks: bool = True
    urgent: bool = False

    @property
    def transactional(self) -> bool:
        return self.category == TRANSACTIONAL


_PLAIN_KIND = KindSettings()


class LinkSettings(_Section):
    """``[links]``: the signed URLs the library puts into emails.

    One-click unsubscribe (RFC 8058) and the library's own open and click
    tracking (for SMTP tenants) point at the routes of
    :func:`tenant_notify.contrib.fastapi.make_router`; each URL carries a token
    signed with ``signing_keys`` (itsdangerous) and salted per tenant, so a token
    of one tenant is worth nothing for another.

    Attributes:
        base_url: The public URL the router is mounted under
            (``https://shop.example/api``). HTTPS, except for ``localhost``.
        signing_keys: Signing keys, newest first: the first signs, every one
            verifies (rotate by putting a new key in front, and drop the old
            one once its links may go). Never shown in a repr or a log.
    """

    base_url: str | None = None
    signing_keys: tuple[SecretStr, ...] = Field(default=(), repr=False)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and local)
        ):
            raise ValueError("must be an https:// URL (http:// only for localhost)")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        return value.rstrip("/")

    @field_validator("signing_keys")
    @classmethod
    def _check_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(key.get_secret_value()) < 16 for key in value):
            # Not the value itself: a secret stays out of error messages.
            raise ValueError("every key needs at least 16 characters")
        return value

    @model_validator(mode="after")
    def _check_pair(self) -> LinkSettings:
        if self.base_url is not None and not self.signing_keys:
            raise ValueError("base_url needs signing_keys to sign the links")
        return self

    @property
    def enabled(self) -> bool:
        return self.base_url is not None


class BreakerSettings(_Section):
    """``[breaker]``: pause a tenant's channel when its sending setup is broken.

    Errors that blame the sender (:attr:`DeliveryError.sender_fault
    <tenant_notify.errors.DeliveryError.sender_fault>`: an unverified sender,
    SMTP 5.7.x policy and authentication refusals, an invalid From number) are
    counted per tenant and channel; ``threshold`` of them within ``window``
    seconds pause that channel of that tenant for ``cooldown`` seconds, or
    until ``tenant-notify resume``.

    Attributes:
        enabled: Count sender faults and pause.
        threshold: Sender faults within ``window`` that pause.
        window: Seconds the faults are counted over.
        cooldown: Seconds a pause lasts unless resumed earlier.
    """

    enabled: bool = True
    threshold: int = Field(default=5, ge=1, le=10_000)
    window: float = Field(default=300.0, gt=0)
    cooldown: float = Field(default=1800.0, gt=0)


class Settings(BaseModel):
    """Everything a Notifier is built from.

    Attributes:
        transport: How notifications reach the dispatcher.
        email: Default email provider table for every tenant.
        sms: Default SMS provider table for every tenant.
        tenants: Tenant tables by id (for the default, static resolver).
        default_locale: Locale of tenants that set none.
        templates_dir: Application templates, between tenants' and the built-in ones.
        templates: Rendering limits.
        retry: Backoff policy.
        idempotency: Key lifetimes.
        stores: Retention (Redis) and bounds (memory) of the stores.
        celery: The ``celery`` transport.
        redis: Redis for the shared stores (used by the ``celery`` transport).
        events: Domain events in, lifecycle events out, alerts (``docs/events.md``).
        kinds: ``[kinds.<kind>]`` tables: category, suppressible, tracking
            (``docs/deliverability.md``).
        links: Signed unsubscribe and tracking URLs.
        breaker: The sender-fault breaker.
        limits: Rates and daily caps of every tenant's sends (``[limits]``; a
            tenant's ``[tenants.<id>.limits]`` overrides it key by key).
        mask_recipients: Mask addresses and numbers in log lines (keep on).
        metrics: Record delivery metrics in prometheus-client's default registry
            (extra ``tenant-notify[metrics]``; see :mod:`tenant_notify.metrics`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # NoDecode: the environment may give these as a bare name (TRANSPORT=eager).
    transport: Annotated[TransportSettings, NoDecode] = Field(default_factory=TransportSettings)
    email: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=lambda: {"provider": "console"}
    )
    sms: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=lambda: {"provider": "console"}
    )
    tenants: dict[str, Tenant] = Field(default_factory=dict)
    default_locale: str = "en"
    templates_dir: Path | None = None
    templates: TemplateSettings = Field(default_factory=TemplateSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    idempotency: IdempotencySettings = Field(default_factory=IdempotencySettings)
    stores: StoresSettings = Field(default_factory=StoresSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    kinds: dict[str, KindSettings] = Field(default_factory=dict)
    links: LinkSettings = Field(default_factory=LinkSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    mask_recipients: bool = True
    metrics: bool = False

    @field_validator("transport", mode="before")
    @classmethod
    def _transport_shorthand(cls, value: Any) -> Any:
        return {"backend": value} if isinstance(value, str) else value

    @field_validator("email", "sms", mode="before")
    @classmethod
    def _provider_table(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {"provider": value}
        if isinstance(value, Mapping):
            if "provider" not in value:
                raise ValueError("the table needs a 'provider' key")
            return protect_secrets(value)
        return value

    @field_validator("tenants", mode="before")
    @classmethod
    def _tenant_ids(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        tables = {}
        for tenant_id, table in value.items():
            if isinstance(table, Tenant):
                table = table.model_dump(exclude_unset=True)
            if isinstance(table, Mapping):
                table = dict(table)
                if table.setdefault("id", tenant_id) != tenant_id:
                    raise ValueError(f"tenants.{tenant_id}.id differs from its key")
            tables[tenant_id] = table
        return tables

    @property
    def status_retention(self) -> float:
        """Seconds statuses are kept: ``[stores] retention``, unless the deprecated
        ``[redis] status_ttl`` is set."""
        return self.redis.status_ttl or self.stores.retention

    @model_validator(mode="after")
    def _keys_within_retention(self) -> Settings:
        if self.idempotency.ttl > self.stores.retention:
            raise ValueError(
                f"idempotency.ttl ({self.idempotency.ttl:g} s) must not exceed "
                f"stores.retention ({self.stores.retention:g} s): every key expires "
                "within the retention"
            )
        return self

    def kind(self, kind: str) -> KindSettings:
        """The ``[kinds.<kind>]`` table of ``kind``, or the defaults."""
        return self.kinds.get(kind, _PLAIN_KIND)

    @model_validator(mode="after")
    def _check_links_for_kinds(self) -> Settings:
        # RFC 8058 needs an HTTPS URL in every email of a non-transactional kind.
        bulk = sorted(name for name, kind in self.kinds.items() if not kind.transactional)
        if bulk and not self.links.enabled:
            raise ValueError(
                f"kinds {bulk} are not transactional, so their emails need one-click "
                "unsubscribe links: set [links] base_url and signing_keys"
            )
        return self

    @field_validator("default_locale")
    @classmethod
    def _check_default_locale(cls, value: str) -> str:
        return normalize_locale(value, "default_locale")

    @model_validator(mode="after")
    def _default_locale(self) -> Settings:
        # Tenants that set no locale take the application's default.
        for tenant_id, tenant in self.tenants.items():
            if "locale" not in tenant.model_fields_set:
                self.tenants[tenant_id] = tenant.model_copy(update={"locale": self.default_locale})
        return self

    @model_validator(mode="after")
    def _url_secrets(self) -> Settings:
        # URLs stay strings (kombu and redis take them so), their passwords
        # are scrubbed from every text the library lets out.
        for url in (self.celery.broker_url, self.celery.result_backend, self.redis.url):
            register_url_secrets(url)
        return self

    @model_validator(mode="after")
    def _template_folders_apart(self) -> Settings:
        folders = {
            f"tenants.{tenant_id}.templates_dir": tenant.templates_dir
            for tenant_id, tenant in self.tenants.items()
            if tenant.templates_dir is not None
        }
        if self.templates_dir is not None:
            folders["templates_dir"] = self.templates_dir
        # Raises ConfigurationError itself, naming the key (pydantic passes it on).
        check_apart(folders)
        return self


class _EnvSettings(BaseSettings, Settings):
    """Settings read from ``TENANT_NOTIFY_*`` variables over the config file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments, then the environment, then the file it names.
        file_data = _read_config_file(os.environ.get(CONFIG_FILE_VARIABLE))
        return (init_settings, env_settings, InitSettingsSource(settings_cls, file_data))


def _read_config_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    if not path:
        return {}
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise ConfigurationError(
            f"cannot read {file}: {err.strerror}", key=CONFIG_FILE_VARIABLE
        ) from err
    if file.suffix in {".yaml", ".yml"}:
        try:
            import yaml
        except ModuleNotFoundError as err:
            raise MissingDependencyError("pyyaml", "yaml", key=CONFIG_FILE_VARIABLE) from err
        try:
            data = yaml.safe_load(raw) or {}
        except yaml.YAMLError as err:
            raise ConfigurationError(
                f"{file} is not valid YAML: {err}", key=CONFIG_FILE_VARIABLE
            ) from err
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigurationError(
                f"{file} is not valid TOML: {err}", key=CONFIG_FILE_VARIABLE
            ) from err
    if not isinstance(data, dict):
        raise ConfigurationError(f"{file} must hold a table of settings", key=CONFIG_FILE_VARIABLE)
    return data


def validation_error(
    err: pydantic.ValidationError, prefix: str | None = None
) -> ConfigurationError:
    """One :class:`ConfigurationError` for every problem pydantic found.

    The error names the first problem's key (under ``prefix``, the dotted key of the
    validated table); :attr:`~ConfigurationError.problems` holds one error per problem.
    """
    problems = []
    for problem in err.errors():
        where = ".".join(str(part) for part in problem["loc"])
        key = f"{prefix}.{where}" if prefix and where else (prefix or where or None)
        problems.append(ConfigurationError(problem["msg"], key=key))
    first = problems[0]
    message = first.message
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    return ConfigurationError(message, key=first.key, problems=problems)


_SHORTHANDS = {"TRANSPORT": "BACKEND", "EMAIL": "PROVIDER", "SMS": "PROVIDER"}


def _check_shorthand_variables(environ: Mapping[str, str]) -> None:
    """Refuse ``TENANT_NOTIFY_EMAIL=smtp`` next to ``TENANT_NOTIFY_EMAIL__PORT=...``.

    The shorthand replaces the whole table, so the nested variables would be
    dropped without a word.
    """
    names = {name.upper() for name in environ}
    for table, key in _SHORTHANDS.items():
        shorthand = f"TENANT_NOTIFY_{table}"
        nested = sorted(name for name in names if name.startswith(f"{shorthand}__"))
        if shorthand in names and nested:
            raise ConfigurationError(
                f"{shorthand} (the shorthand) replaces the whole table, so {', '.join(nested)} "
                f"would be ignored; set {shorthand}__{key} instead of {shorthand}",
                key=table.lower(),
            )


def load_settings(source: Settings | Mapping[str, Any] | str | os.PathLike[str] | None) -> Settings:
    """Build :class:`Settings` from a Settings object, a mapping or a file path.

    ``None`` reads the environment (and ``TENANT_NOTIFY_CONFIG_FILE``). A mapping
    or a file is taken as it is, without the environment, so what you pass is
    what you get.

    Raises:
        ConfigurationError: naming the first bad key.
    """
    if isinstance(source, Settings):
        return source
    try:
        if source is None:
            _check_shorthand_variables(os.environ)
            return _EnvSettings()
        if isinstance(source, str | os.PathLike):
            return Settings.model_validate(_read_config_file(source))
        return Settings.model_validate(dict(source))
    except pydantic.ValidationError as err:
        raise validation_error(err) from None


def _variables(environ: Mapping[str, str], prefix: str = ENV_PREFIX) -> list[str]:
    # pydantic-settings matches names case-insensitively.
    return sorted(
        name
        for name in environ
        if name.upper().startswith(prefix) and name.upper() != CONFIG_FILE_VARIABLE
    )


def settings_origin(environ: Mapping[str, str] | None = None) -> str:
    """Where ``load_settings(None)`` reads from, in words, for reports and errors.

    Names the file (``TENANT_NOTIFY_CONFIG_FILE``) and the ``TENANT_NOTIFY_*``
    variables laid over it, never their values.
    """
    environ = os.environ if environ is None else environ
    file = environ.get(CONFIG_FILE_VARIABLE)
    names = _variables(environ)
    where = f"{CONFIG_FILE_VARIABLE}={file}" if file else f"{CONFIG_FILE_VARIABLE} not set"
    if names:
        return f"{where}, with {len(names)} {ENV_PREFIX}* variable(s) over it: {', '.join(names)}"
    return f"{where}, no other {ENV_PREFIX}* variable set"


def require_tenants(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Refuse settings with no tenants, for a worker built from the environment.

    Such a worker can resolve no tenant, so it would dead-letter every
    notification: usually its configuration file was not found or not named.

    Raises:
        ConfigurationError: naming the file variable and the tenant variables it looked at.
    """
    if settings.tenants:
        return
    environ = os.environ if environ is None else environ
    file = environ.get(CONFIG_FILE_VARIABLE)
    looked = (
        f"{CONFIG_FILE_VARIABLE}={file} has no [tenants] table"
        if file
        else f"{CONFIG_FILE_VARIABLE} is not set"
    )
    raise ConfigurationError(
        f"no tenants are configured: {looked} and no {ENV_PREFIX}TENANTS__<ID>__<KEY> variable "
        "is set, so every notification would fail; name the settings file with --config or "
        f"{CONFIG_FILE_VARIABLE}",
        key="tenants",
    )
