"""Confirmed publishing to a RabbitMQ topic exchange.

:class:`EventPublisher` keeps one connection (opened on first use, reopened after
a failure), declares its exchange once per connection, and returns from
:meth:`EventPublisher.publish` only when the broker has confirmed the message.
A message no queue is bound for is refused (``mandatory``): publishing into
nothing would drop it without a word. Used by ``Notifier.publish_event`` and by
the lifecycle events of :mod:`tenant_notify.events.lifecycle`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import EnqueueError
from .consumer import _connection_errors, _kombu

__all__ = ["EventPublisher", "UnroutableError"]


class UnroutableError(EnqueueError):
    """The broker confirmed the message but no queue is bound for its routing key."""


class EventPublisher:
    """Publishes to one topic exchange and waits for each confirm. Thread-safe.

    Args:
        url: Broker URL (may hold a password: never shown).
        exchange: The topic exchange (declared durable); ``""`` for the
            default exchange, where the routing key is a queue's name.
        timeout: Seconds to wait for a connection and a confirm.
        mandatory: Refuse messages no queue is bound for.
        queue: A durable queue to declare on connecting (a dead-letter queue
            published to through the default exchange).
    """

    def __init__(
        self,
        url: str,
        exchange: str,
        *,
        timeout: float = 5.0,
        mandatory: bool = True,
        queue: str | None = None,
    ) -> None:
        self._url = url
        self.exchange_name = exchange
        self.timeout = timeout
        self.mandatory = mandatory
        self.queue_name = queue
        self._lock = threading.Lock()
        self._conn: Any = None
        self._producer: Any = None
        self._returned: list[str] = []

    def _connect(self) -> Any:
        if self._producer is None:
            kombu = _kombu()
            conn = kombu.Connection(
                self._url,
                connect_timeout=self.timeout,
                transport_options={"confirm_publish": True},
            )
            try:
                conn.ensure_connection(max_retries=1)
                channel = conn.channel()
                if self.exchange_name:
                    exchange = kombu.Exchange(self.exchange_name, type="topic", durable=True)
                    exchange(channel).declare()
                else:
                    exchange = kombu.Exchange("")
                if self.queue_name:
                    kombu.Queue(self.queue_name, durable=True)(channel).declare()
                self._producer = kombu.Producer(
                    channel, exchange=exchange, on_return=self._on_return
                )
            except BaseException:
                conn.release()
                raise
            self._conn = conn
        return self._producer

    def _on_return(self, exception: Any, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(routing_key)

    def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        headers: Mapping[str, Any] | None = None,
        content_type: str = "application/cloudevents+json",
        message_id: str | None = None,
    ) -> None:
        """Publish ``body`` and wait for the broker's confirm.

        Raises:
            UnroutableError: no queue is bound for ``routing_key`` (``mandatory``).
            EnqueueError: the broker could not be reached or did not confirm.
        """
        broken: tuple[type[BaseException], ...] = (
            OSError,
            TimeoutError,
            *_connection_errors(),
        )
        properties = {"message_id": message_id} if message_id else {}
        with self._lock:
            try:
                producer = self._connect()
                self._returned.clear()
                producer.publish(
                    body,
                    routing_key=routing_key,
                    headers=dict(headers or {}),
                    content_type=content_type,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    mandatory=self.mandatory,
                    timeout=self.timeout,
                    confirm_timeout=self.timeout,
                    **properties,
                )
            except broken as err:
                self._reset()
                raise EnqueueError(
                    f"the broker did not confirm the event ({type(err).__name__}: {err})"
                ) from None
            if self._returned:
                raise UnroutableError(
                    f"no queue is bound to {self.exchange_name!r} for {routing_key!r}: the "
                    "event would be dropped (is `tenant-notify events consume` declared?)"
                )

    def _reset(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is broken already
                conn.release()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._reset()

    def __repr__(self) -> str:
        return f"<EventPublisher exchange={self.exchange_name!r}>"
