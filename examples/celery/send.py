"""The example app: sends notifications through the Celery transport and waits for them.

In docker-compose.yml it runs once the worker is healthy; locally::

    TENANT_NOTIFY_CONFIG_FILE=examples/celery/tenant-notify.toml \
    CELERY_BROKER_URL=amqp://guest:guest@localhost:5672// \
    CELERY_RESULT_BACKEND=redis://localhost:6379/0 \
    python examples/celery/send.py

(with ``[email] host`` pointing at an SMTP server you run, and a worker started the
same way with ``tenant-notify worker``).
"""

from __future__ import annotations

import sys
import uuid
from decimal import Decimal

from tenant_notify import Notifier


def main() -> int:
    run = uuid.uuid4().hex[:6]
    with Notifier.from_env() as notify:
        receipts = [
            notify.send_order_confirmation(
                order_id=f"A-{run}",
                customer_email="jane@example.com",
                order_total=Decimal("99.99"),
                currency="USD",
                tenant_id="acme",
                customer_name="Jane Doe",
            ),
            notify.send_welcome_email(
                user_email=f"max+{run}@example.com", user_name="Max Müller", tenant_id="globex"
            ),
            notify.send_sms(to_phone="+15551234567", body="Your order shipped.", tenant_id="acme"),
        ]
        states = []
        for receipt in receipts:
            # Written by the worker, read here from Redis.
            status = receipt.wait(timeout=60)
            states.append(status.state.value)
            print(f"{receipt.kind:20} {receipt.tenant_id:8} {status.state.value:8} {receipt.id}")
    return 0 if set(states) == {"sent"} else 1


if __name__ == "__main__":
    sys.exit(main())
