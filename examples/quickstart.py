"""Quickstart: two tenants, three notifications, printed to the console.

Run it with ``python examples/quickstart.py``. Swap ``"console"`` for
``{"provider": "smtp", "host": ..., "port": ...}`` to send for real.
"""

from __future__ import annotations

from decimal import Decimal

from tenant_notify import Notifier

SETTINGS = {
    "transport": "inprocess",  # the default: worker threads in this process
    "email": {"provider": "console"},
    "sms": {"provider": "console"},
    "tenants": {
        "acme": {
            "name": "Acme Shop",
            "email_from": "Acme Shop <orders@acme.test>",
            "sms_from": "+15005550006",
            "branding": {"primary_color": "#b91c1c"},
        },
        "globex": {"name": "Globex Café", "email_from": "hello@globex.test", "locale": "de"},
    },
}


def main() -> None:
    with Notifier.from_settings(SETTINGS) as notify:
        receipts = [
            notify.send_order_confirmation(
                order_id="A-1001",
                customer_email="jane@example.com",
                order_total=Decimal("99.99"),
                currency="USD",
                tenant_id="acme",
            ),
            notify.send_welcome_email(
                user_email="max@example.com", user_name="Max", tenant_id="globex"
            ),
            notify.send_sms(to_phone="+15551234567", body="Your order shipped.", tenant_id="acme"),
        ]
        for receipt in receipts:
            status = receipt.wait(timeout=10)
            print(f"{receipt.kind}: {status.state.value} via {status.provider}")


if __name__ == "__main__":
    main()
