"""Print messages to the terminal instead of sending them: the provider for development.

Each message is written as one block (channel, tenant, sender, recipients,
subject, then the text body) to ``sys.stdout`` or ``sys.stderr``, looked up at
send time so that output capture (pytest's ``capsys``, ``contextlib.redirect_stdout``)
sees it. A lock shared by every console provider keeps blocks from interleaving
when several threads send at once. Control characters other than line breaks and
tabs are shown escaped, so a message cannot drive the terminal.
"""

from __future__ import annotations

import re
import sys
import threading
import uuid
from typing import ClassVar, Literal, TextIO

from ..errors import ConfigurationError
from ..models import Channel, DeliveryResult, EmailMessage, Message, SmsMessage
from .base import EVERYTHING, Capabilities, Provider, ProviderConfig

__all__ = ["ConsoleConfig", "ConsoleProvider"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"[\r\n]")
_RULE = "-" * 72


class ConsoleConfig(ProviderConfig):
    """Settings of the console provider.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        show_body: Print the text body (or the SMS body); off, only the envelope.
    """

    stream: Literal["stdout", "stderr"] = "stdout"
    show_body: bool = True


class ConsoleProvider(Provider):
    """Write each message to standard output (or error) instead of delivering it.

    Args:
        stream: ``"stdout"`` or ``"stderr"``.
        show_body: Print message bodies too.
    """

    name: ClassVar[str] = "console"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL, Channel.SMS})
    Config: ClassVar[type[ProviderConfig]] = ConsoleConfig
    capabilities: ClassVar[Capabilities] = EVERYTHING

    #: One lock for every instance: they may all share one terminal.
    _write_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, *, stream: Literal["stdout", "stderr"] = "stdout", show_body: bool = True
    ) -> None:
        if stream not in ("stdout", "stderr"):
            raise ConfigurationError(
                f"stream must be 'stdout' or 'stderr', not {stream!r}",
                key="stream",
                provider=self.name,
            )
        self.stream = stream
        self.show_body = show_body

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        lines = [
            ("From", str(message.from_addr)),
            ("To", ", ".join(str(addr) for addr in message.to)),
        ]
        for label, addresses in (("Cc", message.cc), ("Bcc", message.bcc)):
            if addresses:
                lines.append((label, ", ".join(str(addr) for addr in addresses)))
        if message.reply_to is not None:
            lines.append(("Reply-To", str(message.reply_to)))
        lines.append(("Subject", message.subject))
        lines.extend((f"Header {key}", value) for key, value in message.headers.items())
        if message.tags:
            lines.append(("Tags", ", ".join(message.tags)))
        lines.extend((f"Metadata {key}", value) for key, value in message.metadata.items())
        lines.extend(
            (
                "Inline image" if a.inline else "Attachment",
                f"{a.filename} ({a.content_type}, {a.size} bytes)",
            )
            for a in message.attachments
        )
        if message.html is not None:
            lines.append(("HTML part", f"{len(message.html)} characters (not shown)"))
        self._write(message, lines, message.text)
        return DeliveryResult(provider=self.name, provider_message_id=self._message_id(message))

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        lines = [("From", message.from_number), ("To", message.to)]
        self._write(message, lines, message.body)
        return DeliveryResult(provider=self.name, provider_message_id=self._message_id(message))

    def _write(self, message: Message, fields: list[tuple[str, str]], body: str) -> None:
        head = [
            ("Channel", message.channel.value),
            ("Tenant", message.tenant_id),
            ("Kind", message.kind),
            ("Notification", message.notification_id),
            *fields,
        ]
        width = max(len(label) for label, _ in head) + 2
        out = [f"{_RULE}"]
        out.extend(f"{label + ':':<{width}}{_one_line(value)}" for label, value in head)
        if self.show_body:
            out.append("")
            out.append(_printable(body).rstrip("\n"))
        out.append(_RULE)
        block = "\n".join(out) + "\n"
        with self._write_lock:
            stream: TextIO = getattr(sys, self.stream)
            stream.write(block)
            stream.flush()

    @staticmethod
    def _message_id(message: Message) -> str:
        return f"console-{message.notification_id or uuid.uuid4().hex}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} stream={self.stream!r}>"


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.replace("\r\n", "\n"))


def _one_line(text: str) -> str:
    return _printable(_LINE_BREAKS.sub(" ", text))
