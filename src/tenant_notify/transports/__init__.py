"""Transports: how a notification gets from the caller to the dispatcher.

``eager`` delivers in the caller; ``inprocess`` (the default) queues to worker
threads in this process; ``celery`` publishes to a broker for workers elsewhere.
All of them run the same :class:`~tenant_notify.dispatcher.Dispatcher`.
"""

from __future__ import annotations

from .base import Transport

__all__ = ["TRANSPORT_ALIASES", "TRANSPORT_EXTRAS", "Transport"]

#: Built-in transports, imported only when used.
TRANSPORT_ALIASES: dict[str, str] = {
    "eager": "tenant_notify.transports.eager:EagerTransport",
    "inprocess": "tenant_notify.transports.inprocess:InProcessTransport",
    "celery": "tenant_notify.transports.celery:CeleryTransport",
}

#: The extra that installs a built-in transport's optional dependency.
TRANSPORT_EXTRAS: dict[str, str] = {"celery": "celery"}
