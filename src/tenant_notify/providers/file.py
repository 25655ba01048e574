"""Write messages to files instead of sending them: for development and inspection.

Each email becomes ``<directory>/<timestamp>-<notification_id>.eml`` holding the
very MIME bytes the SMTP provider would send (open it in any mail client); each
SMS becomes a ``.json`` file with ``from``, ``to``, ``body``, ``tenant_id``,
``notification_id``, ``kind`` and ``sent_at``. The timestamp (UTC, microseconds)
makes names sort in sending order.

Files are written atomically: to a hidden temporary file in the same directory,
then renamed into place, so a reader never sees half a message.

Errors: a write that fails because of the file system's state, such as a full
disk, an exhausted quota or an I/O error, is a
:class:`~tenant_notify.errors.TransientDeliveryError`. One that retrying cannot
fix (permission denied, read-only file system, the directory is a file, the name
is too long) is a :class:`~tenant_notify.errors.PermanentDeliveryError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import ClassVar

from .._mime import build_mime, mime_bytes
from ..errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from ..models import Channel, DeliveryResult, EmailMessage, Message, SmsMessage
from .base import EVERYTHING, Capabilities, Provider, ProviderConfig

__all__ = ["FileConfig", "FileProvider"]

#: errno values that retrying will not cure.
_PERMANENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENAMETOOLONG,
        errno.EINVAL,
    }
)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class FileConfig(ProviderConfig):
    """Settings of the file provider.

    Attributes:
        directory: Where the files go; created (with parents) if missing.
    """

    directory: Path


class FileProvider(Provider):
    """Write each email to an ``.eml`` file and each SMS to a ``.json`` file.

    Args:
        directory: Where the files go; created (with parents) if missing.

    Raises:
        ConfigurationError: the directory cannot be created.
    """

    name: ClassVar[str] = "file"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL, Channel.SMS})
    Config: ClassVar[type[ProviderConfig]] = FileConfig
    capabilities: ClassVar[Capabilities] = EVERYTHING

    def __init__(self, *, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigurationError(
                f"cannot create directory {str(self.directory)!r}: {err.strerror or err}",
                key="directory",
                provider=self.name,
            ) from err

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        mime = build_mime(message)
        message_id = str(mime["Message-ID"]).strip().strip("<>")
        path = self._write(message, ".eml", mime_bytes(mime))
        return DeliveryResult(
            provider=self.name, provider_message_id=message_id, detail={"path": str(path)}
        )

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        record = {
            "from": message.from_number,
            "to": message.to,
            "body": message.body,
            "tenant_id": message.tenant_id,
            "notification_id": message.notification_id,
            "kind": message.kind,
            "sent_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        data = json.dumps(record, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
        path = self._write(message, ".json", data)
        return DeliveryResult(
            provider=self.name, provider_message_id=path.stem, detail={"path": str(path)}
        )

    def _write(self, message: Message, suffix: str, data: bytes) -> Path:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        ident = _UNSAFE_NAME.sub("_", message.notification_id)[:100] or uuid.uuid4().hex
        tmp: str | None = None
        try:
            # Again on every send: the directory may have been removed since.
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{stamp}-{ident}{suffix}"
            if path.exists():  # the same notification twice in one microsecond
                path = self.directory / f"{stamp}-{ident}-{uuid.uuid4().hex[:8]}{suffix}"
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
            tmp = None
        except OSError as err:
            cls = (
                PermanentDeliveryError
                if err.errno in _PERMANENT_ERRNOS
                else (TransientDeliveryError)
            )
            raise cls(
                f"cannot write a message file in {str(self.directory)!r}: {err.strerror or err}",
                provider=self.name,
                notification_id=message.notification_id or None,
                tenant_id=message.tenant_id or None,
            ) from err
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return path

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} directory={str(self.directory)!r}>"
