"""The exception tree of tenant-notify.

Every error the library raises derives from :class:`NotifyError`; third-party
exceptions (smtplib, jinja2, pydantic, ...) are translated at the boundary and
chained with ``raise ... from err``.

::

    NotifyError
    ├── ConfigurationError              bad settings; raised when the Notifier is built
    │   ├── MissingDependencyError      (also ImportError) an optional extra is not installed
    │   ├── UnknownBackendError         (also LookupError) provider/transport name not found
    │   └── UnsupportedChannelError     a provider asked for a channel it does not serve
    ├── ValidationError                 (also ValueError) bad input to a send; nothing queued
    │   ├── InvalidRecipientError       email address or E.164 phone number
    │   ├── InvalidCurrencyError        not the ISO 4217 code of a currency in use
    │   ├── InvalidAmountError          negative, non-numeric, non-finite or too large amount
    │   ├── HeaderInjectionError        a line break or control character in a header field
    │   ├── InvalidContextError         context that cannot travel: type, size, depth, cycle
    │   ├── InvalidAttachmentError      an attachment's name, type, content id or size
    │   ├── UnsupportedFeatureError     the tenant's provider cannot send what was asked
    │   └── RecipientSuppressedError    the recipient is on the tenant's suppression list
    ├── UnknownTenantError              (also LookupError)
    ├── UnknownNotificationError        (also LookupError) status asked for an unknown id
    ├── TemplateError
    │   ├── TemplateNotFoundError       (also LookupError) no template for a kind/part
    │   ├── TemplateRenderError         syntax error, undefined variable, ...
    │   ├── TemplateSecurityError       a sandbox violation (reaching Python internals)
    │   └── TemplateLimitError          output, a value or the work over its limit; too slow
    ├── EnqueueError                    a send did not return a receipt (one of the two below)
    │   ├── NotQueuedError              nothing was queued: retrying the same call is safe
    │   │   ├── QueueFullError          the in-process queue stayed full past the timeout
    │   │   └── StoreUnavailableError   the shared store (Redis) did not answer
    │   └── InDoubtError                perhaps queued: retrying with the same idempotency
    │                                   key never sends twice (without one it may)
    ├── DeliveryError                   the provider did not deliver
    │   ├── TransientDeliveryError      retryable (SMTP 4xx, connection refused, 429, 5xx)
    │   ├── PermanentDeliveryError      not retryable (SMTP 5xx, HTTP 400)
    │   └── AmbiguousDeliveryError      may or may not have been accepted (timeout after
    │                                   send, a worker that died after its hand-over)
    ├── TenantPausedError               the tenant's channel is paused: its sending setup is broken
    ├── RateLimitedError                a send over the tenant's [limits] with on_limit = "raise";
    │                                   nothing queued; retry_after says when it would pass
    ├── InvalidLinkError                (also ValueError) a signed unsubscribe/tracking link that
    │                                   does not verify: answer 404, change nothing
    ├── WaitTimeoutError                (also TimeoutError) Receipt.wait ran out of time
    ├── EventError                      a domain event cannot be turned into notifications
    │   ├── InvalidEventError           (also ValidationError) not CloudEvents JSON, fails its
    │   │                               schema, or a rule's path finds nothing
    │   └── UnmappedEventError          (also LookupError) no rule maps its type
    └── WebhookError                    a delivery-event webhook request cannot be used
        ├── WebhookVerificationError    wrong signature or stale timestamp: reject it (403)
        └── WebhookPayloadError         (also ValueError) signed, but unreadable: reject it (400)
            └── WebhookBodyTooLargeError  over the size limit, refused while reading it (413)

Retryability is in the type: a transport retries :class:`TransientDeliveryError`
(honouring :attr:`DeliveryError.retry_after`) and nothing else, except
:class:`AmbiguousDeliveryError` when the retry policy says so.

Failover is in the type too: after a transient or permanent error the message was
certainly not accepted, so the next provider of the channel may be tried, unless
:attr:`DeliveryError.recipient_error` says the recipient itself is the problem
(another provider would be refused the same way, or must not be asked: an opted-out
number). Never after an :class:`AmbiguousDeliveryError`.

What an error says about the tenant is in the type's attributes as well:
:attr:`DeliveryError.sender_fault` marks errors that mean the tenant's sending
setup is wrong (an unverified sender, a DKIM/SPF policy refusal); the sender-fault
breaker counts them and pauses the tenant's channel (:class:`TenantPausedError`).
:attr:`DeliveryError.suppress_as` marks errors that put the recipient on the
tenant's suppression list (a number that replied STOP).

Errors never carry secrets: credentials are not part of any message or attribute,
and every message is redacted when the error is made (registered secrets become
``***``; email addresses and phone numbers are masked, but in a
:class:`ConfigurationError`). A provider's errors reach you with a cleaned chain:
every foreign exception in ``__cause__``/``__context__`` is replaced by a
:class:`~tenant_notify._redact.Redacted` stand-in holding its redacted text.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, ClassVar

from ._redact import redact, redact_secrets

__all__ = [
    "AmbiguousDeliveryError",
    "ConfigurationError",
    "DeliveryError",
    "EnqueueError",
    "EventError",
    "HeaderInjectionError",
    "InDoubtError",
    "InvalidAmountError",
    "InvalidAttachmentError",
    "InvalidContextError",
    "InvalidCurrencyError",
    "InvalidEventError",
    "InvalidLinkError",
    "InvalidRecipientError",
    "MissingDependencyError",
    "NotQueuedError",
    "NotifyError",
    "PermanentDeliveryError",
    "QueueFullError",
    "RateLimitedError",
    "RecipientSuppressedError",
    "StoreUnavailableError",
    "TemplateError",
    "TemplateLimitError",
    "TemplateNotFoundError",
    "TemplateRenderError",
    "TemplateSecurityError",
    "TenantPausedError",
    "TransientDeliveryError",
    "UnknownBackendError",
    "UnknownNotificationError",
    "UnknownTenantError",
    "UnmappedEventError",
    "UnsupportedChannelError",
    "UnsupportedFeatureError",
    "ValidationError",
    "WaitTimeoutError",
    "WebhookBodyTooLargeError",
    "WebhookError",
    "WebhookPayloadError",
    "WebhookVerificationError",
]


class NotifyError(Exception):
    """Root of every error raised by tenant-notify.

    Attributes:
        message: What went wrong, in words.
        tenant_id: The tenant the failing operation belonged to, if known.
        notification_id: The notification concerned, if known.
        provider: The provider name concerned, if any.
    """

    #: Whether the message's email addresses and phone numbers are masked (they
    #: are in every error but a configuration error, which names no recipient).
    masks_recipients: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        tenant_id: str | None = None,
        notification_id: str | None = None,
        provider: str | None = None,
    ) -> None:
        # Whatever an error says may end up in a log, a status or a traceback:
        # the one place the library's errors are made is where they are redacted.
        message = redact(message) if self.masks_recipients else redact_secrets(message)
        super().__init__(message)
        self.message = message
        self.tenant_id = tenant_id
        self.notification_id = notification_id
        self.provider = provider

    def _context(self) -> list[str]:
        parts = []
        if self.tenant_id is not None:
            parts.append(f"tenant={self.tenant_id}")
        if self.notification_id is not None:
            parts.append(f"notification={self.notification_id}")
        if self.provider is not None:
            parts.append(f"provider={self.provider}")
        return parts

    def __str__(self) -> str:
        context = self._context()
        return f"{self.message} ({', '.join(context)})" if context else self.message


# --- configuration -----------------------------------------------------------------


class ConfigurationError(NotifyError):
    """The settings are wrong. Raised when the Notifier is built, never on a send.

    Attributes:
        key: The dotted settings key at fault (``"tenants.acme.email.port"``), if known.
        problems: When several problems were found at once (every bad key of one
            table), one error per problem, each with its own key, the first being
            the one this error describes; empty when there was just one.
    """

    masks_recipients = False  # sender addresses and host names, not recipients

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        problems: Sequence[ConfigurationError] = (),
        **context: str | None,
    ) -> None:
        super().__init__(message, **context)
        self.key = key
        self.problems: tuple[ConfigurationError, ...] = tuple(problems)

    def __str__(self) -> str:
        text = super().__str__()
        return f"{self.key}: {text}" if self.key else text


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, *, key: str | None = None) -> None:
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'tenant-notify[{extra}]'",
            key=key,
        )
        self.package = package
        self.extra = extra


class UnknownBackendError(ConfigurationError, LookupError):
    """A provider or transport name that resolves to nothing."""


class UnsupportedChannelError(ConfigurationError):
    """A provider configured for a channel it does not serve (SMTP for SMS, say)."""


# --- input validation ----------------------------------------------------------------


class ValidationError(NotifyError, ValueError):
    """Bad input to a send. Raised in the caller before anything is queued.

    Attributes:
        field: The argument or context field at fault.
    """

    def __init__(self, message: str, *, field: str | None = None, **context: str | None) -> None:
        super().__init__(message, **context)
        self.field = field

    def __str__(self) -> str:
        text = super().__str__()
        return f"{self.field}: {text}" if self.field else text


class InvalidRecipientError(ValidationError):
    """An email address or a phone number (E.164) that is not valid."""


class InvalidCurrencyError(ValidationError):
    """A currency that is not the ISO 4217 code of a currency in use (per Babel's CLDR data)."""


class InvalidAmountError(ValidationError):
    """An amount that is negative, not a number, not finite, or over ``10**15``."""


class HeaderInjectionError(ValidationError):
    """A header value (subject, display name, header) holding a line break of any
    kind (CR, LF, VT, FF, FS, GS, RS, NEL, U+2028, U+2029), another C0 or C1
    control character or DEL (TAB is allowed), or a lone surrogate.

    Also raised for RFC 2047 encoded words that decode to a control character:
    CPython's ``email`` package decodes them when parsing a header and can write
    the bare line break back out (CVE-2024-6923), so the library refuses them itself.
    """


class InvalidContextError(ValidationError):
    """A context that cannot be carried to a worker or rendered: a value of a type
    JSON cannot carry, an integer beyond 64 bits, a Decimal too large to format, a
    string no encoding can write, containers nested deeper than 32 or holding
    themselves, or more characters in all than a render can work with."""


class InvalidAttachmentError(ValidationError):
    """An attachment that cannot be sent: a file name with a path or a line break,
    a content type or content id that is not well formed, a duplicate content id,
    or more bytes than an email may carry (``tenant_notify.models.MAX_ATTACHMENT_BYTES``)."""


class UnsupportedFeatureError(ValidationError):
    """The tenant's provider cannot send what the message asks for (attachments,
    cc, tags, ... or its size). Raised at the call; nothing is queued.

    Attributes:
        feature: The feature at fault (``"attachments"``, ``"tags"``, ``"size"``).
    """

    def __init__(self, message: str, *, feature: str, **context: str | None) -> None:
        context.setdefault("field", feature)
        super().__init__(message, **context)
        self.feature = feature


class RecipientSuppressedError(ValidationError):
    """The recipient is on the tenant's suppression list for this channel (a hard
    bounce, a spam complaint, an unsubscribe, or added by hand). Nothing is queued.

    Raised at the call when the suppression list answers in process (the in-memory
    store); on shared stores the delivery side checks instead and the notification
    ends ``suppressed`` without a provider call.

    Attributes:
        channel: ``"email"`` or ``"sms"``.
        reason: Why it is suppressed (``hard_bounce``, ``complaint``,
            ``unsubscribe``, ``manual``).
    """

    def __init__(self, message: str, *, channel: str, reason: str, **context: str | None) -> None:
        context.setdefault("field", "to")
        super().__init__(message, **context)
        self.channel = channel
        self.reason = reason


# --- lookups -------------------------------------------------------------------------


class UnknownTenantError(NotifyError, LookupError):
    """No tenant with this id is known to the tenant resolver."""


class UnknownNotificationError(NotifyError, LookupError):
    """The status store holds nothing for this notification id."""


# --- templates -----------------------------------------------------------------------


class TemplateError(NotifyError):
    """A template could not be found or rendered.

    Attributes:
        template: The template name concerned (``"de/welcome/subject.txt"``), if known.
    """

    def __init__(self, message: str, *, template: str | None = None, **context: str | None) -> None:
        super().__init__(message, **context)
        self.template = template

    def _context(self) -> list[str]:
        parts = super()._context()
        if self.template is not None:
            parts.insert(0, f"template={self.template}")
        return parts


class TemplateNotFoundError(TemplateError, LookupError):
    """No template source has the kind (or a part the channel needs)."""


class TemplateRenderError(TemplateError):
    """The template failed to render: a syntax error, an undefined variable, ..."""


class TemplateSecurityError(TemplateError):
    """The template tried something the sandbox forbids, such as reaching Python internals."""


class TemplateLimitError(TemplateError):
    """The rendered output exceeded the size cap, or rendering exceeded the time limit."""


# --- transport -----------------------------------------------------------------------


class EnqueueError(NotifyError):
    """A send could not be confirmed as queued; no receipt was returned.

    Every send raises one of its two subclasses, which tell the caller what to do
    (docs/concepts.md, "The caller's contract"): :class:`NotQueuedError` (nothing
    was queued; retrying the same call is safe) or :class:`InDoubtError` (it may
    have been queued; retrying with the same idempotency key never sends twice).
    Catch ``EnqueueError`` to handle both alike: retry with the same key.
    """


class NotQueuedError(EnqueueError):
    """Nothing was queued: the notification will not be delivered unless sent again.

    Retrying the same call is safe (and may send). Raised when the transport
    refused it before anything reached the broker or queue: a closed notifier,
    a full in-process queue, a broker that could not be reached, a shared store
    that did not answer.
    """


class InDoubtError(EnqueueError):
    """The notification may have been queued (and may be delivered) or not.

    Raised when a message reached the broker but its confirm did not come back
    (the connection died or stalled after the write). Retrying the same call with
    the same idempotency key never sends a second message: the retry carries the
    same notification id, and the worker that claims it delivers it at most once.
    Without a key a retry may send twice.
    """


class QueueFullError(NotQueuedError):
    """The in-process queue stayed full for longer than the enqueue timeout."""


class StoreUnavailableError(NotQueuedError):
    """A shared store (Redis) could not be reached or did not answer in time.

    Raised by a send (nothing was queued: try again later) and by status reads.
    """


# --- delivery ------------------------------------------------------------------------


class DeliveryError(NotifyError):
    """The provider did not deliver the message.

    Attributes:
        provider_response: What the provider answered (status line, error body), if
            anything. Never contains credentials.
        retry_after: Seconds the provider asked us to wait before retrying, if it said.
        recipient_error: True when the recipient is what was refused (an unknown
            mailbox, an invalid or opted-out number): another provider would be
            refused too, or must not be asked, so no failover follows. False (the
            default) when the provider does not say; a provider sets it when it knows.
        sender_fault: True when the tenant's sending setup is what was refused (an
            unverified sender identity, an invalid From number, a DKIM, SPF or
            DMARC policy refusal, refused SMTP credentials): the recipient is not
            to blame and is not suppressed, and the sender-fault breaker counts
            it. Another provider may still be tried.
        suppress_as: Set when the refusal means the recipient must not be sent
            to again (``"unsubscribe"``: the number replied STOP, Twilio 21610;
            ``"hard_bounce"``): the dispatcher adds it to the tenant's
            suppression list. None (the default) otherwise.
        throttled: True when the provider refused because the *account* is over
            its rate (HTTP 429, Twilio 20429, SES/SNS ``Throttling``): the
            dispatcher pauses that provider account's deliveries, in every
            worker, for ``retry_after`` seconds (see ``docs/workers.md``).
    """

    def __init__(
        self,
        message: str,
        *,
        provider_response: str | None = None,
        retry_after: float | None = None,
        recipient_error: bool = False,
        sender_fault: bool = False,
        suppress_as: str | None = None,
        throttled: bool = False,
        **context: str | None,
    ) -> None:
        super().__init__(message, **context)
        # A reply may quote the recipient (or, echoed by a server, a password).
        self.provider_response = None if provider_response is None else redact(provider_response)
        self.retry_after = retry_after
        self.recipient_error = recipient_error
        self.sender_fault = sender_fault
        self.suppress_as = suppress_as
        self.throttled = throttled

    @property
    def may_fail_over(self) -> bool:
        """Whether the next provider of the channel may be tried after this error.

        Only when the message was certainly not accepted (not ambiguous) and the
        recipient is not what was refused.
        """
        return not isinstance(self, AmbiguousDeliveryError) and not self.recipient_error

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}: {self.provider_response}" if self.provider_response else text


class TransientDeliveryError(DeliveryError):
    """A failure worth retrying: the message was not accepted, but may be later."""


class PermanentDeliveryError(DeliveryError):
    """A failure that retrying will not fix (rejected recipient, bad request)."""


class AmbiguousDeliveryError(DeliveryError):
    """The request may have been accepted (a timeout after it was sent, or the
    worker of an earlier attempt died after handing the message to the provider).

    Retrying may deliver twice, so the default retry policy does not retry these.
    """


class TenantPausedError(NotifyError):
    """The tenant's channel is paused by the sender-fault breaker: its recent sends
    failed in ways that mean its sending setup is wrong (unverified sender, DKIM or
    SPF refusals), so sending more would only hurt its reputation. Nothing is queued.

    Lifted by ``tenant-notify resume TENANT`` (:meth:`Breaker.resume
    <tenant_notify.reputation.Breaker.resume>`) or after ``[breaker] cooldown``.

    Attributes:
        channel: ``"email"`` or ``"sms"``.
        reason: The error that tripped the breaker, as recorded.
        until: When the pause ends by itself (UTC), if known.
    """

    def __init__(
        self,
        message: str,
        *,
        channel: str,
        reason: str | None = None,
        until: dt.datetime | None = None,
        **context: str | None,
    ) -> None:
        super().__init__(message, **context)
        self.channel = channel
        self.reason = reason
        self.until = until


class RateLimitedError(NotifyError):
    """A send over one of the tenant's limits (``[limits]``, ``[tenants.<id>.limits]``)
    with ``on_limit = "raise"``. Nothing is queued; the same send may pass after
    :attr:`retry_after` seconds.

    Attributes:
        channel: ``"email"`` or ``"sms"``.
        limit: Which limit: ``"email"``/``"sms"`` (the rate) or
            ``"email_daily"``/``"sms_daily"`` (the cap per UTC day).
        retry_after: Seconds until the limit lets the next send through (for a
            daily cap: until the next UTC midnight).
    """

    def __init__(
        self,
        message: str,
        *,
        channel: str,
        limit: str,
        retry_after: float,
        **context: str | None,
    ) -> None:
        super().__init__(message, **context)
        self.channel = channel
        self.limit = limit
        self.retry_after = retry_after


class InvalidLinkError(NotifyError, ValueError):
    """A signed link (one-click unsubscribe, open pixel, click redirect) whose token
    does not verify for its tenant: forged, tampered with, or signed with a key
    no longer configured. Nothing is recorded; the router answers 404."""


class WaitTimeoutError(NotifyError, TimeoutError):
    """:meth:`Receipt.wait` reached its timeout before the notification settled."""


# --- domain events ---------------------------------------------------------------------


class EventError(NotifyError):
    """A domain event (a CloudEvent) cannot be turned into notifications.

    The consumer dead-letters such an event with :attr:`reason` in the
    ``x-tenant-notify-reason`` header and the message, masked, beside it.

    Attributes:
        reason: A short, stable code: ``invalid`` (not CloudEvents JSON),
            ``schema`` (its data fails the type's schema), ``path`` (a rule's
            path finds nothing), ``unmapped`` (no rule for the type).
        event_type: The event's ``type``, if it has one.
        event_id: The event's ``id``, if it has one.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        event_type: str | None = None,
        event_id: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.reason = reason
        self.event_type = event_type
        self.event_id = event_id


class InvalidEventError(EventError, ValidationError):
    """The event is not CloudEvents 1.0 JSON, its data fails the schema of its
    type, or a rule's path into it finds nothing. Nothing was queued."""


class UnmappedEventError(EventError, LookupError):
    """No ``[[events.rules]]`` table maps the event's type."""


# --- delivery-event webhooks -----------------------------------------------------------


class WebhookError(NotifyError):
    """A delivery-event webhook request (SendGrid events, Twilio status callback)
    cannot be used. Nothing was changed."""


class WebhookVerificationError(WebhookError):
    """The request is not provably from the provider: the signature is missing or
    wrong, or its timestamp is outside the tolerance (a replay). Answer 403."""


class WebhookPayloadError(WebhookError, ValueError):
    """The request is signed but its body is not what the provider sends (not JSON,
    nested too deeply, fields of the wrong type). Answer 400."""


class WebhookBodyTooLargeError(WebhookPayloadError):
    """The request body is over the webhook size limit
    (:data:`tenant_notify.webhooks.base.MAX_BODY`); refused while reading, before it
    is parsed or its signature checked. Answer 413."""
