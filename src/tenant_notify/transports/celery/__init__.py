"""Celery transport: notifications as JSON task messages on a broker, delivered by workers.

The package, by side:

* :mod:`.message`: the task message (:func:`build_message`), one protocol-2 JSON
  message per notification; task id = notification id, the tenant id in the
  :data:`TENANT_HEADER` header, recipients masked in ``argsrepr``.
* :mod:`.publisher`: the caller's pooled, confirming broker connections.
* :mod:`.transport`: :class:`CeleryTransport`, what the Notifier submits to.
* :mod:`.worker`: the delivery task (:func:`register_tasks`) and the Celery app
  (:func:`create_app`, :func:`configure_app`); each worker process builds its
  dispatcher from settings. ``tenant_notify.celery_app`` is the ready app.
* :mod:`.deadletters`: the dead-letter queue and :func:`replay_dead_letters`.

Reliability settings applied to the app: JSON only, UTC, ``acks_late`` with
``task_reject_on_worker_lost``, publisher confirms, soft and hard time limits,
a small prefetch, result expiry, task events.
"""

from __future__ import annotations

from .deadletters import DeadLetter, replay_dead_letters
from .message import TASK_NAME, TENANT_HEADER, build_message
from .transport import CeleryTransport, check_settings
from .worker import WorkerRuntime, app_config, configure_app, create_app, register_tasks

__all__ = [
    "TASK_NAME",
    "TENANT_HEADER",
    "CeleryTransport",
    "DeadLetter",
    "WorkerRuntime",
    "app_config",
    "build_message",
    "check_settings",
    "configure_app",
    "create_app",
    "register_tasks",
    "replay_dead_letters",
]
