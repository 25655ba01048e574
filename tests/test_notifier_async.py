"""The coroutine twins: the blocking methods' checks, errors and receipts, with the
blocking part (the enqueue, a status read) off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import structlog

from tenant_notify import DeliveryState
from tenant_notify.errors import (
    EnqueueError,
    InvalidCurrencyError,
    InvalidRecipientError,
    UnknownNotificationError,
    UnknownTenantError,
    WaitTimeoutError,
)
from tenant_notify.models import Notification
from tenant_notify.notifier import ASYNC_THREADS
from tenant_notify.testing import ScriptedProvider, TestNotifier, get_outbox, make_notifier
from tenant_notify.transports import Transport

ORDER: dict[str, Any] = dict(
    order_id="A-1",
    customer_email="jane@example.com",
    order_total=Decimal("12.50"),
    currency="EUR",
    tenant_id="acme",
)


class HeldTransport(Transport):
    """Accepts a notification only when ``release`` is set; notes what it saw."""

    name = "held"

    def __init__(self, dispatcher: Any) -> None:
        super().__init__(dispatcher)
        self.release = threading.Event()
        self.active = 0
        self.most_active = 0
        self.threads: set[int] = set()
        self.context: list[dict[str, Any]] = []
        self.accepted: list[Notification] = []
        self._lock = threading.Lock()

    def submit(self, notification: Notification) -> None:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.threads.add(threading.get_ident())
            self.context.append(structlog.contextvars.get_contextvars())
        self.release.wait(10)
        with self._lock:
            self.active -= 1
            self.accepted.append(notification)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_each_twin_sends_what_its_blocking_method_sends(tenants):
    async def main(notify: TestNotifier) -> list[Any]:
        return [
            await notify.asend_order_confirmation(**ORDER),
            await notify.asend_welcome_email(
                user_email="max@example.com", user_name="Max", tenant_id="globex"
            ),
            await notify.asend_email(
                to_email="ops@example.com", subject="Hi", body="Hello", tenant_id="acme"
            ),
            await notify.asend_sms(to_phone="+15551234567", body="Shipped", tenant_id="acme"),
            await notify.asend(
                "email",
                tenant_id="acme",
                to="dev@example.com",
                context={"subject": "Generic", "body": "Body"},
            ),
        ]

    with make_notifier(tenants=tenants) as notify:
        receipts = run(main(notify))
        assert [r.kind for r in receipts] == [
            "order_confirmation",
            "welcome",
            "email",
            "sms",
            "email",
        ]
        assert all(notify.status(r.id).state is DeliveryState.SENT for r in receipts)
        emails = notify.outbox.emails
        assert [e.subject for e in emails][1].startswith("Willkommen")  # globex is German
        assert "€12.50" in emails[0].text
        assert [m.to for m in notify.outbox.sms] == ["+15551234567"]


def test_a_twin_refuses_exactly_what_its_blocking_method_refuses(tenants):
    with make_notifier(tenants=tenants) as notify:
        for change, error in [
            ({"currency": "EURO"}, InvalidCurrencyError),
            ({"customer_email": "nope"}, InvalidRecipientError),
            ({"tenant_id": "gone"}, UnknownTenantError),
        ]:
            with pytest.raises(error) as blocking:
                notify.send_order_confirmation(**{**ORDER, **change})
            with pytest.raises(error) as twin:
                run(notify.asend_order_confirmation(**{**ORDER, **change}))
            assert str(twin.value) == str(blocking.value)
        assert len(notify.outbox) == 0


def test_a_repeated_twin_send_is_a_duplicate_like_a_blocking_one(tenants):
    with make_notifier(tenants=tenants) as notify:
        first = notify.send_order_confirmation(**ORDER)
        again = run(notify.asend_order_confirmation(**ORDER))
        assert again.id == first.id and again.duplicate
        assert len(notify.outbox) == 1


def test_a_subclass_send_method_is_the_one_its_twin_runs(tenants):
    class Shop(TestNotifier):
        def send_sms(self, *, to_phone: str, body: str, tenant_id: str, **options: Any) -> Any:
            return super().send_sms(
                to_phone=to_phone, body=f"[shop] {body}", tenant_id=tenant_id, **options
            )

    settings = {"transport": "eager", "sms": "memory", "tenants": tenants}
    with Shop.from_settings(settings) as notify:
        run(notify.asend_sms(to_phone="+15551234567", body="hi", tenant_id="acme"))
    [sms] = get_outbox("default").sms
    assert sms.body == "[shop] hi"


def test_the_enqueue_runs_off_the_loop_with_the_callers_context(tenants):
    with make_notifier(tenants=tenants, transport=f"{__name__}:HeldTransport") as notify:
        held = notify.transport
        assert isinstance(held, HeldTransport)

        async def main() -> tuple[Any, int]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while not held.release.is_set():
                    ticks += 1
                    await asyncio.sleep(0.005)

            with structlog.contextvars.bound_contextvars(request_id="r-42"):
                sending = asyncio.create_task(
                    notify.asend_sms(to_phone="+15551234567", body="hi", tenant_id="acme")
                )
            ticking = asyncio.create_task(tick())
            await asyncio.sleep(0.2)  # the transport holds the send this long
            held.release.set()
            receipt = await sending
            await ticking
            return receipt, ticks

        receipt, ticks = run(main())
    # The loop went on running other coroutines while the transport held the send.
    assert ticks >= 10
    assert threading.get_ident() not in held.threads
    assert held.context == [{"request_id": "r-42"}]
    assert [n.id for n in held.accepted] == [receipt.id]


def test_at_most_the_pools_threads_enqueue_at_once(tenants):
    with make_notifier(tenants=tenants, transport=f"{__name__}:HeldTransport") as notify:
        held = notify.transport
        assert isinstance(held, HeldTransport)

        async def main() -> list[Any]:
            sends = [
                asyncio.create_task(
                    notify.asend_sms(to_phone="+15551234567", body=f"{i}", tenant_id="acme")
                )
                for i in range(3 * ASYNC_THREADS)
            ]
            await asyncio.sleep(0.3)
            active = held.active
            held.release.set()
            receipts = await asyncio.gather(*sends)
            assert active == ASYNC_THREADS
            return receipts

        receipts = run(main())
    assert held.most_active == ASYNC_THREADS
    assert len({r.id for r in receipts}) == 3 * ASYNC_THREADS


def test_await_and_astatus_follow_a_notification(tenants):
    provider = ScriptedProvider(["transient"])

    async def main(notify: TestNotifier) -> None:
        receipt = await notify.asend_welcome_email(
            user_email="jane@example.com", user_name="Jane", tenant_id="acme"
        )
        assert (await receipt.astatus()).id == receipt.id
        status = await receipt.await_(timeout=10)
        assert status.state is DeliveryState.SENT and status.attempts == 2
        assert await notify.astatus(receipt.id) == status
        with pytest.raises(UnknownNotificationError):
            await notify.astatus("no-such-id")
        with pytest.raises(UnknownNotificationError):
            await notify.await_("no-such-id", timeout=1)

    with make_notifier(
        tenants=tenants,
        provider=provider,
        transport="inprocess",
        retry={"initial_delay": 0.3, "jitter": 0},
    ) as notify:
        run(main(notify))


def test_await_gives_up_after_its_timeout(tenants):
    with make_notifier(tenants=tenants, transport=f"{__name__}:HeldTransport") as notify:
        held = notify.transport
        assert isinstance(held, HeldTransport)
        held.release.set()

        async def main() -> float:
            receipt = await notify.asend_sms(to_phone="+15551234567", body="x", tenant_id="acme")
            started = time.monotonic()
            with pytest.raises(WaitTimeoutError, match=r"still queued after 0\.3s"):
                await receipt.await_(timeout=0.3)
            return time.monotonic() - started

        assert 0.3 <= run(main()) < 1.0


def test_aclose_drains_and_then_refuses(tenants):
    async def main() -> None:
        notify = make_notifier(tenants=tenants, transport="inprocess")
        async with notify:
            receipts = [
                await notify.asend_sms(to_phone="+15551234567", body=f"{i}", tenant_id="acme")
                for i in range(20)
            ]
        assert all(notify.status(r.id).state is DeliveryState.SENT for r in receipts)
        with pytest.raises(EnqueueError, match="closed"):
            await notify.asend_sms(to_phone="+15551234567", body="late", tenant_id="acme")
        await notify.aclose()  # a second close is a no-op

    run(main())
