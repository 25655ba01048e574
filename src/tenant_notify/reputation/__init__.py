"""Protect each tenant's sending reputation, and track what recipients do.

* :mod:`.suppressions`: per-tenant, per-channel suppression lists
  (``notify.suppressions``), fed by hard bounces, complaints, unsubscribes and
  STOP replies, and by hand.
* :mod:`.breaker`: the sender-fault breaker (``notify.breaker``) that pauses a
  tenant's channel whose sending setup is broken.
* :mod:`.links`: signed one-click unsubscribe and tracking URLs, and the routes
  of :func:`tenant_notify.contrib.fastapi.make_router` that answer them.
* :mod:`.tracking`: the library's own open pixel and click redirects (SMTP).
* :mod:`.domain`: ``tenant-notify check-domain``: SPF, DKIM and DMARC records.
* :mod:`.store`: the contracts and the in-process store; :mod:`.redis`: Redis.
* :mod:`.core`: :class:`Reputation`, what the Notifier and the Dispatcher ask.

See ``docs/deliverability.md`` and ``docs/tracking.md``.
"""

from .breaker import Breaker
from .core import Held, Reputation
from .links import ROUTES, ClickLink, LinkSigner, OpenLink, UnsubscribeLink
from .store import (
    EngagementStore,
    MemoryReputationStore,
    Pause,
    PauseStore,
    ReputationStore,
    SuppressionStore,
)
from .suppressions import Suppression, SuppressionReason, Suppressions

__all__ = [
    "ROUTES",
    "Breaker",
    "ClickLink",
    "EngagementStore",
    "Held",
    "LinkSigner",
    "MemoryReputationStore",
    "OpenLink",
    "Pause",
    "PauseStore",
    "Reputation",
    "ReputationStore",
    "Suppression",
    "SuppressionReason",
    "SuppressionStore",
    "Suppressions",
    "UnsubscribeLink",
]
