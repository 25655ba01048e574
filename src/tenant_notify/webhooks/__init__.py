"""Delivery events from the providers: verify, parse, and apply them to statuses.

A provider that has accepted a message tells later what became of it, by calling
a URL of the host application. This package checks that such a request really
comes from the provider and turns it into status changes: ``sent`` becomes
``delivered``, ``bounced`` or ``failed``. The host mounts the endpoints
(:mod:`tenant_notify.contrib.fastapi` does it for FastAPI) and calls:

* :func:`apply_sendgrid_events` with the raw body and headers of a request from
  SendGrid's *signed* Event Webhook (ECDSA P-256 over timestamp + body). Events
  are matched by the ``notification_id`` the SendGrid provider puts in
  ``custom_args``. Needs ``pip install 'tenant-notify[webhooks]'`` (cryptography).
* :func:`apply_twilio_callback` with the full URL, the POST parameters and the
  ``X-Twilio-Signature`` of a Twilio status callback (HMAC-SHA1 keyed with the
  account's auth token). Matched by ``MessageSid``, the status's
  ``provider_message_id``.

* :func:`apply_twilio_inbound` with the same for an incoming message: a STOP
  suppresses the number for the tenant, a START lifts it.

Given a Notifier (rather than a bare status store), events also feed the
tenant's reputation (:mod:`tenant_notify.reputation`): hard bounces, complaints
and unsubscribes (SendGrid's ``spamreport`` and ``unsubscribe``, Twilio's error
21610) suppress the recipient; ``open`` and ``click`` events are recorded as the
notification's engagement (``notify.status(id).engagement``). Each parsed
:class:`DeliveryEvent` says so in ``feedback`` (a :class:`Feedback`),
``recipients`` and ``url``.

All raise :class:`~tenant_notify.errors.WebhookVerificationError` (answer 403)
for a missing or wrong signature, or a SendGrid timestamp outside the tolerance,
and :class:`~tenant_notify.errors.WebhookPayloadError` (answer 400) for a signed
body that cannot be read; nothing is changed then. Events that change nothing
(``processed``, Twilio's ``queued``, ...), or that name an unknown notification,
are returned with ``applied=False``.

Which events move a status, and where (the status's current state on the left):

==========================  ===============================  ====================
Current state               ``delivered`` event              ``bounced`` /
                                                             ``failed`` event
==========================  ===============================  ====================
sending, retrying, sent     -> delivered                     -> bounced / failed
delivered                   (nothing)                        -> bounced / failed
failed after an ambiguous   -> delivered (it did go out)     -> bounced / failed
timeout
bounced, other failed       (nothing: stays)                 (nothing: stays)
==========================  ===============================  ====================

A bounce can follow a delivery (the receiving server accepted, then bounced), so
it wins; a late or repeated ``delivered`` never undoes a bounce. Applying the
same event twice changes nothing the second time, which is what makes replayed
Twilio callbacks (they carry no timestamp) harmless.

* :func:`apply_ses_events` with the raw body of a request SNS posts for an SES
  configuration set's events: the SNS signature is verified (X.509, certificates
  only from SNS's hosts), subscriptions confirmed, events matched by SES's
  ``MessageId``. See :mod:`.ses` and :mod:`.sns`.
* :func:`apply_postmark_event` with the raw body and headers of a Postmark webhook
  (basic-auth credentials in the webhook URL), matched by the ``notification_id``
  in its ``Metadata``.

One module per provider: :mod:`.sendgrid`, :mod:`.twilio`, :mod:`.ses` (with the
SNS envelope in :mod:`.sns`), :mod:`.postmark`; what they share (the event, and
applying it to a status) is in :mod:`.base`. Each has a ``receive_<provider>``
function of one shape, listed in :data:`RECEIVERS`, which is what
:mod:`tenant_notify.contrib.fastapi` mounts.
"""

from .base import (
    DEFAULT_TOLERANCE,
    DeliveryEvent,
    Feedback,
    Receiver,
    WebhookRequest,
    apply_event,
)
from .postmark import apply_postmark_event, parse_postmark_event, receive_postmark
from .sendgrid import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    apply_sendgrid_events,
    parse_sendgrid_events,
    receive_sendgrid,
    verify_sendgrid_signature,
)
from .ses import apply_ses_events, parse_ses_event, receive_ses
from .twilio import (
    TWILIO_SIGNATURE_HEADER,
    apply_twilio_callback,
    apply_twilio_inbound,
    parse_twilio_callback,
    parse_twilio_inbound,
    receive_twilio,
    receive_twilio_inbound,
    signature_algorithm,
    twilio_signature,
    verify_twilio_signature,
)

#: Every provider's webhook receiver, by provider name: one table for the routers.
RECEIVERS: dict[str, Receiver] = {
    "postmark": receive_postmark,
    "sendgrid": receive_sendgrid,
    "ses": receive_ses,
    "twilio": receive_twilio,
}
#: Receivers of what recipients send back (an SMS STOP or START), by provider name:
#: the routers mount them at ``.../webhooks/<provider>/<tenant>/inbound``, with the
#: provider's secret. They need a Notifier (they change suppression lists).
INBOUND_RECEIVERS: dict[str, Receiver] = {"twilio": receive_twilio_inbound}

__all__ = [
    "DEFAULT_TOLERANCE",
    "INBOUND_RECEIVERS",
    "RECEIVERS",
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "TWILIO_SIGNATURE_HEADER",
    "DeliveryEvent",
    "Feedback",
    "Receiver",
    "WebhookRequest",
    "apply_event",
    "apply_postmark_event",
    "apply_sendgrid_events",
    "apply_ses_events",
    "apply_twilio_callback",
    "apply_twilio_inbound",
    "parse_postmark_event",
    "parse_sendgrid_events",
    "parse_ses_event",
    "parse_twilio_callback",
    "parse_twilio_inbound",
    "signature_algorithm",
    "twilio_signature",
    "verify_sendgrid_signature",
    "verify_twilio_signature",
]
