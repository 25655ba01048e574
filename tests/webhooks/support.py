"""What the webhook tests share: a status the provider has sent, and SendGrid's signer."""

from __future__ import annotations

import base64
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tenant_notify.models import Channel, DeliveryState, DeliveryStatus
from tenant_notify.stores import MemoryStatusStore

__all__ = ["Signer", "sent"]


class Signer:
    """Signs webhook bodies like SendGrid, with a fresh P-256 key."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.private.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }


def sent(
    store: MemoryStatusStore,
    notification_id: str,
    provider: str = "sendgrid",
    provider_message_id: str | None = "msg-1",
    tenant_id: str = "acme",
    **changes: Any,
) -> DeliveryStatus:
    status = DeliveryStatus(
        id=notification_id,
        tenant_id=tenant_id,
        kind="welcome",
        channel=Channel.SMS if provider in ("twilio", "sns") else Channel.EMAIL,
        state=DeliveryState.SENT,
        attempts=1,
        provider=provider,
        provider_message_id=provider_message_id,
    ).evolve(**changes)
    store.save(status)
    return status
