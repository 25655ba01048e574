"""Amazon SES delivery events, as SNS delivers them to an HTTPS endpoint.

Point an SES configuration set's event destination (or an identity's
notifications) at an SNS topic, subscribe the host's endpoint to the topic, and
pass each request to :func:`apply_ses_events` with the topic's ARN. The SNS
envelope is verified first (:mod:`tenant_notify.webhooks.sns`); a
``SubscriptionConfirmation`` for the topic is confirmed; a ``Notification``
carries one SES event, matched to its status by SES's ``MessageId`` (the status's
``provider_message_id``).

=====================================  ========================================
SES event (``eventType`` or            Status
``notificationType``)
=====================================  ========================================
``Delivery``                           delivered
``Bounce``, ``bounceType`` Permanent   bounced
or Undetermined
``Bounce``, ``bounceType`` Transient   failed (SES gave up: a full mailbox, ...)
``Reject``, ``Rendering Failure``      failed
``Complaint``, ``DeliveryDelay``,      (reported, ``state`` None: not an outcome)
``Send``, ``Open``, ``Click``, ...
=====================================  ========================================

Given a Notifier, a ``Permanent`` bounce suppresses its ``bouncedRecipients`` (a
hard bounce; ``Transient`` is a soft one), a ``Complaint`` its
``complainedRecipients``, and ``Open`` and ``Click`` (with ``click.link``) are
recorded as the notification's engagement
(:class:`~tenant_notify.webhooks.base.Feedback`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import WebhookPayloadError
from ..models import Channel, DeliveryState
from ..stores import StatusStore
from .base import (
    DeliveryEvent,
    Feedback,
    WebhookRequest,
    apply_event,
    iso_time,
    load_json,
    payload,
    reason_text,
)
from .sns import Fetch, confirm_subscription, parse_sns_message, verify_sns_message

if TYPE_CHECKING:
    from ..notifier import Notifier

__all__ = ["apply_ses_events", "parse_ses_event", "receive_ses"]


@payload("ses")
def parse_ses_event(message: str) -> DeliveryEvent:
    """The SES event in an SNS notification's ``Message``.

    Raises:
        WebhookPayloadError: not an SES event.
    """
    data = load_json(message, "ses")
    if not isinstance(data, dict):
        raise WebhookPayloadError("the SNS message is not an SES event", provider="ses")
    name = data.get("eventType") or data.get("notificationType")
    mail = data.get("mail")
    if not isinstance(name, str) or not isinstance(mail, dict):
        raise WebhookPayloadError("an SES event needs eventType and mail", provider="ses")
    message_id = mail.get("messageId")
    state: DeliveryState | None = None
    reason = None
    details: dict[str, Any] = {}
    feedback: Feedback | None = None
    recipients: tuple[str, ...] = ()
    url = None
    if name == "Delivery":
        state = DeliveryState.DELIVERED
        details = data.get("delivery") or {}
    elif name == "Bounce":
        details = data.get("bounce") or {}
        kind = details.get("bounceType")
        state = DeliveryState.FAILED if kind == "Transient" else DeliveryState.BOUNCED
        diagnostics = [
            r.get("diagnosticCode")
            for r in details.get("bouncedRecipients") or ()
            if isinstance(r, dict) and r.get("diagnosticCode")
        ]
        reason = reason_text(
            " ".join(str(p) for p in (kind, details.get("bounceSubType"), *diagnostics) if p)
        )
        feedback = Feedback.SOFT_BOUNCE if kind == "Transient" else Feedback.HARD_BOUNCE
        recipients = _addresses(details.get("bouncedRecipients"))
    elif name == "Complaint":
        details = data.get("complaint") or {}
        if details.get("complaintFeedbackType") != "not-spam":
            feedback = Feedback.COMPLAINT
            recipients = _addresses(details.get("complainedRecipients"))
    elif name in ("Open", "Click"):
        details = data.get(name.lower()) or {}
        feedback = Feedback.OPEN if name == "Open" else Feedback.CLICK
        link = details.get("link")
        url = link if feedback is Feedback.CLICK and isinstance(link, str) else None
    elif name in ("Reject", "Rendering Failure"):
        state = DeliveryState.FAILED
        details = data.get("reject") or data.get("failure") or {}
        reason = reason_text(details.get("reason") or details.get("errorMessage") or name)
    return DeliveryEvent(
        provider="ses",
        event=name,
        state=state,
        provider_message_id=message_id if isinstance(message_id, str) and message_id else None,
        reason=reason,
        occurred_at=iso_time(details.get("timestamp") or mail.get("timestamp")),
        recipients=recipients,
        feedback=feedback,
        url=url,
        channel=Channel.EMAIL,
    )


def _addresses(entries: Any) -> tuple[str, ...]:
    """The ``emailAddress`` of each entry of a bounced/complained recipients list."""
    return tuple(
        entry["emailAddress"]
        for entry in entries or ()
        if isinstance(entry, dict) and isinstance(entry.get("emailAddress"), str)
    )


def apply_ses_events(
    notifier: Notifier | StatusStore,
    body: bytes,
    *,
    topic_arns: Iterable[str],
    tenant_id: str | None = None,
    fetch: Fetch | None = None,
    now: dt.datetime | None = None,
) -> list[DeliveryEvent]:
    """Verify one SNS request and apply the SES event it carries.

    Args:
        notifier: The Notifier (or its status store).
        body: The raw request body.
        topic_arns: The SNS topics this endpoint is subscribed to; messages for
            any other topic are refused.
        tenant_id: Apply only to this tenant's notifications (a tenant's own AWS
            account).
        fetch: ``fetch(url) -> bytes`` for certificates and subscription
            confirmations (see :mod:`tenant_notify.webhooks.sns`).
        now: The current time, for tests.

    Returns:
        The event (none for a subscription confirmation, which is confirmed).

    Raises:
        WebhookVerificationError: not provably from SNS for one of the topics.
        WebhookPayloadError: signed, but not an SNS message with an SES event.
    """
    message = parse_sns_message(body)
    verify_sns_message(message, topic_arns=topic_arns, fetch=fetch, now=now)
    if message["Type"] == "SubscriptionConfirmation":
        confirm_subscription(message, fetch=fetch)
        return []
    if message["Type"] != "Notification":
        return []
    return [apply_event(notifier, parse_ses_event(message["Message"]), tenant_id=tenant_id)]


def receive_ses(
    notifier: Notifier | StatusStore,
    request: WebhookRequest,
    secret: str,
    *,
    tenant_id: str | None = None,
) -> list[DeliveryEvent]:
    """The router's entry: ``secret`` is the topic ARN (or several, comma-separated)."""
    topics = [arn.strip() for arn in secret.split(",") if arn.strip()]
    return apply_ses_events(notifier, request.body, topic_arns=topics, tenant_id=tenant_id)
