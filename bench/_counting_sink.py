"""A provider that counts what it is given and sends nothing: the fastest honest sink.

``bench/bench_million.py`` selects it by dotted path (``_counting_sink:CountingProvider``,
importable because ``bench/`` is the script's folder). Everything before the
provider's ``send_email`` runs as for a real provider (rendering, MIME-free
message building, the claim, every status, the idempotency key); only the network
is left out, so what the benchmark measures is the library's own cost per send and
what it keeps per send. Each message gets a provider message id, as from a real
provider, so the status store's provider-id index grows and is evicted as in
production.
"""

from __future__ import annotations

import itertools
import threading
from typing import ClassVar

from tenant_notify.models import Channel, DeliveryResult, EmailMessage, SmsMessage
from tenant_notify.providers.base import EVERYTHING, Capabilities, Provider, ProviderConfig

__all__ = ["CountingProvider", "delivered"]

_lock = threading.Lock()
_count = itertools.count(1)
_delivered = 0


def delivered() -> int:
    """Messages every CountingProvider in this process has accepted so far."""
    with _lock:
        return _delivered


class CountingProvider(Provider):
    name: ClassVar[str] = "counting"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL, Channel.SMS})
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig
    capabilities: ClassVar[Capabilities] = EVERYTHING

    def _accept(self) -> DeliveryResult:
        global _delivered
        with _lock:
            _delivered += 1
            number = next(_count)
        return DeliveryResult(provider=self.name, provider_message_id=f"count-{number}")

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        return self._accept()

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        return self._accept()
