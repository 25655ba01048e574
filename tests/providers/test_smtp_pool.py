"""SMTP connections bounded per server across every tenant's table, in one process.

One aiosmtpd server, many tenants with their own SMTP settings (each its own
connection identity), the in-process transport's worker threads: the server never
sees more connections open at once than ``max_connections``, idle ones are closed
after ``idle_timeout``, and none is left open once the notifier is closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tenant_notify import DeliveryState
from tenant_notify.errors import TransientDeliveryError
from tenant_notify.models import Address, EmailMessage
from tenant_notify.notifier import Notifier
from tenant_notify.providers.smtp import SmtpProvider
from tests.smtp_server import LoopbackSMTPServer

TENANTS = 200
THREADS = 16
BOUND = 8


@pytest.fixture
def server() -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer(pipelining=True) as smtp:
        yield smtp


def _tenants(port: int) -> dict[str, dict[str, object]]:
    return {
        f"t{i}": {
            "name": f"Tenant {i}",
            "email_from": f"orders@t{i}.test",
            # Its own settings: a connection opened for one tenant is not another's.
            "email": {
                "provider": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "local_hostname": f"mx.t{i}.test",
                "max_connections": BOUND,
            },
        }
        for i in range(TENANTS)
    }


def test_200_tenants_16_threads_stay_within_the_bound_and_close_everything(
    server: LoopbackSMTPServer,
) -> None:
    settings = {
        "transport": {"backend": "inprocess", "workers": THREADS},
        "email": {"provider": "smtp", "host": "127.0.0.1", "port": server.port},
        "tenants": _tenants(server.port),
    }
    server.clear()
    with Notifier.from_settings(settings) as notify:
        receipts = [
            notify.send_email(
                to_email=f"user{n}@example.com", subject=f"m{n}", body="b", tenant_id=f"t{i}"
            )
            for n in range(2)
            for i in range(TENANTS)
        ]
        states = [receipt.wait(120).state for receipt in receipts]
        assert states == [DeliveryState.SENT] * len(receipts)
        assert len(server.wait_for(len(receipts), timeout=30)) == len(receipts)
        assert 1 <= server.peak_open_connections <= BOUND
    server.wait_until(lambda: server.open_connections == 0, timeout=10)
    assert server.peak_open_connections <= BOUND


def test_idle_connections_close_after_the_idle_timeout(server: LoopbackSMTPServer) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=server.port, idle_timeout=0.3)
    try:
        provider.send(_email(1))
        server.wait_for(1)
        assert server.open_connections == 1
        # Nobody calls close: the pool's reaper says QUIT on time.
        server.wait_until(lambda: server.open_connections == 0, timeout=10)
        assert server.quits == 1
        provider.send(_email(2))  # and the next send opens a new one
        server.wait_for(2)
        assert server.connections == 2
    finally:
        provider.close()


def test_the_reaper_is_not_woken_by_every_message(
    server: LoopbackSMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenant_notify.providers import _smtp_pool

    reaps = 0
    reap = _smtp_pool._POOL.reap

    def counted() -> float | None:
        nonlocal reaps
        reaps += 1
        return reap()

    monkeypatch.setattr(_smtp_pool._POOL, "reap", counted)
    provider = SmtpProvider(host="127.0.0.1", port=server.port, idle_timeout=0.4)
    try:
        provider.send(_email(0))
        time.sleep(0.05)  # the reaper is waiting for the connection's expiry now
        before = reaps
        for n in range(1, 21):
            provider.send(_email(n))
            time.sleep(0.005)  # time enough for a woken reaper to look
        # Each connection put back expires after the one the reaper waits for:
        # nothing to look at before then (a wake-up per message cost a thread
        # switch, and a new thread whenever the connection was out).
        assert reaps - before <= 2
        server.wait_until(lambda: server.open_connections == 0, timeout=10)
        assert server.quits == 1  # still closed on time
    finally:
        provider.close()


def test_a_send_waits_for_a_busy_server_and_then_gives_up(server: LoopbackSMTPServer) -> None:
    one = SmtpProvider(host="127.0.0.1", port=server.port, local_hostname="a.test", timeout=10)
    other = SmtpProvider(
        host="127.0.0.1", port=server.port, local_hostname="b.test", max_connections=1, timeout=0.5
    )
    try:
        # The bound of the table that says less holds for the server.
        server.delay_data_reply(2.0)
        slow = threading.Thread(target=lambda: _swallow(one, _email(1)))
        slow.start()
        server.wait_until(lambda: server.open_connections == 1)
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError, match="no free connection"):
            other.send(_email(2))
        assert time.monotonic() - started >= 0.45
        slow.join(10)
        other.send(_email(3))  # the idle connection of the other identity made room
        assert server.peak_open_connections == 1
    finally:
        one.close()
        other.close()
    server.wait_until(lambda: server.open_connections == 0, timeout=10)


def _swallow(provider: SmtpProvider, message: EmailMessage) -> None:
    provider.send(message)


def _email(n: int) -> EmailMessage:
    return EmailMessage(
        from_addr=Address("orders@acme.test", "Acme"),
        to=(Address("jane@example.com"),),
        subject=f"m{n}",
        text="hello",
        notification_id=f"n-{n}",
        tenant_id="acme",
    )
