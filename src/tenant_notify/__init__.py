"""tenant-notify: transactional notifications for multi-tenant applications.

Build a :class:`Notifier` from settings and send::

    from tenant_notify import Notifier

    notify = Notifier.from_settings({"tenants": {"acme": {"name": "Acme",
                                                          "email_from": "orders@acme.test"}}})
    receipt = notify.send_welcome_email(user_email="jane@example.com", user_name="Jane",
                                        tenant_id="acme")
    receipt.wait(timeout=5)
"""

from __future__ import annotations

from .config import Settings, load_settings
from .dispatcher import Dispatcher, Outcome
from .errors import (
    ConfigurationError,
    DeliveryError,
    EnqueueError,
    InDoubtError,
    NotifyError,
    NotQueuedError,
    RateLimitedError,
    RecipientSuppressedError,
    TemplateError,
    TenantPausedError,
    UnknownTenantError,
    UnsupportedFeatureError,
    ValidationError,
)
from .models import (
    Address,
    Attachment,
    Channel,
    DeliveryResult,
    DeliveryState,
    DeliveryStatus,
    EmailMessage,
    EmailOptions,
    Engagement,
    Feature,
    Notification,
    Receipt,
    SmsMessage,
)
from .notifier import Notifier
from .retry import RetryPolicy
from .tenants import StaticTenantResolver, Tenant, TenantResolver

__all__ = [
    "Address",
    "Attachment",
    "Channel",
    "ConfigurationError",
    "DeliveryError",
    "DeliveryResult",
    "DeliveryState",
    "DeliveryStatus",
    "Dispatcher",
    "EmailMessage",
    "EmailOptions",
    "Engagement",
    "EnqueueError",
    "Feature",
    "InDoubtError",
    "NotQueuedError",
    "Notification",
    "Notifier",
    "NotifyError",
    "Outcome",
    "RateLimitedError",
    "Receipt",
    "RecipientSuppressedError",
    "RetryPolicy",
    "Settings",
    "SmsMessage",
    "StaticTenantResolver",
    "TemplateError",
    "Tenant",
    "TenantPausedError",
    "TenantResolver",
    "UnknownTenantError",
    "UnsupportedFeatureError",
    "ValidationError",
    "__version__",
    "load_settings",
]

__version__ = "0.1.0"
