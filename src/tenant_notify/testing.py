"""Helpers for testing code that sends notifications (public API).

* :class:`Outbox` / :func:`get_outbox`: what the ``memory`` provider delivered.
* :class:`ScriptedProvider`: a provider that fails on demand (transient,
  permanent, ambiguous), to test error paths and retries.
* :func:`make_notifier`: a Notifier on the eager transport with in-memory
  outboxes, ready for a test.

Example::

    from tenant_notify.testing import make_notifier

    def test_order_email():
        tenants = {"acme": {"name": "Acme", "email_from": "o@acme.test"}}
        with make_notifier(tenants=tenants) as notify:
            notify.send_order_confirmation(order_id="1", customer_email="j@example.com",
                                           order_total="9.99", currency="USD", tenant_id="acme")
            [email] = notify.outbox.emails
            assert "9.99" in email.text
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field

from .errors import (
    AmbiguousDeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from .models import Channel, DeliveryResult, EmailMessage, Message, SmsMessage
from .notifier import Notifier
from .providers.base import Provider, ProviderConfig
from .providers.memory import MemoryProvider, Outbox, clear_outboxes, get_outbox

__all__ = [
    "MemoryProvider",
    "Outbox",
    "ScriptedProvider",
    "TestNotifier",
    "clear_outboxes",
    "get_outbox",
    "make_notifier",
]

_STEPS = ("ok", "transient", "permanent", "ambiguous")


class ScriptedProvider(Provider):
    """A provider that follows a script, one step per send attempt.

    Steps: ``"ok"`` (deliver into the outbox), ``"transient"``, ``"permanent"``,
    ``"ambiguous"`` (raise that kind of delivery error), or an exception instance
    to raise. When the script runs out, every send does ``then``.

    Args:
        script: The steps, in order.
        then: The step after the script is exhausted.
        outbox: Name of the outbox delivered messages go to.
        retry_after: ``retry_after`` of the transient errors it raises.

    Attributes:
        attempts: Every message it was asked to send, in order.
    """

    name = "scripted"
    channels = frozenset({Channel.EMAIL, Channel.SMS})

    class Config(ProviderConfig):
        script: list[str] = Field(default_factory=list)
        then: str = "ok"
        outbox: str = "default"
        retry_after: float | None = None

    def __init__(
        self,
        script: Iterable[str | BaseException] = (),
        *,
        then: str | BaseException = "ok",
        outbox: str = "default",
        retry_after: float | None = None,
    ) -> None:
        self._script = list(script)
        for step in [*self._script, then]:
            if isinstance(step, str) and step not in _STEPS:
                raise ValueError(f"unknown step {step!r}; steps are {', '.join(_STEPS)}")
        self._then = then
        self._lock = threading.Lock()
        self.outbox = get_outbox(outbox)
        self.retry_after = retry_after
        self.attempts: list[Message] = []

    def _next_step(self, message: Message) -> str | BaseException:
        with self._lock:
            self.attempts.append(message)
            return self._script.pop(0) if self._script else self._then

    def _run(self, message: Message) -> DeliveryResult:
        step = self._next_step(message)
        if isinstance(step, BaseException):
            raise step
        if step == "transient":
            raise TransientDeliveryError(
                "scripted transient failure",
                provider=self.name,
                provider_response="451 try again later",
                retry_after=self.retry_after,
                notification_id=message.notification_id,
                tenant_id=message.tenant_id,
            )
        if step == "permanent":
            raise PermanentDeliveryError(
                "scripted permanent failure",
                provider=self.name,
                provider_response="550 mailbox unavailable",
                notification_id=message.notification_id,
                tenant_id=message.tenant_id,
            )
        if step == "ambiguous":
            raise AmbiguousDeliveryError(
                "scripted timeout after sending",
                provider=self.name,
                notification_id=message.notification_id,
                tenant_id=message.tenant_id,
            )
        index = self.outbox.append(message)
        return DeliveryResult(provider=self.name, provider_message_id=f"scripted-{index}")

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        return self._run(message)

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        return self._run(message)


class TestNotifier(Notifier):
    """A Notifier with an ``outbox`` attribute (see :func:`make_notifier`)."""

    __test__ = False  # not a pytest test class
    outbox: Outbox


def make_notifier(
    *,
    tenants: Mapping[str, Mapping[str, Any]],
    provider: Provider | None = None,
    outbox: str = "default",
    transport: str = "eager",
    **settings: Any,
) -> TestNotifier:
    """A Notifier for tests: eager transport, memory (or ``provider``) for both
    channels, no retry delays. Its outbox is cleared first.

    Args:
        tenants: Tenant tables, as in settings.
        provider: A provider instance for both channels (a ScriptedProvider, say).
        outbox: Outbox name of the memory provider.
        transport: Transport name.
        settings: Any other settings keys.
    """
    table: dict[str, Any] = (
        {"provider": provider} if provider else {"provider": "memory", "outbox": outbox}
    )
    # Tests want retries without waiting; what the caller sets wins, key by key.
    retry = {"initial_delay": 0.0, "jitter": 0.0, **settings.pop("retry", {})}
    config: dict[str, Any] = {
        "transport": transport,
        "email": table,
        "sms": table,
        "tenants": dict(tenants),
        "retry": retry,
        **settings,
    }
    notifier = TestNotifier.from_settings(config)
    if isinstance(provider, ScriptedProvider):
        notifier.outbox = provider.outbox
    elif isinstance(provider, MemoryProvider):
        notifier.outbox = get_outbox(provider.outbox)
    else:
        notifier.outbox = get_outbox(outbox)
    notifier.outbox.clear()
    return notifier
