"""The provider contract.

A provider has one job: :meth:`Provider.send` takes a rendered, provider-neutral
message and returns a :class:`~tenant_notify.models.DeliveryResult`, or raises a
:class:`~tenant_notify.errors.DeliveryError` subclass that says whether retrying
can help. Everything else (tenants, templates, retries, status) is the
dispatcher's business, so a provider stays small.

Subclasses must:

* set ``name`` (the configuration name) and ``channels`` (what they serve);
* set ``capabilities`` to the email features and limits they support (the
  default is none: subject, bodies, one recipient and a reply-to only); a provider
  that declares ``Feature.TRACK_OPENS`` / ``TRACK_CLICKS`` must honour
  ``EmailMessage.track_opens`` / ``track_clicks`` (and say "off" where the
  service would track by default);
* set ``Config`` to a pydantic model of their settings (``provider`` excluded),
  with ``extra="forbid"`` so a misspelt key fails when the notifier is built;
* implement ``send_email`` and/or ``send_sms`` for the channels they declare;
* translate every third-party exception into the library's tree (``raise ... from``);
  the error's text is redacted when it is made, and :meth:`Provider.send` replaces
  what it was raised from by redacted stand-ins (:func:`~tenant_notify._redact.clean_chain`).

Subclasses may override ``close`` to release connections, ``tracks`` when
their tracking depends on a setting, and extend
``check_options`` (calling ``super()``) for a rule the declared capabilities cannot
say, such as the characters a provider allows in metadata. They must not override
``send`` (it checks the channel and dispatches) or keep per-tenant state: one
instance serves every tenant that shares its configuration, from several threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, SecretStr

from .._redact import clean_chain, register_secret
from ..errors import NotifyError, UnsupportedChannelError, UnsupportedFeatureError
from ..models import (
    Channel,
    DeliveryResult,
    EmailMessage,
    EmailOptions,
    Feature,
    Message,
    SmsMessage,
)

__all__ = ["EVERYTHING", "Capabilities", "Provider", "ProviderConfig"]


_TRACKING = frozenset({Feature.TRACK_OPENS, Feature.TRACK_CLICKS})


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The email features and limits a provider declares.

    Attributes:
        features: What it can send (attachments, inline images, cc, ...).
        max_message_bytes: The largest message it accepts, if it has a limit; a
            send whose attachments alone (base64-encoded, as they travel) pass it
            is refused at the call.
        max_tags: The most tags one message may carry, if fewer than the library's.
        max_metadata: The most metadata entries, if fewer than the library's.
    """

    features: frozenset[Feature] = frozenset()
    max_message_bytes: int | None = None
    max_tags: int | None = None
    max_metadata: int | None = None


#: Every feature, no limits: for providers that keep or show messages (memory,
#: file, console) rather than hand them to a service. Tracking is not among them:
#: the library adds its own pixel and links for these (as it does for SMTP).
EVERYTHING = Capabilities(features=frozenset(Feature) - _TRACKING)


class ProviderConfig(BaseModel):
    """Base of every provider's settings model."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider:
    """Base class of every provider (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    channels: ClassVar[frozenset[Channel]] = frozenset()
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig
    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    def tracks(cls, config: ProviderConfig | None) -> frozenset[Feature]:
        """Which of :attr:`Feature.TRACK_OPENS` / :attr:`Feature.TRACK_CLICKS` this
        provider does itself with ``config`` (its settings; None for an instance
        given directly). By default what it declares; a provider whose tracking
        depends on a setting (SES: a configuration set) overrides this.

        The library tracks with its own pixel and links where the provider does not.
        """
        return cls.capabilities.features & _TRACKING

    @classmethod
    def check_options(cls, options: EmailOptions) -> None:
        """Refuse options this provider cannot send, before anything is queued.

        Raises:
            UnsupportedFeatureError: naming the first feature (or limit) at fault.
        """
        caps = cls.capabilities
        missing = sorted(options.features - caps.features)
        if missing:
            raise UnsupportedFeatureError(
                f"provider {cls.name!r} cannot send {missing[0].replace('_', ' ')}",
                feature=missing[0],
                provider=cls.name,
            )
        for feature, count, limit in (
            (Feature.TAGS, len(options.tags), caps.max_tags),
            (Feature.METADATA, len(options.metadata), caps.max_metadata),
        ):
            if limit is not None and count > limit:
                raise UnsupportedFeatureError(
                    f"provider {cls.name!r} takes at most {limit} {feature}, not {count}",
                    feature=feature,
                    provider=cls.name,
                )
        if caps.max_message_bytes is not None:
            # Attachments travel base64-encoded: 4 bytes for every 3.
            encoded = (options.attachment_bytes + 2) // 3 * 4
            if encoded > caps.max_message_bytes:
                raise UnsupportedFeatureError(
                    f"provider {cls.name!r} accepts messages of at most "
                    f"{caps.max_message_bytes} bytes; the attachments alone are {encoded} "
                    "bytes encoded",
                    feature="size",
                    provider=cls.name,
                )

    @classmethod
    def from_config(cls, config: ProviderConfig) -> Self:
        """Build an instance from its validated settings model."""
        for value in dict(config).values():
            if isinstance(value, SecretStr):
                register_secret(value.get_secret_value())  # scrubbed from every text
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
        try:
            if isinstance(message, EmailMessage):
                return self.send_email(message)
            return self.send_sms(message)
        except NotifyError as err:
            # The error's text is redacted; what it was raised from (a server's
            # reply, an SDK's exception) must not bring the secret or the
            # recipient back in a traceback.
            clean_chain(err)
            raise

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
