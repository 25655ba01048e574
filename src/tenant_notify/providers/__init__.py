"""Providers: the last step of the pipeline, one module each.

Select one in settings by name (``provider = "smtp"``), by a dotted path to a
:class:`Provider` subclass, by a registered entry point in the
``tenant_notify.providers`` group, or pass a class or an instance directly.
"""

from __future__ import annotations

from .base import Provider, ProviderConfig

__all__ = ["PROVIDER_ALIASES", "Provider", "ProviderConfig"]

#: Built-in providers, imported only when used.
PROVIDER_ALIASES: dict[str, str] = {
    "console": "tenant_notify.providers.console:ConsoleProvider",
    "file": "tenant_notify.providers.file:FileProvider",
    "memory": "tenant_notify.providers.memory:MemoryProvider",
    "postmark": "tenant_notify.providers.postmark:PostmarkProvider",
    "sendgrid": "tenant_notify.providers.sendgrid:SendGridProvider",
    "ses": "tenant_notify.providers.ses:SesProvider",
    "smtp": "tenant_notify.providers.smtp:SmtpProvider",
    "sns": "tenant_notify.providers.sns:SnsProvider",
    "twilio": "tenant_notify.providers.twilio:TwilioProvider",
}

#: The extra that installs a built-in provider's optional dependency.
PROVIDER_EXTRAS: dict[str, str] = {
    "postmark": "http",
    "sendgrid": "http",
    "ses": "aws",
    "sns": "aws",
    "twilio": "http",
}
