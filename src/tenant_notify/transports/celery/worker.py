"""The worker's side: the delivery task, and the Celery app it runs in.

:func:`register_tasks` puts the task :data:`~.message.TASK_NAME` on a Celery app;
:func:`create_app` / :func:`configure_app` also apply the reliability settings
(:func:`app_config`). Each worker process builds its :class:`WorkerRuntime` once,
from settings: a :class:`~tenant_notify.dispatcher.Dispatcher` on the shared Redis
stores (the same pipeline every transport runs) and a publisher for retries and
dead letters. No :class:`~tenant_notify.Notifier` is involved.

The task binds the tenant id in structlog's context variables for the task and
clears it after. When the dispatcher asks for a retry, the task publishes the
message again with an ETA (same backoff policy as in process); a notification
whose last attempt failed goes to the dead-letter queue.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from ...config import CelerySettings, Settings, load_settings
from ...dispatcher import Dispatcher
from ...metrics import resolve_metrics
from ...models import DeliveryState, DeliveryStatus, Notification
from ...tenants import StaticTenantResolver, TenantResolver
from .consumer import deliver_message
from .deadletters import dead_letter
from .message import TASK_NAME, TENANT_HEADER, Routes, celery_module
from .publisher import Publisher
from .transport import check_settings, shared_stores

__all__ = [
    "WorkerRuntime",
    "app_config",
    "build_dispatcher",
    "configure_app",
    "create_app",
    "register_tasks",
]

# app.conf key of the zero-argument callable that builds a process's runtime.
_RUNTIME_FACTORY = "tenant_notify_runtime_factory"


def build_dispatcher(
    settings: Settings, tenant_resolver: TenantResolver | None = None
) -> Dispatcher:
    """The worker's dispatcher: on the shared Redis stores, providers checked.

    Raises:
        ConfigurationError: naming the key, for any bad setting.
    """
    check_settings(settings)
    status_store, idempotency_store = shared_stores(settings)
    dispatcher = Dispatcher.from_settings(
        settings,
        tenants=tenant_resolver or StaticTenantResolver(settings.tenants),
        status_store=status_store,
        idempotency_store=idempotency_store,
        metrics=resolve_metrics(settings.metrics),
    )
    dispatcher.check_providers()
    return dispatcher


class WorkerRuntime:
    """What one worker process delivers with (built once per process).

    Args:
        settings: The worker's settings (queues, retry policy, ...).
        dispatcher: Runs each attempt.
    """

    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.routes = Routes.from_settings(settings)
        self.publisher = Publisher(settings.celery, routes=self.routes)
        self.pid = os.getpid()

    def dead_letter(self, notification: Notification, attempt: int, error: str) -> None:
        """Publish ``notification`` to the dead-letter queue, if there is one."""
        queue = self.settings.celery.dead_letter_queue
        if queue:
            dead_letter(
                notification,
                attempt,
                error,
                queue=queue,
                publisher=self.publisher,
                idempotency_store=self.dispatcher.idempotency_store,
                retention=self.settings.stores.retention,
            )


_RUNTIMES: dict[int, tuple[int, WorkerRuntime]] = {}
_RUNTIME_LOCK = threading.Lock()


def _runtime(app: Any) -> WorkerRuntime:
    key = id(app)
    entry = _RUNTIMES.get(key)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    with _RUNTIME_LOCK:
        entry = _RUNTIMES.get(key)
        if entry is None or entry[0] != os.getpid():
            factory: Callable[[], WorkerRuntime] = app.conf[_RUNTIME_FACTORY]
            entry = (os.getpid(), factory())
            _RUNTIMES[key] = entry
    return entry[1]


def _deliver_task(task: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    request = task.request
    # A message from the broker has its headers on the request; an eager
    # apply(headers=...) keeps them in request.headers.
    header_tenant = request.get(TENANT_HEADER) or (request.get("headers") or {}).get(TENANT_HEADER)
    attempt = int(request.retries or 0) + 1
    delivery = deliver_message(
        _runtime(task.app), data, header_tenant=header_tenant, task_id=request.id, attempt=attempt
    )
    if delivery.requeue:
        # Put the message back rather than lose it; another delivery will find the claim.
        err = delivery.error
        raise celery_module().exceptions.Reject(str(err), requeue=True) from err
    if delivery.outcome is None:
        return {"state": "rejected"}
    if delivery.outcome.retry_in is not None:
        return {"state": DeliveryState.RETRYING.value, "attempt": attempt}
    return _result(delivery.outcome.status)


def _result(status: DeliveryStatus | None) -> dict[str, Any]:
    if status is None:
        return {"state": "unknown"}
    return {
        "state": status.state.value,
        "attempts": status.attempts,
        "provider": status.provider,
        "provider_message_id": status.provider_message_id,
        "error": status.error,
    }


def _finish_on_parent_death(**_: Any) -> None:
    """Let a pool process finish the delivery in hand when the main process dies.

    Celery's prefork pool has the kernel SIGKILL its processes together with the
    main process (``PR_SET_PDEATHSIG``). One killed after the provider accepted a
    message but before the delivery claim was completed would have it sent again
    when the broker redelivers. Without that signal the orphan finishes its
    attempt (bounded by the provider's timeouts), completes the claim, so the
    redelivered message is skipped, and exits when it finds its parent gone.
    """
    try:
        from billiard.util import set_pdeathsig
    except ImportError:  # pragma: no cover - billiard comes with Celery
        return
    with suppress(OSError):
        set_pdeathsig(0)


def app_config(settings: CelerySettings, routes: Routes | None = None) -> dict[str, Any]:
    """The Celery configuration the transport relies on (see docs/workers.md).

    ``routes``: the queues to consume (:meth:`Routes.from_settings`); without it,
    ``[celery] queue`` alone.
    """
    routes = routes or Routes(settings.queue, fair=False)
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        # JSON only, in UTC.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "enable_utc": True,
        "timezone": "UTC",
        # A message is acknowledged after its attempt, and handed back if the
        # process running it dies; the delivery claim stops a second send.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.time_limit,
        "result_expires": int(settings.result_expires),
        "result_extended": False,
        "broker_connection_retry_on_startup": True,
        # No ``confirm_publish``: every message the library publishes (sends,
        # retries, dead letters) goes through its own confirming publisher.
        # What Celery itself publishes is task events, and confirming those
        # would block the worker's main loop on a broker round trip per flush.
        "broker_pool_limit": settings.pool_limit,
        "worker_send_task_events": settings.send_events,
        "task_send_sent_event": settings.send_events,
        "task_queues": [routes.declaration(name) for name in routes.names()],
        "task_default_queue": settings.queue,
        "task_default_exchange": settings.queue,
        "task_default_routing_key": settings.queue,
        "task_routes": {TASK_NAME: {"queue": settings.queue}},
    }
    if settings.concurrency is not None:
        config["worker_concurrency"] = settings.concurrency
    return config


def register_tasks(
    app: Any,
    settings: Settings | None = None,
    *,
    tenant_resolver: TenantResolver | None = None,
    dispatcher_factory: Callable[[Settings], Dispatcher] | None = None,
) -> Any:
    """Register the delivery task on ``app`` (a host's own Celery app) and return it.

    Each worker process builds, on its first task, a dispatcher from ``settings``
    (the environment when None): :func:`build_dispatcher` with ``tenant_resolver``,
    or ``dispatcher_factory(settings)`` for one of the host's own making (other
    stores, metrics). Run a worker that consumes ``[celery] queue`` (``-Q tenant_notify``).
    """
    loaded = load_settings(settings) if settings is not None else None

    def runtime_factory() -> WorkerRuntime:
        current = loaded if loaded is not None else load_settings(None)
        if dispatcher_factory is not None:
            return WorkerRuntime(current, dispatcher_factory(current))
        return WorkerRuntime(current, build_dispatcher(current, tenant_resolver))

    app.conf[_RUNTIME_FACTORY] = runtime_factory
    celery_module().signals.worker_process_init.connect(
        _finish_on_parent_death, weak=False, dispatch_uid="tenant_notify.finish_on_parent_death"
    )
    options: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}
    if loaded is not None:
        options.update(
            soft_time_limit=loaded.celery.soft_time_limit,
            time_limit=loaded.celery.time_limit,
            ignore_result=loaded.celery.ignore_result,
        )

    @app.task(name=TASK_NAME, bind=True, shared=False, **options)  # type: ignore[untyped-decorator]
    def deliver(self: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        return _deliver_task(self, data)

    return deliver


def configure_app(app: Any, settings: Settings) -> Any:
    """Apply :func:`app_config` to ``app`` and register the delivery task on it."""
    check_settings(settings)
    app.conf.update(app_config(settings.celery, Routes.from_settings(settings)))
    register_tasks(app, settings)
    return app


def create_app(settings: Settings | None = None, *, main: str = "tenant_notify") -> Any:
    """A Celery app configured from ``settings`` (default: the environment)."""
    loaded = load_settings(settings)
    app = celery_module().Celery(main, set_as_current=False)
    return configure_app(app, loaded)
