"""The task message: what a notification looks like on the broker.

One Celery protocol-2 task message per notification, JSON, built here rather than
through ``Task.apply_async``: the task is :data:`TASK_NAME`, the task id is the
notification id, the body carries ``Notification.to_dict()`` (ids, kind,
recipient, context; never credentials or rendered text), the tenant id travels in
the :data:`TENANT_HEADER` header, and ``argsrepr`` shows the kind, the tenant and
the masked recipient, so Flower and logs never show an address.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from typing import Any

from ...errors import MissingDependencyError
from ...log import mask_recipient
from ...models import Notification

__all__ = ["TASK_NAME", "TENANT_HEADER", "build_message", "read_notification"]

#: The name of the delivery task.
TASK_NAME = "tenant_notify.deliver"
#: The message header that carries the tenant id.
TENANT_HEADER = "tenant_id"

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def kombu_module() -> Any:
    """kombu, or MissingDependencyError naming the extra."""
    try:
        import kombu
    except ModuleNotFoundError as err:
        raise MissingDependencyError("celery", "celery", key="transport.backend") from err
    return kombu


def celery_module() -> Any:
    """celery, or MissingDependencyError naming the extra."""
    try:
        import celery
    except ModuleNotFoundError as err:
        raise MissingDependencyError("celery", "celery", key="transport.backend") from err
    return celery


def queue_for(name: str) -> Any:
    """The kombu Queue both sides declare (they must agree on every flag)."""
    kombu = kombu_module()
    return kombu.Queue(name, kombu.Exchange(name, type="direct", durable=True), routing_key=name)


def process_origin() -> str:
    """``pid@host``: the ``origin`` header of messages this process publishes."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _argsrepr(notification: Notification) -> str:
    # What Flower and the worker's log show instead of the arguments: the kind
    # and the tenant, so tasks can be told apart, and the recipient masked.
    return (
        f"({notification.kind!r}, tenant={notification.tenant_id!r}, "
        f"to={mask_recipient(notification.to)!r})"
    )


def build_message(
    notification: Notification,
    *,
    attempt: int = 1,
    eta: dt.datetime | None = None,
    ignore_result: bool = False,
    origin: str | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The body and headers of the protocol-2 task message for ``notification``.

    A standard Celery worker consumes it as a call of :data:`TASK_NAME` with the
    notification's dict as its only argument; ``retries`` is ``attempt - 1``.
    """
    body = json.dumps([[notification.to_dict()], {}, _EMBED], separators=(",", ":"))
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK_NAME,
        "id": notification.id,
        "shadow": None,
        "eta": eta.isoformat() if eta is not None else None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": attempt - 1,
        "timelimit": [None, None],
        "root_id": notification.id,
        "parent_id": None,
        "argsrepr": _argsrepr(notification),
        "kwargsrepr": "{}",
        "origin": origin or process_origin(),
        "ignore_result": ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        TENANT_HEADER: notification.tenant_id,
    }
    return body.encode("utf-8"), headers


def read_notification(body: bytes | str) -> Notification:
    """The notification in the body of a task message (the inverse of :func:`build_message`)."""
    args, _, _ = json.loads(body)
    return Notification.from_dict(args[0])
