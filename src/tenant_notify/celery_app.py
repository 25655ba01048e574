"""The ready Celery app: ``celery -A tenant_notify.celery_app worker``.

Configured from the same settings as the Notifier (``TENANT_NOTIFY_*`` variables
and ``TENANT_NOTIFY_CONFIG_FILE``; ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``
when the settings name no URL), with the delivery task registered. Importing this
module reads the settings, and refuses settings with no tenants (naming the file
variable it looked at): such a worker would fail every notification. Nothing else
in the library imports it. A host with
its own Celery app calls :func:`tenant_notify.transports.celery.register_tasks`
on that app instead.
"""

from __future__ import annotations

from typing import Any

from .config import load_settings, require_tenants
from .transports.celery import create_app

__all__ = ["app"]

_settings = load_settings(None)
require_tenants(_settings)
app: Any = create_app(_settings)
