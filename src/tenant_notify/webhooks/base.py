"""What every provider's delivery events share: the event, and applying it to a status.

The provider modules (:mod:`.sendgrid`, :mod:`.twilio`) verify and parse their
own requests into :class:`DeliveryEvent` objects; :func:`apply_event` is the one
place that decides whether an event moves a status (the table in
:mod:`tenant_notify.webhooks`). The small helpers below are for those modules.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ..errors import (
    MissingDependencyError,
    NotifyError,
    WebhookBodyTooLargeError,
    WebhookError,
    WebhookPayloadError,
)
from ..log import get_logger
from ..models import Channel, DeliveryState, DeliveryStatus
from ..observers import notify_observer
from ..stores import StatusStore

if TYPE_CHECKING:
    from ..notifier import Notifier
    from ..reputation import Reputation

__all__ = [
    "DEFAULT_TOLERANCE",
    "EVENT_ERROR_TYPE",
    "MAX_BODY",
    "MAX_JSON_DEPTH",
    "DeliveryEvent",
    "Feedback",
    "Receiver",
    "WebhookRequest",
    "apply_event",
    "aread_body",
    "check_body",
    "crypto",
    "epoch",
    "find_header",
    "iso_time",
    "load_json",
    "payload",
    "read_body",
    "reason_text",
]

#: Seconds a signed webhook timestamp may differ from now.
DEFAULT_TOLERANCE = 300.0
#: error_type of a status that a delivery event ended.
EVENT_ERROR_TYPE = "DeliveryEvent"
#: The largest webhook body (bytes) any provider module reads: refused while the
#: body is read (:func:`read_body`, :func:`aread_body`, the FastAPI router) and
#: again before any signature is checked (:class:`WebhookRequest`, the ``apply_*``
#: functions), with :class:`~tenant_notify.errors.WebhookBodyTooLargeError` (413).
MAX_BODY = 10 * 1024 * 1024
#: How deeply a webhook's JSON may nest (arrays and objects); the providers' own
#: payloads nest four or five levels. Deeper is a WebhookPayloadError (400).
MAX_JSON_DEPTH = 32

_OUTCOMES = frozenset({DeliveryState.DELIVERED, DeliveryState.BOUNCED, DeliveryState.FAILED})


class Feedback(enum.StrEnum):
    """What an event says about the recipient, across providers.

    ``hard_bounce``, ``complaint`` and ``unsubscribe`` put the recipient on the
    tenant's suppression list; ``resubscribe`` lifts an unsubscribe (an SMS
    START); ``open`` and ``click`` are engagement, recorded beside the status.
    ``soft_bounce`` changes nothing beyond the status.
    """

    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    RESUBSCRIBE = "resubscribe"
    OPEN = "open"
    CLICK = "click"


_SUPPRESSING = frozenset({Feedback.HARD_BOUNCE, Feedback.COMPLAINT, Feedback.UNSUBSCRIBE})


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One event a provider reported about one message.

    Attributes:
        provider: The provider's name (``"sendgrid"``, ``"twilio"``, ...).
        event: The provider's own name for it (``"delivered"``, ``"bounce"``,
            ``"undelivered"``, ``"open"``, ...).
        state: The status it leads to (delivered, bounced, failed), or None for an
            event that says nothing about the outcome.
        notification_id: The notification it names (SendGrid ``custom_args``), if any.
        provider_message_id: The provider's message id (Twilio ``MessageSid``;
            SendGrid: the ``X-Message-Id`` part of ``sg_message_id``), if any.
        tenant_id: The tenant it names (SendGrid ``custom_args``), if any.
        reason: Why it bounced or failed, in the provider's words.
        occurred_at: When it happened, per the provider, if it said.
        applied: Whether it changed a status, a suppression list or the
            engagement (set by the ``apply_*`` functions).
        recipients: The addresses or numbers the event is about (a bounce of an email
            with cc may name several), if it says.
        feedback: What it says about the recipient (:class:`Feedback`), if anything.
        url: The link followed, for a ``click``.
        channel: The channel of the provider (used when no status is found).
    """

    provider: str
    event: str
    state: DeliveryState | None
    notification_id: str | None = None
    provider_message_id: str | None = None
    tenant_id: str | None = None
    reason: str | None = None
    occurred_at: dt.datetime | None = None
    applied: bool = False
    recipients: tuple[str, ...] = ()
    feedback: Feedback | None = None
    url: str | None = None
    channel: Channel | None = None


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A webhook request as a web framework received it, for the ``receive_*``
    functions every provider module has (what :mod:`tenant_notify.contrib.fastapi`
    mounts, one route per provider).

    Attributes:
        body: The raw body, byte for byte.
        headers: The request headers (any case).
        url: The full URL the provider called (scheme, host, path, query).
    """

    body: bytes
    headers: Mapping[str, str]
    url: str

    def __post_init__(self) -> None:
        # Before any receiver verifies or parses it.
        check_body(self.body)


#: ``receive(target, request, secret, *, tenant_id=None) -> events``: one provider's
#: webhook, verified with its secret (key, token, topic ARN, credentials) and applied.
Receiver = Callable[..., list[DeliveryEvent]]


# --- applying events -----------------------------------------------------------------


def _store(target: Notifier | StatusStore) -> StatusStore:
    # A Notifier has a status_store; anything else is taken to be a store.
    store = getattr(target, "status_store", None)
    return cast(StatusStore, target if store is None else store)


def _may_move(current: DeliveryStatus, new: DeliveryState) -> bool:
    state = current.state
    if state is DeliveryState.FAILED:
        # A failure the provider may have accepted after all is what events settle.
        return current.error_type == "AmbiguousDeliveryError"
    if state is DeliveryState.BOUNCED or state is DeliveryState.QUEUED:
        return False
    if state is DeliveryState.DELIVERED:
        return new is not DeliveryState.DELIVERED
    return True  # sending, retrying, sent


def _reputation(target: Notifier | StatusStore) -> Reputation | None:
    return getattr(target, "reputation", None)


def _find(store: StatusStore, event: DeliveryEvent) -> DeliveryStatus | None:
    if event.notification_id:
        status = store.get(event.notification_id)
        return status if status is not None and status.provider == event.provider else None
    if event.provider_message_id:
        return store.find_by_provider_message_id(event.provider, event.provider_message_id)
    return None


def apply_event(
    target: Notifier | StatusStore, event: DeliveryEvent, *, tenant_id: str | None = None
) -> DeliveryEvent:
    """Apply one parsed event: to the status it belongs to, and, given a Notifier,
    to the tenant's suppression list and the notification's engagement.

    Args:
        target: A Notifier (its status store and reputation are used) or a status
            store (statuses only).
        event: From :func:`parse_sendgrid_events`, :func:`parse_twilio_callback`, ...
        tenant_id: Apply only to this tenant's notifications (pass it when the
            signing key or token belongs to one tenant's own account, so that
            account cannot speak about another tenant's notifications). It is
            also the tenant whose list a bounce or STOP about a notification
            no longer known is applied to.

    Returns:
        ``event`` with ``applied`` set.
    """
    wanted = event.state in _OUTCOMES or event.feedback is not None
    if not wanted:
        return event
    store = _store(target)
    status = _find(store, event)
    if status is not None and (
        (tenant_id is not None and status.tenant_id != tenant_id)
        or (event.tenant_id is not None and status.tenant_id != event.tenant_id)
    ):
        return event  # another tenant's: not this account's to speak about
    applied = False
    if status is not None and event.state in _OUTCOMES and _may_move(status, event.state):
        _move(target, status, event)
        applied = True
    reputation = _reputation(target)
    if event.feedback is not None and reputation is not None:
        try:
            applied = _feedback(reputation, event, status, tenant_id) or applied
        except NotifyError:
            # The status change stands; the provider will not resend a 2xx'd
            # event, so say loudly what was lost.
            get_logger().exception(
                "webhook_feedback_failed",
                provider=event.provider,
                event=event.event,
                notification_id=status.id if status is not None else None,
            )
    return replace(event, applied=True) if applied else event


def _move(target: Notifier | StatusStore, status: DeliveryStatus, event: DeliveryEvent) -> None:
    store = _store(target)
    assert event.state is not None
    if event.state is DeliveryState.DELIVERED:
        changes: dict[str, Any] = {"error": None, "error_type": None}
    else:
        reason = event.reason or event.event
        changes = {"error": f"{event.provider} {event.event}: {reason}"}
        changes["error_type"] = EVENT_ERROR_TYPE
    if status.provider_message_id is None and event.provider_message_id:
        changes["provider_message_id"] = event.provider_message_id
    moved = status.evolve(state=event.state, next_attempt_at=None, **changes)
    store.save(moved)
    # A Notifier's lifecycle events (callbacks) hear of it; a bare store has none.
    dispatcher = getattr(target, "dispatcher", None)
    if dispatcher is not None:
        notify_observer(dispatcher.observer, moved)


def _feedback(
    reputation: Reputation,
    event: DeliveryEvent,
    status: DeliveryStatus | None,
    tenant_id: str | None,
) -> bool:
    """Suppress, lift or record engagement; whether anything was changed."""
    from ..reputation import SuppressionReason

    feedback = event.feedback
    if feedback in (Feedback.OPEN, Feedback.CLICK):
        if status is None:
            return False
        at = event.occurred_at
        if feedback is Feedback.OPEN:
            reputation.record_open(status.tenant_id, status.id, status.kind, at, status)
        elif event.url:
            reputation.record_click(status.tenant_id, status.id, status.kind, event.url, at, status)
        else:
            return False
        return True
    owner = status.tenant_id if status is not None else (tenant_id or event.tenant_id)
    channel = status.channel if status is not None else event.channel
    if owner is None or channel is None or not event.recipients:
        return False
    if feedback is Feedback.RESUBSCRIBE:
        lifted = sum(
            reputation.suppressions.remove(
                owner,
                recipient,
                channel=channel,
                reasons=[SuppressionReason.UNSUBSCRIBE],
                source=event.provider,
            )
            for recipient in event.recipients
        )
        return lifted > 0
    if feedback not in _SUPPRESSING:
        return False
    for recipient in event.recipients:
        reputation.suppress(
            owner,
            channel,
            recipient,
            SuppressionReason(feedback.value),
            kind=status.kind if status is not None else None,
            source=event.provider,
            detail=event.reason,
        )
    return True


# --- bodies: size and shape ---------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _too_large(provider: str | None, limit: int) -> WebhookBodyTooLargeError:
    return WebhookBodyTooLargeError(
        f"the webhook body is over the {limit:,}-byte limit", provider=provider
    )


def check_body(body: bytes | str, provider: str | None = None, *, limit: int = MAX_BODY) -> None:
    """Refuse a body over ``limit`` bytes.

    Raises:
        WebhookBodyTooLargeError: it is over (answer 413).
    """
    if len(body) > limit:
        raise _too_large(provider, limit)


def read_body(
    chunks: Iterable[bytes], *, limit: int = MAX_BODY, provider: str | None = None
) -> bytes:
    """Read a request body from ``chunks`` (a framework's body stream), stopping as
    soon as it passes ``limit`` bytes: a huge POST costs at most ``limit`` of memory.

    Raises:
        WebhookBodyTooLargeError: the body is over ``limit`` (answer 413).
    """
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) > limit:
            raise _too_large(provider, limit)
    return bytes(buffer)


async def aread_body(
    chunks: AsyncIterable[bytes], *, limit: int = MAX_BODY, provider: str | None = None
) -> bytes:
    """:func:`read_body` for an asynchronous stream (Starlette's ``request.stream()``)."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) > limit:
            raise _too_large(provider, limit)
    return bytes(buffer)


def _nests_deeper(data: Any, limit: int) -> bool:
    # Iterative: a depth check must not itself recurse.
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def load_json(body: bytes | str, provider: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A webhook body's JSON, checked for size and depth.

    Raises:
        WebhookBodyTooLargeError: over :data:`MAX_BODY`.
        WebhookPayloadError: not JSON, or nested deeper than ``max_depth``.
    """
    check_body(body, provider)
    # Raised outside the except blocks: the decoder's error holds the body (its
    # ``doc``), which must not ride along in the chain (``__context__``) either.
    problem = f"the JSON nests deeper than {max_depth} levels"
    try:
        data = json.loads(body)
    except RecursionError:
        data = None
    except (ValueError, UnicodeDecodeError) as err:
        data, problem = None, f"the body is not JSON ({_json_problem(err)})"
    else:
        if not isinstance(data, dict | list) or not _nests_deeper(data, max_depth):
            return data
    raise WebhookPayloadError(problem, provider=provider)


def _json_problem(err: ValueError) -> str:
    # Where and what, never the text around it.
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno} column {err.colno}"
    return type(err).__name__


def payload(provider: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a ``parse_*`` function: whatever a signed body holds (a string where
    an object belongs, a list for a number), reading it fails with
    :class:`~tenant_notify.errors.WebhookPayloadError` (400), never an unexpected
    exception (a 500)."""

    def decorate(parse: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(parse)
        def parsed(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return parse(*args, **kwargs)
            except WebhookError:
                raise
            except (TypeError, AttributeError, KeyError, IndexError, ValueError) as err:
                kind = type(err).__name__
            # Outside the except block: the original (which may quote the body) is
            # in no chain.
            raise WebhookPayloadError(
                f"the body is not a {provider} payload ({kind} reading it)", provider=provider
            )

        return parsed

    return decorate


# --- helpers for the provider modules ----------------------------------------------


def crypto() -> Any:
    """``cryptography``'s modules the signature checks use, or MissingDependencyError."""
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ModuleNotFoundError as err:
        raise MissingDependencyError("cryptography", "webhooks") from err
    return exceptions, hashes, serialization, ec


def find_header(headers: Mapping[str, str], name: str) -> str | None:
    """The header ``name`` from ``headers``, whatever case either is spelt in."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value


def epoch(value: Any) -> dt.datetime | None:
    """An epoch-seconds number as an aware UTC datetime; None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def iso_time(value: Any) -> dt.datetime | None:
    """An ISO 8601 timestamp (``2026-12-01T10:00:00Z``) as a datetime; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def reason_text(value: Any) -> str | None:
    """A provider's reason on one line, at most 1,000 characters; None when empty."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:1000] or None
