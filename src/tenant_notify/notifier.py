"""The Notifier: the one object a host application holds.

It validates a send in the caller's thread (never renders), builds a
:class:`~tenant_notify.models.Notification`, hands it to the transport and
returns a :class:`~tenant_notify.models.Receipt`. Bad input raises a
:class:`~tenant_notify.errors.ValidationError` (or ``UnknownTenantError``,
``TemplateNotFoundError``) before anything is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import replace
from decimal import Decimal
from typing import Any, Concatenate, ParamSpec, Self

from ._offload import Offload
from ._redact import clean_chain
from ._registry import resolve_name
from ._validation import (
    MAX_SMS_CHARS,
    check_amount,
    check_currency,
    check_identifier,
    check_items,
    check_text,
    normalize_email,
    normalize_locale,
    normalize_phone,
)
from .config import Settings, load_settings
from .dispatcher import Dispatcher
from .errors import (
    ConfigurationError,
    InDoubtError,
    InvalidContextError,
    NotifyError,
    NotQueuedError,
    UnknownNotificationError,
    ValidationError,
    WaitTimeoutError,
)
from .events.hub import EventHub, PublishedEvent
from .log import get_logger, mask_recipient
from .metrics import resolve_metrics
from .models import (
    Address,
    Attachment,
    Channel,
    DeliveryState,
    DeliveryStatus,
    EmailOptions,
    Notification,
    Receipt,
    encode_context,
    new_notification_id,
)
from .observers import notify_observer
from .stores import IdempotencyStore, MemoryIdempotencyStore, MemoryStatusStore, StatusStore
from .tenants import StaticTenantResolver, Tenant, TenantResolver
from .transports import TRANSPORT_ALIASES, TRANSPORT_EXTRAS, Transport

__all__ = ["Notifier"]

# States an email can be opened or clicked in.
_ENGAGEABLE = frozenset({DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.BOUNCED})

# Names the library puts into every template context itself.
_RESERVED_CONTEXT = frozenset({"tenant", "locale"})

_P = ParamSpec("_P")

# While Notifier.build runs a send method: the notifier building, and what its
# submit() was handed instead of queueing it.
_BUILDING: ContextVar[tuple[Notifier, list[Notification]] | None] = ContextVar(
    "tenant_notify_building", default=None
)


#: Threads of a notifier's pool for the coroutine twins' blocking part (the enqueue,
#: a status read): at most this many at a time; more coroutines wait their turn.
#: One on purpose: every other thread running Python is one more the event loop
#: waits for the GIL behind. Measured at 1,000 sends a second on the celery
#: transport, one thread kept the loop's median lag at a third of what two or
#: four did, at the same rate (bench/bench_async.py, docs/benchmarks.md).
ASYNC_THREADS = 1

# The most (tenant, kind, channel, locale) whose settings' checks a notifier keeps
# as passed; past it, it starts afresh (a host with more tenants pays the checks
# now and then, nothing else).
_SETTLED_LIMIT = 4096


def _timed_out(status: DeliveryStatus, timeout: float | None) -> WaitTimeoutError:
    return WaitTimeoutError(
        f"still {status.state.value} after {timeout}s",
        tenant_id=status.tenant_id,
        notification_id=status.id,
    )


def _coroutine_twin(
    send: Callable[Concatenate[Notifier, _P], Receipt],
) -> Callable[Concatenate[Notifier, _P], Coroutine[Any, Any, Receipt]]:
    """``asend_x``: the checks of ``send_x`` (through build) in the loop, the enqueue off it."""

    @functools.wraps(send)
    async def twin(self: Notifier, /, *args: _P.args, **kwargs: _P.kwargs) -> Receipt:
        # Looked up on the instance, so a subclass's own send_x is the one run.
        notification = self.build(getattr(self, send.__name__), *args, **kwargs)
        return await self.asubmit(notification)

    twin.__name__ = twin.__qualname__ = f"a{send.__name__}"
    twin.__doc__ = (
        f"The coroutine twin of :meth:`{send.__name__}`: the same arguments, checks,\n"
        "errors and receipt. The send is checked in the event loop, before anything\n"
        "is queued; the enqueue (the status store, the broker) runs on the\n"
        "notifier's offload thread, so the loop never waits for the network."
    )
    return twin


class Notifier:
    """Sends tenants' notifications through the configured transport.

    Build it with :meth:`from_settings` or :meth:`from_env`. Every send method is
    keyword-only, accepts ``idempotency_key=`` and returns a :class:`Receipt`.
    It is thread-safe; close it (or use it as a context manager) on shutdown so
    the in-process transport drains. Every send and read has a coroutine twin for
    asyncio hosts (``await notify.asend_order_confirmation(...)``, ``asend``,
    ``asubmit``, ``astatus``, ``await receipt.await_()``, ``aclose``; ``async with``).

    Args:
        settings: Validated settings.
        tenant_resolver: Where tenants come from; defaults to the settings' tables.
        transport: A Transport instance, class or name; defaults to ``settings.transport``.
        status_store: Defaults to the transport's default store (Redis for
            ``celery``), else an in-memory store.
        idempotency_store: Defaults like ``status_store``.
        metrics: Delivery metrics (see :mod:`tenant_notify.metrics`): True for
            prometheus-client's default registry, a ``CollectorRegistry``, a
            :class:`~tenant_notify.metrics.MetricsRecorder`, or False. Defaults
            to ``settings.metrics`` (off).

    Raises:
        ConfigurationError: naming the key at fault, for any bad setting.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        tenant_resolver: TenantResolver | None = None,
        transport: Transport | type[Transport] | str | None = None,
        status_store: StatusStore | None = None,
        idempotency_store: IdempotencyStore | None = None,
        metrics: Any = None,
    ) -> None:
        self.settings = settings
        self._log = get_logger()
        self._mask = mask_recipient if settings.mask_recipients else str
        self.tenants: TenantResolver = tenant_resolver or StaticTenantResolver(settings.tenants)
        factory = self._transport_factory(transport)
        if status_store is None or idempotency_store is None:
            kind = type(factory) if isinstance(factory, Transport) else factory
            shared = kind.default_stores(settings)
            if shared is not None:
                status_store = status_store or shared[0]
                idempotency_store = idempotency_store or shared[1]
        self.status_store: StatusStore = status_store or MemoryStatusStore.from_settings(settings)
        self.idempotency_store: IdempotencyStore = (
            idempotency_store or MemoryIdempotencyStore.from_settings(settings)
        )
        self.dispatcher = Dispatcher.from_settings(
            settings,
            tenants=self.tenants,
            status_store=self.status_store,
            idempotency_store=self.idempotency_store,
            metrics=resolve_metrics(settings.metrics if metrics is None else metrics),
        )
        # Fail at build time, naming the key, rather than on the first delivery.
        self.dispatcher.check_providers()
        #: Suppression lists, the breaker, signed links, engagement (docs/deliverability.md).
        self.reputation = self.dispatcher.reputation
        #: ``notify.suppressions.add / remove / list / check``.
        self.suppressions = self.reputation.suppressions
        #: ``notify.breaker.resume(tenant_id)``, ``notify.breaker.pauses()``.
        self.breaker = self.reputation.breaker
        self.events = EventHub(settings)
        self.transport = (
            factory
            if isinstance(factory, Transport)
            else factory.from_settings(self.dispatcher, self.settings)
        )
        self._offload = Offload(ASYNC_THREADS, "tenant-notify-async")
        # (tenant id, kind, channel, locale) -> the Tenant that passed the checks of
        # those alone (see _prepare).
        self._settled: dict[tuple[str, str, Channel, str], Tenant] = {}
        self._closed = False

    # --- construction --------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, settings: Settings | Mapping[str, Any] | str | os.PathLike[str], **options: Any
    ) -> Self:
        """Build from a :class:`Settings`, a mapping, or a TOML/YAML file path.

        ``options`` are passed to the constructor (``tenant_resolver=``, ...).
        """
        return cls(load_settings(settings), **options)

    @classmethod
    def from_env(cls, **options: Any) -> Self:
        """Build from ``TENANT_NOTIFY_*`` variables and ``TENANT_NOTIFY_CONFIG_FILE``."""
        return cls(load_settings(None), **options)

    def _transport_factory(
        self, transport: Transport | type[Transport] | str | None
    ) -> Transport | type[Transport]:
        if isinstance(transport, Transport):
            return transport
        factory: Any = transport or self.settings.transport.backend
        if isinstance(factory, str):
            factory = resolve_name(
                factory,
                aliases=TRANSPORT_ALIASES,
                extras=TRANSPORT_EXTRAS,
                group="tenant_notify.transports",
                kind="transport",
                key="transport.backend",
            )
        if not (isinstance(factory, type) and issubclass(factory, Transport)):
            raise ConfigurationError(f"{factory!r} is not a Transport", key="transport.backend")
        return factory

    # --- the generic send ------------------------------------------------------------

    def send(
        self,
        kind: str,
        *,
        tenant_id: str,
        to: str,
        context: Mapping[str, Any] | None = None,
        channel: Channel | str = Channel.EMAIL,
        idempotency_key: str | None = None,
        locale: str | None = None,
        to_name: str | None = None,
        cc: str | Address | Iterable[str | Address] | None = None,
        bcc: str | Address | Iterable[str | Address] | None = None,
        reply_to: str | Address | None = None,
        attachments: Iterable[Attachment] | None = None,
        headers: Mapping[str, str] | None = None,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Receipt:
        """Send a notification of any kind (built-in or the host's own templates).

        Args:
            kind: Template kind; its parts are looked up in the tenant's, the
                application's and the built-in templates.
            tenant_id: Whose identity, provider and templates to use.
            to: An email address (email) or an E.164 number (sms).
            context: Fields the templates see by name. Values must be JSON types,
                Decimal, date or datetime (they may travel to another process).
            channel: ``"email"`` or ``"sms"``.
            idempotency_key: Sending again with the same key (for this tenant and kind)
                sends nothing and returns the first send's receipt.
            locale: Overrides the tenant's locale.
            to_name: The recipient's display name (email).
            cc, bcc: Further recipients: an address or a list of addresses
                (strings or :class:`~tenant_notify.models.Address` with a name).
            reply_to: Reply-To for this message, over the tenant's.
            attachments: :class:`~tenant_notify.models.Attachment` objects: files,
                and inline images the HTML refers to as ``cid:<content_id>``.
            headers: Extra headers (not ones the library sets itself).
            tags: Labels for the provider's analytics.
            metadata: String pairs the provider keeps with the message and
                reports back with its delivery events.

        The email options (``to_name`` to ``metadata``) are checked at the call,
        and so is whether the tenant's provider can send them.

        Raises:
            ValidationError: bad recipient, context, locale or email option
                (nothing queued).
            UnsupportedFeatureError: the tenant's provider cannot send an option
                asked for, or track as the tenant asks (a ValidationError).
            RecipientSuppressedError: the recipient is on the tenant's
                suppression list (a ValidationError; raised here when the list
                is kept in process, else the status ends ``suppressed``).
            TenantPausedError: the sender-fault breaker paused the tenant's
                channel (raised here when its state is kept in process, else
                the status ends ``failed``).
            UnknownTenantError: no such tenant.
            TemplateNotFoundError: no template for the kind on this channel.
            EnqueueError: the transport could not accept it.
        """
        try:
            channel = Channel(channel)
        except ValueError:
            raise ValidationError(
                f"{channel!r} is not a channel (email, sms)", field="channel"
            ) from None
        if channel is Channel.EMAIL:
            recipient = normalize_email(to, "to")
        else:
            recipient = normalize_phone(to, "to")
        context = dict(context or {})
        reserved = _RESERVED_CONTEXT & context.keys()
        if reserved:
            raise InvalidContextError(
                f"{sorted(reserved)} are set by the library", field=sorted(reserved)[0]
            )
        options = EmailOptions.build(
            to_name=to_name,
            cc=cc,
            bcc=bcc,
            reply_to=reply_to,
            headers=headers,
            tags=tags,
            metadata=metadata,
            attachments=attachments,
            to=recipient if channel is Channel.EMAIL else None,
        )
        return self.submit(
            self._prepare(
                kind, tenant_id, channel, recipient, context, idempotency_key, locale, options
            )
        )

    # --- build, then submit ----------------------------------------------------------

    def build(
        self, send: Callable[_P, Receipt], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Notification:
        """Run every check of a send and return its notification; queue nothing.

        ``send`` is one of this notifier's send methods (``notify.send``,
        ``notify.send_order_confirmation``, a subclass's own), called with
        ``args`` and ``kwargs``; it raises what it would raise when sending
        (``ValidationError``, ``UnknownTenantError``, ...). Pass the result to
        :meth:`submit`, now or later (after a commit, say)::

            notification = notify.build(notify.send_welcome_email, user_email=..., ...)
            receipt = notify.submit(notification)

        Raises:
            TypeError: ``send`` is not a method of this notifier, or did not hand
                exactly one notification to :meth:`submit`.
        """
        if getattr(send, "__self__", None) is not self:
            raise TypeError(f"build() takes a send method of this notifier, not {send!r}")
        built: list[Notification] = []
        token = _BUILDING.set((self, built))
        try:
            send(*args, **kwargs)
        finally:
            _BUILDING.reset(token)
        if len(built) != 1:
            name = getattr(send, "__name__", repr(send))
            raise TypeError(
                f"{type(self).__name__}.{name} does not send exactly one notification "
                "through submit()"
            )
        return built[0]

    def submit(self, notification: Notification) -> Receipt:
        """Queue a notification from :meth:`build` and return its receipt.

        Raises:
            EnqueueError: the transport could not accept it.
        """
        building = _BUILDING.get()
        if building is not None and building[0] is self:
            # Inside build(): hand the notification over instead of queueing it.
            building[1].append(notification)
            return self._receipt(notification.id, notification.tenant_id, notification.kind)
        return self._enqueue(notification)

    def _prepare(
        self,
        kind: str,
        tenant_id: str,
        channel: Channel,
        to: str,
        context: dict[str, Any],
        idempotency_key: str | None,
        locale: str | None,
        options: EmailOptions | None = None,
    ) -> Notification:
        """Every check a send makes before queueing; the notification to queue."""
        self._check_open(tenant_id)
        tenant_id = check_identifier(tenant_id, "tenant_id")
        tenant = self.tenants.get(tenant_id)
        if locale is not None:
            locale = normalize_locale(locale, "locale")
        # The checks that depend only on the tenant's settings, the kind, the channel
        # and the locale passed for this tenant object before: not run again. (A
        # resolver that builds a new Tenant each time has them run each time.)
        settled = (tenant_id, kind, channel, locale or tenant.locale)
        known = self._settled.get(settled) is tenant
        if not known:
            self._check_sendable(tenant, kind, channel, settled[3])
        self.dispatcher.providers.check_options(tenant, channel, options)
        if not known:
            self.reputation.check_tracking(tenant, kind, channel, self.dispatcher.providers)
            if len(self._settled) >= _SETTLED_LIMIT:
                self._settled.clear()
            self._settled[settled] = tenant
        self.reputation.check_holds(tenant, kind, channel, to)
        if idempotency_key is not None:
            check_text(idempotency_key, "idempotency_key", max_chars=512)
        notification = Notification(
            id=new_notification_id(tenant_id, kind, idempotency_key),
            tenant_id=tenant_id,
            kind=kind,
            channel=channel,
            to=to,
            # No bigger than a render can work with: it could only fail there.
            context=encode_context(context, max_chars=self.dispatcher.renderer.max_work),
            idempotency_key=idempotency_key,
            locale=locale,
            options=options,
        )
        # Last: only a send that passed every other check counts against a limit.
        self.dispatcher.limits.check_call(tenant, channel)
        return notification

    def _check_open(self, tenant_id: str) -> None:
        if self._closed:
            raise NotQueuedError("the notifier is closed", tenant_id=tenant_id)

    def _enqueue(self, notification: Notification) -> Receipt:
        """Record ``queued``, hand to the transport; nothing waits on a shared store.

        A send with an idempotency key has an id derived from tenant, kind and key
        (:func:`~tenant_notify.models.new_notification_id`): a repeat carries the
        first send's id, and the delivery claim on the worker's side makes sure it
        is delivered once. Where the status store answers at once (in memory), a
        known repeat is not handed to the transport at all.

        Raises:
            NotQueuedError: nothing was queued (retrying the same call is safe).
            InDoubtError: it may be queued (retry with the same key: never twice).
        """
        self._check_open(notification.tenant_id)
        tenant_id, kind = notification.tenant_id, notification.kind
        queued = DeliveryStatus.queued(notification)
        keyed = notification.idempotency_key is not None
        save_first = getattr(self.status_store, "save_first", None) if keyed else None
        seen: bool | Callable[[], bool] = False
        try:
            if save_first is not None:
                seen = save_first(queued)
            else:
                self.status_store.save(queued)
            if seen is True:
                self._log.info(
                    "notification_duplicate",
                    tenant_id=tenant_id,
                    notification_id=notification.id,
                    kind=kind,
                )
                return self._receipt(notification.id, tenant_id, kind, duplicate=True)
            self.transport.submit(notification)
        except BaseException as err:
            if not isinstance(err, InDoubtError):
                # Not queued: forget the status this call wrote (only that one: a
                # repeat must not erase what its first send recorded), so that
                # retrying the call is simply a send.
                discard_queued = getattr(self.status_store, "discard_queued", None)
                with contextlib.suppress(NotifyError):
                    if discard_queued is not None:
                        discard_queued(queued)
                    elif not keyed:
                        self.status_store.discard(notification.id)
            if isinstance(err, NotifyError):
                clean_chain(err)  # a broker's or Redis's exception may quote a URL
            raise
        # Only once it is queued: a callback must not announce what never was.
        if not getattr(seen, "existed", False):
            notify_observer(self.dispatcher.observer, queued)
        return self._receipt(notification.id, tenant_id, kind, duplicate=seen)

    def _check_sendable(self, tenant: Tenant, kind: str, channel: Channel, locale: str) -> None:
        if channel is Channel.EMAIL and tenant.email_from is None:
            raise ConfigurationError(
                "the tenant has no email_from",
                key=f"tenants.{tenant.id}.email_from",
                tenant_id=tenant.id,
            )
        if channel is Channel.SMS and tenant.sms_from is None:
            raise ConfigurationError(
                "the tenant has no sms_from",
                key=f"tenants.{tenant.id}.sms_from",
                tenant_id=tenant.id,
            )
        self.dispatcher.renderer.check_kind(
            kind, channel, templates_dir=tenant.templates_dir, locale=locale
        )

    def _receipt(
        self,
        notification_id: str,
        tenant_id: str,
        kind: str,
        duplicate: bool | Callable[[], bool] = False,
    ) -> Receipt:
        return Receipt(
            notification_id,
            tenant_id=tenant_id,
            kind=kind,
            duplicate=duplicate,
            get_status=self.status,
            wait=self.wait,
            aget_status=self.astatus,
            await_=self.await_,
        )

    # --- the built-in kinds --------------------------------------------------------

    def send_order_confirmation(
        self,
        *,
        order_id: str | int,
        customer_email: str,
        order_total: Decimal | int | str,
        currency: str,
        tenant_id: str,
        customer_name: str | None = None,
        items: Sequence[Mapping[str, Any]] | None = None,
        order_url: str | None = None,
        locale: str | None = None,
        idempotency_key: str | None = None,
        attachments: Iterable[Attachment] | None = None,
    ) -> Receipt:
        """Email an order confirmation.

        The idempotency key defaults to the order id (per tenant): confirming the
        same order twice sends one email.

        Args:
            order_id: The host's order id.
            customer_email: Recipient.
            order_total: Non-negative amount (Decimal, int or numeric string).
            currency: ISO 4217 code (``"USD"``).
            tenant_id: The shop.
            customer_name: Greeting name, if known.
            items: Order lines ``{"name", "quantity", "unit_price"}``.
            order_url: Link to the order in the shop.
            locale: Overrides the tenant's locale.
            idempotency_key: Overrides the default key.
            attachments: The invoice, say, or a logo the tenant's template shows
                inline (see :meth:`send` and :class:`~tenant_notify.models.Attachment`).
        """
        order_id = check_identifier(order_id, "order_id")
        context: dict[str, Any] = {
            "order_id": order_id,
            "customer_email": normalize_email(customer_email, "customer_email"),
            "order_total": check_amount(order_total, "order_total"),
            "currency": check_currency(currency),
        }
        if customer_name is not None:
            context["customer_name"] = check_text(
                customer_name, "customer_name", header=True, max_chars=200
            )
        if items is not None:
            context["items"] = check_items(items)
        if order_url is not None:
            context["order_url"] = check_text(order_url, "order_url", header=True, max_chars=2048)
        return self.submit(
            self._prepare(
                "order_confirmation",
                tenant_id,
                Channel.EMAIL,
                context["customer_email"],
                context,
                idempotency_key or f"order_confirmation:{order_id}",
                locale,
                EmailOptions.build(to_name=customer_name, attachments=attachments),
            )
        )

    def send_welcome_email(
        self,
        *,
        user_email: str,
        user_name: str,
        tenant_id: str,
        login_url: str | None = None,
        locale: str | None = None,
        idempotency_key: str | None = None,
    ) -> Receipt:
        """Email a welcome to a new user.

        The idempotency key defaults to the user's address (per tenant): a user
        is welcomed once.
        """
        context: dict[str, Any] = {
            "user_email": normalize_email(user_email, "user_email"),
            "user_name": check_text(user_name, "user_name", header=True, max_chars=200),
        }
        if login_url is not None:
            context["login_url"] = check_text(login_url, "login_url", header=True, max_chars=2048)
        return self.submit(
            self._prepare(
                "welcome",
                tenant_id,
                Channel.EMAIL,
                context["user_email"],
                context,
                # Local parts are case-sensitive on the wire, but not to the people
                # who type them: one welcome per address, whatever its case.
                idempotency_key or f"welcome:{context['user_email'].casefold()}",
                locale,
                EmailOptions.build(to_name=context["user_name"]),
            )
        )

    def send_email(
        self,
        *,
        to_email: str,
        subject: str,
        body: str,
        tenant_id: str,
        html_body: str | None = None,
        locale: str | None = None,
        idempotency_key: str | None = None,
        to_name: str | None = None,
        cc: str | Address | Iterable[str | Address] | None = None,
        bcc: str | Address | Iterable[str | Address] | None = None,
        reply_to: str | Address | None = None,
        attachments: Iterable[Attachment] | None = None,
        headers: Mapping[str, str] | None = None,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Receipt:
        """Email a ready-made subject and body with the tenant's identity.

        ``html_body`` is sent as it is (it is the host's HTML, not a template).
        The email options (``to_name`` to ``metadata``) are those of :meth:`send`.
        """
        context: dict[str, Any] = {
            "subject": check_text(subject, "subject", header=True, max_chars=998),
            # The email kind renders them whole: over the cap, the delivery would fail.
            "body": check_text(body, "body", max_chars=self.settings.templates.max_output_chars),
        }
        if html_body is not None:
            context["html_body"] = check_text(
                html_body, "html_body", max_chars=self.settings.templates.max_output_chars
            )
        recipient = normalize_email(to_email, "to_email")
        options = EmailOptions.build(
            to_name=to_name,
            cc=cc,
            bcc=bcc,
            reply_to=reply_to,
            headers=headers,
            tags=tags,
            metadata=metadata,
            attachments=attachments,
            to=recipient,
        )
        return self.submit(
            self._prepare(
                "email",
                tenant_id,
                Channel.EMAIL,
                recipient,
                context,
                idempotency_key,
                locale,
                options,
            )
        )

    def send_sms(
        self,
        *,
        to_phone: str,
        body: str,
        tenant_id: str,
        idempotency_key: str | None = None,
    ) -> Receipt:
        """Text ``body`` to an E.164 number from the tenant's sender."""
        context = {"body": check_text(body, "body", max_chars=MAX_SMS_CHARS)}
        recipient = normalize_phone(to_phone, "to_phone")
        return self.submit(
            self._prepare("sms", tenant_id, Channel.SMS, recipient, context, idempotency_key, None)
        )

    # --- domain events ---------------------------------------------------------------

    def publish_event(
        self,
        type: str,
        data: Any,
        *,
        tenant_id: str,
        source: str | None = None,
        id: str | None = None,
        subject: str | None = None,
        time: dt.datetime | None = None,
        dataschema: str | None = None,
    ) -> PublishedEvent:
        """Publish a domain event as a CloudEvent; the ``[[events.rules]]`` send for it.

        On the ``celery`` transport the event goes to ``[events] exchange``
        (routing key: its type) and this returns once the broker confirmed it;
        ``tenant-notify events consume`` sends the notifications. In process
        (the embedded default) the rules are applied at once and the receipts
        returned. See ``docs/events.md``.

        Args:
            type: CloudEvents ``type`` (``"com.example.order.created"``).
            data: The payload: JSON types, Decimal, date, datetime.
            tenant_id: Goes into the ``tenantid`` extension attribute.
            source: CloudEvents ``source``; default ``[events] source``.
            id: Event id; default a random UUID. The same source and id send once.
            subject, time, dataschema: The CloudEvents attributes of those names.

        Raises:
            InvalidEventError: bad attributes, or data that fails its schema.
            UnknownTenantError: no such tenant.
            ValidationError: in process, a send the Notifier refuses.
            EnqueueError: the broker did not confirm it (or no queue is bound).
        """
        self._check_open(tenant_id)
        return self.events.publish(
            self,
            type,
            data,
            tenant_id=tenant_id,
            source=source,
            id=id,
            subject=subject,
            time=time,
            dataschema=dataschema,
        )

    # --- status ----------------------------------------------------------------------

    def status(self, notification_id: str) -> DeliveryStatus:
        """The current status of a notification.

        Raises:
            UnknownNotificationError: the id is unknown (or its status expired).
        """
        status = self.status_store.get(notification_id)
        if status is None:
            raise UnknownNotificationError(
                f"no status for notification {notification_id!r}", notification_id=notification_id
            )
        return self._with_engagement(status)

    def _with_engagement(self, status: DeliveryStatus) -> DeliveryStatus:
        # Engagement is kept beside the status (its writers never race the
        # dispatcher's): only emails that were sent can have any.
        if status.channel is not Channel.EMAIL or status.state not in _ENGAGEABLE:
            return status
        engagement = self.reputation.store.get_engagement(status.id)
        return status if engagement is None else replace(status, engagement=engagement)

    def wait(self, notification_id: str, timeout: float | None = 30.0) -> DeliveryStatus:
        """Block until the notification is sent or failed; return its status.

        Raises:
            UnknownNotificationError: the id is unknown.
            WaitTimeoutError: still pending after ``timeout`` seconds.
        """
        status = self.status_store.wait(notification_id, timeout)
        if status is None:
            raise UnknownNotificationError(
                f"no status for notification {notification_id!r}", notification_id=notification_id
            )
        if not status.is_final:
            raise _timed_out(status, timeout)
        return self._with_engagement(status)

    # --- coroutine twins -------------------------------------------------------------
    #
    # Each checks a send in the event loop exactly as its blocking twin does (it
    # *is* the blocking method, run through build()), then hands the enqueue, the
    # only part that waits for the status store and the broker, to the notifier's
    # offload thread (see tenant_notify._offload and ASYNC_THREADS).

    asend = _coroutine_twin(send)
    asend_order_confirmation = _coroutine_twin(send_order_confirmation)
    asend_welcome_email = _coroutine_twin(send_welcome_email)
    asend_email = _coroutine_twin(send_email)
    asend_sms = _coroutine_twin(send_sms)

    async def asubmit(self, notification: Notification) -> Receipt:
        """The coroutine twin of :meth:`submit`: queue a notification from :meth:`build`.

        Raises:
            EnqueueError: the transport could not accept it.
        """
        self._check_open(notification.tenant_id)
        return await self._offload.run(self.submit, notification)

    async def astatus(self, notification_id: str) -> DeliveryStatus:
        """The coroutine twin of :meth:`status`.

        Raises:
            UnknownNotificationError: the id is unknown (or its status expired).
        """
        return await self._offload.run(self.status, notification_id)

    async def await_(self, notification_id: str, timeout: float | None = 30.0) -> DeliveryStatus:
        """The coroutine twin of :meth:`wait`: until the notification is sent or failed.

        Reads the status every few milliseconds at first, then every 200 ms, so a
        waiting coroutine holds no thread.

        Raises:
            UnknownNotificationError: the id is unknown.
            WaitTimeoutError: still pending after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = 0.005
        while True:
            status = await self.astatus(notification_id)
            if status.is_final:
                return status
            remaining = pause if deadline is None else min(pause, deadline - loop.time())
            if remaining <= 0:
                raise _timed_out(status, timeout)
            await asyncio.sleep(remaining)
            pause = min(pause * 2, 0.2)

    # --- lifecycle -------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting sends, drain the transport, close providers and stores."""
        if self._closed:
            return
        self._closed = True
        try:
            # Coroutines' enqueues still running finish first, so the drain includes them.
            self._offload.shutdown()
            self.transport.close(timeout)
        finally:
            self.events.close()
            self.dispatcher.close()
            self.status_store.close()
            self.idempotency_store.close()

    async def aclose(self, timeout: float | None = None) -> None:
        """The coroutine twin of :meth:`close` (which runs in a thread meanwhile)."""
        await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Notifier transport={self.transport.name!r}>"
