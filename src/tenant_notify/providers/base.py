"""The provider contract.

A provider has one job: :meth:`Provider.send` takes a rendered, provider-neutral
message and returns a :class:`~tenant_notify.models.DeliveryResult`, or raises a
:class:`~tenant_notify.errors.DeliveryError` subclass that says whether retrying
can help. Everything else (tenants, templates, retries, status) is the
dispatcher's business, so a provider stays small.

Subclasses must:

* set ``name`` (the configuration name) and ``channels`` (what they serve);
* set ``Config`` to a pydantic model of their settings (``provider`` excluded),
  with ``extra="forbid"`` so a misspelt key fails when the notifier is built;
* implement ``send_email`` and/or ``send_sms`` for the channels they declare;
* translate every third-party exception into the library's tree (``raise ... from``).

Subclasses may override ``close`` to release connections. They must not override
``send`` (it checks the channel and dispatches) or keep per-tenant state: one
instance serves every tenant that shares its configuration, from several threads.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from ..errors import UnsupportedChannelError
from ..models import Channel, DeliveryResult, EmailMessage, Message, SmsMessage

__all__ = ["Provider", "ProviderConfig"]


class ProviderConfig(BaseModel):
    """Base of every provider's settings model."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider:
    """Base class of every provider (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    channels: ClassVar[frozenset[Channel]] = frozenset()
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig

    @classmethod
    def from_config(cls, config: ProviderConfig) -> Self:
        """Build an instance from its validated settings model."""
        return cls(**dict(config))

    def send(self, message: Message) -> DeliveryResult:
        """Deliver ``message`` and return what the provider reported.

        Raises:
            UnsupportedChannelError: the provider does not serve the message's channel.
            TransientDeliveryError: not accepted, worth retrying.
            PermanentDeliveryError: not accepted, retrying will not help.
            AmbiguousDeliveryError: perhaps accepted (the reply was lost).
        """
        if message.channel not in self.channels:
            raise UnsupportedChannelError(
                f"provider {self.name!r} does not send {message.channel.value}",
                provider=self.name,
            )
        if isinstance(message, EmailMessage):
            return self.send_email(message)
        return self.send_sms(message)

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        raise UnsupportedChannelError(f"provider {self.name!r} does not send email")

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        raise UnsupportedChannelError(f"provider {self.name!r} does not send sms")

    def close(self) -> None:
        """Release connections and files. Safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
