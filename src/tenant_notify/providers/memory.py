"""Keep messages in memory, in named outboxes: the provider for tests.

::

    provider = MemoryProvider(outbox="signup-tests")
    ...
    [email] = get_outbox("signup-tests").wait_for(1)

Outboxes are looked up by name, so a provider built from settings in a worker
thread and the test that inspects the result meet at the same :class:`Outbox`.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from pydantic import Field

from ..errors import WaitTimeoutError
from ..models import Channel, DeliveryResult, EmailMessage, Message, SmsMessage
from .base import EVERYTHING, Capabilities, Provider, ProviderConfig

__all__ = ["MemoryConfig", "MemoryProvider", "Outbox", "clear_outboxes", "get_outbox"]


class Outbox:
    """A thread-safe, ordered list of delivered messages.

    Args:
        name: The outbox name (as in :func:`get_outbox`).
    """

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self._changed = threading.Condition(threading.Lock())
        self._messages: list[Message] = []
        self._appended = 0

    def append(self, message: Message) -> int:
        """Add ``message``; return its sequence number (1 for the first ever)."""
        with self._changed:
            self._messages.append(message)
            self._appended += 1
            self._changed.notify_all()
            return self._appended

    @property
    def messages(self) -> list[Message]:
        """Every message, oldest first (a copy)."""
        with self._changed:
            return list(self._messages)

    @property
    def emails(self) -> list[EmailMessage]:
        """The email messages, oldest first."""
        return [m for m in self.messages if isinstance(m, EmailMessage)]

    @property
    def sms(self) -> list[SmsMessage]:
        """The SMS messages, oldest first."""
        return [m for m in self.messages if isinstance(m, SmsMessage)]

    def __len__(self) -> int:
        with self._changed:
            return len(self._messages)

    def clear(self) -> None:
        """Forget every message (sequence numbers keep counting)."""
        with self._changed:
            self._messages.clear()

    def find(
        self,
        *,
        to: str | None = None,
        tenant_id: str | None = None,
        kind: str | None = None,
        channel: Channel | str | None = None,
    ) -> list[Message]:
        """The messages matching every given filter, oldest first.

        Args:
            to: An email address (any recipient, compared without regard to case)
                or a phone number.
            tenant_id: The tenant id.
            kind: The notification kind.
            channel: ``"email"`` or ``"sms"``.
        """
        return [
            m
            for m in self.messages
            if (to is None or _sent_to(m, to))
            and (tenant_id is None or m.tenant_id == tenant_id)
            and (kind is None or m.kind == kind)
            and (channel is None or m.channel == channel)
        ]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Message]:
        """Block until the outbox holds at least ``count`` messages; return them all.

        Raises:
            WaitTimeoutError: fewer than ``count`` arrived within ``timeout`` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count, timeout):
                raise WaitTimeoutError(
                    f"outbox {self.name!r} holds {len(self._messages)} message(s) after "
                    f"waiting {timeout}s for {count}"
                )
            return list(self._messages)

    def __repr__(self) -> str:
        return f"<Outbox {self.name!r} messages={len(self)}>"


def _sent_to(message: Message, to: str) -> bool:
    if isinstance(message, SmsMessage):
        return message.to == to
    wanted = to.casefold()
    return any(addr.email.casefold() == wanted for addr in message.to)


_outboxes: dict[str, Outbox] = {}
_outboxes_lock = threading.Lock()


def get_outbox(name: str = "default") -> Outbox:
    """The outbox called ``name``, created on first use."""
    with _outboxes_lock:
        outbox = _outboxes.get(name)
        if outbox is None:
            outbox = _outboxes[name] = Outbox(name)
        return outbox


def clear_outboxes() -> None:
    """Empty every outbox (the objects stay, so references held elsewhere stay live)."""
    with _outboxes_lock:
        outboxes = list(_outboxes.values())
    for outbox in outboxes:
        outbox.clear()


class MemoryConfig(ProviderConfig):
    """Settings of the memory provider.

    Attributes:
        outbox: Name of the outbox messages go to.
    """

    outbox: str = Field(default="default", min_length=1)


class MemoryProvider(Provider):
    """Deliver email and SMS into an in-memory :class:`Outbox`.

    Args:
        outbox: Name of the outbox (see :func:`get_outbox`).
    """

    name: ClassVar[str] = "memory"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL, Channel.SMS})
    Config: ClassVar[type[ProviderConfig]] = MemoryConfig
    capabilities: ClassVar[Capabilities] = EVERYTHING

    def __init__(self, *, outbox: str = "default") -> None:
        self.outbox = outbox

    def _deliver(self, message: Message) -> DeliveryResult:
        number = get_outbox(self.outbox).append(message)
        return DeliveryResult(provider=self.name, provider_message_id=f"mem-{number}")

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        return self._deliver(message)

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        return self._deliver(message)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} outbox={self.outbox!r}>"
