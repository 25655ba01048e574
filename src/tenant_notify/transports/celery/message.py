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

from ..._json import compact, isoformat, quote
from ...config import Settings
from ...errors import MissingDependencyError
from ...log import mask_recipient
from ...models import Notification

__all__ = [
    "TASK_HEADER_KEYS",
    "TASK_NAME",
    "TENANT_HEADER",
    "Routes",
    "build_message",
    "read_notification",
    "task_body",
]

#: The name of the delivery task.
TASK_NAME = "tenant_notify.deliver"
#: The message header that carries the tenant id.
TENANT_HEADER = "tenant_id"

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_BODY_END = "}]," + compact({}) + "," + compact(_EMBED) + "]"


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


#: The priority of urgent kinds' messages in the tenant queues (bulk: none, i.e. 0).
URGENT_PRIORITY = 1


def queue_for(name: str, *, priorities: bool = False) -> Any:
    """The kombu Queue both sides declare (they must agree on every flag).

    ``priorities``: a RabbitMQ priority queue (``x-max-priority`` 1), so urgent
    kinds' messages overtake the bulk waiting in it.
    """
    kombu = kombu_module()
    arguments = {"x-max-priority": URGENT_PRIORITY} if priorities else None
    return kombu.Queue(
        name,
        kombu.Exchange(name, type="direct", durable=True),
        routing_key=name,
        queue_arguments=arguments,
    )


class Routes:
    """Which queue each notification goes to; senders and workers build it alike.

    With ``[celery] fair`` (the default) every tenant of ``[tenants]`` has a queue
    of its own, ``<queue>.tenant.<id>``, a priority queue in which urgent kinds
    go first; notifications of other tenants (a host's own resolver) go to
    ``queue``; messages with an ETA (retries, delayed sends) to ``<queue>.deferred``,
    where the worker holds them until due. Without ``fair``, everything goes to
    ``queue``, as before.
    """

    def __init__(
        self,
        queue: str,
        tenants: tuple[str, ...] = (),
        *,
        fair: bool = True,
        urgent_kinds: frozenset[str] = frozenset(),
    ) -> None:
        self.queue = queue
        self.fair = fair
        self.tenants = tenants if fair else ()
        self.urgent_kinds = urgent_kinds
        self.deferred = f"{queue}.deferred" if fair else queue
        self._by_tenant = {tenant: self.tenant_queue(tenant) for tenant in self.tenants}

    @classmethod
    def from_settings(cls, settings: Settings) -> Routes:
        return cls(
            settings.celery.queue,
            tuple(settings.tenants),
            fair=settings.celery.fair,
            urgent_kinds=frozenset(k for k, table in settings.kinds.items() if table.urgent),
        )

    def tenant_queue(self, tenant_id: str) -> str:
        return f"{self.queue}.tenant.{tenant_id}"

    def route(self, notification: Notification, *, deferred: bool = False) -> tuple[str, int]:
        """The queue for ``notification`` and its message priority."""
        if deferred:
            return self.deferred, 0
        queue = self._by_tenant.get(notification.tenant_id)
        if queue is None:
            return self.queue, 0
        return queue, URGENT_PRIORITY if notification.kind in self.urgent_kinds else 0

    def names(self) -> list[str]:
        """Every work queue: the shared one, the deferred one, each tenant's."""
        names = [self.queue] + ([self.deferred] if self.fair else [])
        return names + list(self._by_tenant.values())

    def declaration(self, name: str) -> Any:
        """The kombu Queue of ``name`` (a priority queue for the tenants' queues)."""
        return queue_for(name, priorities=name.startswith(f"{self.queue}.tenant."))

    def tenant_of(self, name: str) -> str | None:
        """The tenant whose queue ``name`` is, if it is one."""
        prefix = f"{self.queue}.tenant."
        return name[len(prefix) :] if name.startswith(prefix) else None


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
    body = task_body(notification)
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
    return body, headers


#: The headers of every task message :func:`build_message` makes, in their order
#: (the publisher's encoder of them relies on it; tests/transports checks it).
TASK_HEADER_KEYS = (
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
    TENANT_HEADER,
)


def task_body(notification: Notification) -> bytes:
    """``compact([[notification.to_dict()], {}, _EMBED])``, encoded: the same bytes.

    Written out field by field (each value quoted as the JSON encoder quotes it,
    the context and the options encoded by it), without building the dict of
    ``to_dict()`` and walking it again: a send builds one body, and this is a
    third of the cost. tests/transports/test_celery.py checks that both agree.
    """
    n = notification
    key = "null" if n.idempotency_key is None else quote(n.idempotency_key)
    locale = "null" if n.locale is None else quote(n.locale)
    options = "null" if n.options is None else compact(n.options.to_dict())
    return (
        f'[[{{"id":{quote(n.id)},"tenant_id":{quote(n.tenant_id)},"kind":{quote(n.kind)},'
        f'"channel":{quote(n.channel.value)},"to":{quote(n.to)},'
        f'"context":{compact(dict(n.context))},"idempotency_key":{key},"locale":{locale},'
        f'"created_at":{quote(isoformat(n.created_at))},"options":{options}{_BODY_END}'
    ).encode("ascii")


def read_notification(body: bytes | str) -> Notification:
    """The notification in the body of a task message (the inverse of :func:`build_message`)."""
    args, _, _ = json.loads(body)
    return Notification.from_dict(args[0])
