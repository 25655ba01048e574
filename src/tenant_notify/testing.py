"""Helpers for testing code that sends notifications (public API).

* :class:`Outbox` / :func:`get_outbox`: what the ``memory`` provider delivered.
* :class:`ScriptedProvider`: a provider that fails on demand (transient,
  permanent, ambiguous), to test error paths and retries.
* :func:`make_notifier`: a Notifier on the eager transport with in-memory
  outboxes, ready for a test.
* :func:`assert_sent` / :func:`assert_not_sent`: assertions on an outbox whose
  failure message lists what was sent.

The pytest plugin (:mod:`tenant_notify.pytest_plugin`, loaded automatically once
the package is installed) wraps these in fixtures: ``notify_outbox``,
``notify_factory``, ``tenant_notifier``, ``scripted_provider``.

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
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from .log import capture_logs
from .models import Channel, DeliveryResult, EmailMessage, Message, SmsMessage
from .notifier import Notifier
from .providers.base import EVERYTHING, Provider, ProviderConfig
from .providers.memory import MemoryProvider, Outbox, clear_outboxes, get_outbox

__all__ = [
    "MemoryProvider",
    "Outbox",
    "ScriptedProvider",
    "TestNotifier",
    "assert_not_sent",
    "assert_sent",
    "capture_logs",
    "clear_outboxes",
    "get_outbox",
    "make_notifier",
]

_STEPS = ("ok", "transient", "permanent", "ambiguous")
# step -> (error raised, message, what the "provider" answered)
_FAILURES: dict[str, tuple[type[DeliveryError], str, str | None]] = {
    "transient": (TransientDeliveryError, "scripted transient failure", "451 try again later"),
    "permanent": (PermanentDeliveryError, "scripted permanent failure", "550 mailbox unavailable"),
    "ambiguous": (AmbiguousDeliveryError, "scripted timeout after sending", None),
}


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
    capabilities = EVERYTHING

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
        if step != "ok":
            error_class, text, response = _FAILURES[step]
            raise error_class(
                text,
                provider=self.name,
                provider_response=response,
                retry_after=self.retry_after if step == "transient" else None,
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
    metrics: Any = None,
    **settings: Any,
) -> TestNotifier:
    """A Notifier for tests: eager transport, memory (or ``provider``) for both
    channels, no retry delays. Its outbox is cleared first.

    Args:
        tenants: Tenant tables, as in settings.
        provider: A provider instance for both channels (a ScriptedProvider, say).
        outbox: Outbox name of the memory provider.
        transport: Transport name.
        metrics: The Notifier's ``metrics=`` option (a registry, a recorder, True).
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
    notifier = TestNotifier.from_settings(config, metrics=metrics)
    if isinstance(provider, ScriptedProvider):
        notifier.outbox = provider.outbox
    elif isinstance(provider, MemoryProvider):
        notifier.outbox = get_outbox(provider.outbox)
    else:
        notifier.outbox = get_outbox(outbox)
    notifier.outbox.clear()
    return notifier


# --- assertions ------------------------------------------------------------------------


def _describe_filters(
    kind: str | None, to: str | None, tenant_id: str | None, channel: Channel | str | None
) -> str:
    parts = [
        f"{name}={value!r}"
        for name, value in (
            ("kind", kind),
            ("to", to),
            ("tenant_id", tenant_id),
            ("channel", None if channel is None else str(channel)),
        )
        if value is not None
    ]
    return ", ".join(parts) or "any message"


def _describe_message(message: Message) -> str:
    if isinstance(message, SmsMessage):
        return (
            f"sms {message.kind!r} to {message.to} for tenant {message.tenant_id!r}: "
            f"{message.body[:60]!r}"
        )
    recipients = ", ".join(address.email for address in message.to)
    return (
        f"email {message.kind!r} to {recipients} for tenant {message.tenant_id!r}: "
        f"subject {message.subject!r}"
    )


def _outbox_listing(outbox: Outbox, messages: list[Message]) -> str:
    if not messages:
        return f"the outbox {outbox.name!r} is empty"
    lines = [f"the outbox {outbox.name!r} holds {len(messages)} message(s):"]
    lines += [f"  {n}. {_describe_message(m)}" for n, m in enumerate(messages, start=1)]
    return "\n".join(lines)


def assert_sent(
    outbox: Outbox,
    *,
    kind: str | None = None,
    to: str | None = None,
    tenant_id: str | None = None,
    channel: Channel | str | None = None,
) -> Message:
    """Assert that exactly one message matching every given filter was sent; return it.

    The filters are those of :meth:`Outbox.find`. More than one match fails too
    (an order confirmed twice is usually a bug); use ``outbox.find`` to count.

    Raises:
        AssertionError: none or several matched. The message lists everything
            in the outbox, so the test report shows what was sent instead.

    Example::

        email = assert_sent(outbox, kind="order_confirmation", to="jane@example.com",
                            tenant_id="acme")
        assert "A-1" in email.subject
    """
    __tracebackhide__ = True
    found = outbox.find(to=to, tenant_id=tenant_id, kind=kind, channel=channel)
    if len(found) == 1:
        return found[0]
    wanted = _describe_filters(kind, to, tenant_id, channel)
    problem = str(len(found)) if found else "none"
    raise AssertionError(
        f"expected one message matching {wanted}, found {problem}; "
        f"{_outbox_listing(outbox, outbox.messages)}"
    )


def assert_not_sent(
    outbox: Outbox,
    *,
    kind: str | None = None,
    to: str | None = None,
    tenant_id: str | None = None,
    channel: Channel | str | None = None,
) -> None:
    """Assert that no message matching every given filter was sent.

    With no filters, assert that the outbox is empty.

    Raises:
        AssertionError: listing the outbox.
    """
    __tracebackhide__ = True
    found = outbox.find(to=to, tenant_id=tenant_id, kind=kind, channel=channel)
    if found:
        wanted = _describe_filters(kind, to, tenant_id, channel)
        raise AssertionError(
            f"expected no message matching {wanted}, found {len(found)}; "
            f"{_outbox_listing(outbox, outbox.messages)}"
        )
