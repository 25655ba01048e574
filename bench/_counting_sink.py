"""A provider that counts what it is given and sends nothing: the fastest honest sink.

``bench/bench_million.py`` selects it by dotted path (``_counting_sink:CountingProvider``,
importable because ``bench/`` is the script's folder). Everything before the
provider's ``send_email`` runs as for a real provider (rendering, MIME-free
message building, the claim, every status, the idempotency key); only the network
is left out, so what the benchmark measures is the library's own cost per send and
what it keeps per send. Each message gets a provider message id, as from a real
provider, so the status store's provider-id index grows and is evicted as in
production.

After :func:`record` (before the first send), it also writes the first 64 bits of
every notification id it is given into a preallocated array, so the benchmark can
set them against the receipts' ids and count what never arrived and what
arrived twice, exactly, at a fixed memory cost paid before the measurement.
"""

from __future__ import annotations

import array
import itertools
import threading
from typing import ClassVar

from tenant_notify.models import Channel, DeliveryResult, EmailMessage, SmsMessage
from tenant_notify.providers.base import EVERYTHING, Capabilities, Provider, ProviderConfig

__all__ = ["CountingProvider", "delivered", "id_bits", "record", "recorded"]

_lock = threading.Lock()
_count = itertools.count(1)
_delivered = 0
_ids: array.array[int] | None = None
_overflow: list[int] = []  # past the array: more messages than expected (doubles)


def id_bits(notification_id: str) -> int:
    """The first 64 bits of a 32-hex-digit notification id."""
    return int(notification_id[:16], 16)


def record(capacity: int) -> None:
    """Record the ids of the next ``capacity`` messages (and any beyond, slower)."""
    global _ids
    with _lock:
        _ids = array.array("Q", bytes(8 * capacity))
        _overflow.clear()


def recorded() -> list[int]:
    """The ids recorded so far (as :func:`id_bits`), in arrival order."""
    with _lock:
        if _ids is None:
            return []
        return list(_ids[: min(_delivered, len(_ids))]) + list(_overflow)


def delivered() -> int:
    """Messages every CountingProvider in this process has accepted so far."""
    with _lock:
        return _delivered


class CountingProvider(Provider):
    name: ClassVar[str] = "counting"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL, Channel.SMS})
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig
    capabilities: ClassVar[Capabilities] = EVERYTHING

    def _accept(self, notification_id: str) -> DeliveryResult:
        global _delivered
        with _lock:
            if _ids is not None:
                if _delivered < len(_ids):
                    _ids[_delivered] = id_bits(notification_id)
                else:
                    _overflow.append(id_bits(notification_id))
            _delivered += 1
            number = next(_count)
        return DeliveryResult(provider=self.name, provider_message_id=f"count-{number}")

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        return self._accept(message.notification_id)

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        return self._accept(message.notification_id)
