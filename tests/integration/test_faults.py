"""The delivery ledger under infrastructure faults (issue 9's "Why"), end to end.

Each test runs a real ``tenant-notify worker``, the shared RabbitMQ and Redis
reached through a TCP proxy the test starts (tests/faults.py), and counts what the
loopback SMTP server received. A send that raises is retried with the same call
(same idempotency key), as the caller's contract says: nothing may be lost, and
nothing may arrive twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tenant_notify.models import DeliveryState
from tests.faults import Counts, run_fault
from tests.http_fakes import FakeProviderAPI
from tests.smtp_server import LoopbackSMTPServer

pytestmark = pytest.mark.integration

# Enough that the fault lands mid-run with deliveries in every stage; small enough
# that the whole file stays around two minutes on the loaded machine.
COUNT = 120


@pytest.fixture
def folder(tmp_path: Path, services: None) -> Path:
    return tmp_path


@pytest.fixture
def smtp_server(services: None) -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer() as server:
        yield server


def check(counts: Counts) -> None:
    assert (counts.lost, counts.doubled) == (0, 0), counts
    assert counts.sent == counts.notifications == COUNT, counts
    assert counts.ambiguous == 0, counts


def test_a_worker_side_redis_reset_neither_loses_nor_doubles(smtp_server, folder):
    # The completion writes of the attempts in flight are lost with the connection;
    # they are held until Redis answers, so the redelivered copies are skipped.
    check(run_fault("worker-redis-reset", COUNT, smtp_server, folder))


def test_a_caller_side_redis_stall_neither_loses_nor_doubles(smtp_server, folder):
    counts = run_fault("caller-redis-stall", COUNT, smtp_server, folder)
    check(counts)
    # The caller's path does not wait on Redis: the stall raises nothing.
    assert counts.raised == {}


@pytest.mark.parametrize("fault", ["broker-stall-sync", "broker-reset-sync"])
def test_retrying_a_send_the_broker_did_not_confirm_sends_once(fault, smtp_server, folder):
    counts = run_fault(fault, COUNT, smtp_server, folder)
    check(counts)
    # The fault did hit sends, and each said what it knew.
    assert counts.raised and set(counts.raised) <= {"InDoubtError", "NotQueuedError"}


def test_a_killed_worker_group_is_recovered_within_30_seconds(smtp_server, folder):
    counts = run_fault("group-sigkill", COUNT, smtp_server, folder)
    # Nothing lost in silence: each one was received, or its status says it may
    # not have been (the kill fell between the hand-over's record and the dot).
    assert counts.lost == 0 and counts.sent + counts.reported_lost == COUNT, counts
    assert counts.recovery is not None and counts.recovery <= 30.0, counts
    # An attempt the kill caught after its hand-over ends ambiguous, as a connection
    # dropped after the dot does: not sent again.
    assert counts.doubled == 0, counts


# --- a worker SIGKILLed on either side of the point of no return -----------------------
#
# One order, a real ``tenant-notify worker``; the loopback SMTP server SIGKILLs the
# worker's whole process group the moment the order's final dot has arrived (before
# it answers), or at its RCPT (the dot not sent); the loopback SendGrid the moment
# the request has arrived. A second worker then takes the redelivered message once
# the dead one's lease (3 s here) runs out.

SENDGRID_KEY = "SG.fault-test.Zm9vYmFy"


def _kill_during(
    arm: Callable[[Callable[[], None]], None],
    email: dict[str, Any],
    folder: Path,
    **retry: Any,
) -> Any:
    """Send one order with ``arm`` set to kill its worker; return its final status
    once a new worker has dealt with the redelivered message."""
    from tenant_notify import Notifier
    from tests.faults import FaultWorker, _order, settings_for
    from tests.processes import cleanup

    run_id = uuid.uuid4().hex[:10]
    settings = settings_for(run_id, 0)
    settings["email"] = email
    settings["idempotency"] = {"lease": 3.0}
    settings["retry"].update(retry)
    worker = FaultWorker(settings, folder)
    try:
        worker.start()
        killed = threading.Event()

        def kill() -> None:
            worker.kill_group()
            killed.set()

        arm(kill)
        with Notifier.from_settings(settings) as notify:
            receipt = _order(notify, run_id, 0)
            assert killed.wait(60), "the worker never reached the provider"
            worker.start()
            status = receipt.wait(60)
            time.sleep(1.0)  # a late second copy would be in by now
        return status
    finally:
        worker.stop()
        cleanup(settings)


def _smtp(server: LoopbackSMTPServer) -> dict[str, Any]:
    return {"provider": "smtp", "host": server.host, "port": server.port, "timeout": 5}


def _copies(server: LoopbackSMTPServer, notification_id: str) -> int:
    return sum(1 for m in server.messages if m.message["X-Tenant-Notify-Id"] == notification_id)


def _ambiguous(status: Any, provider: str) -> None:
    assert status.state is DeliveryState.FAILED, status
    assert status.error_type == "AmbiguousDeliveryError", status
    assert f"stopped after handing the message to {provider}" in (status.error or ""), status


def test_a_worker_killed_after_the_final_dot_is_not_sent_again(smtp_server, folder):
    status = _kill_during(
        lambda kill: smtp_server.call_at_next("DATA", kill), _smtp(smtp_server), folder
    )
    # The redelivered copy found the dead attempt's hand-over: ambiguous, as a
    # connection dropped after the dot is, and not sent again.
    assert _copies(smtp_server, status.id) == 1
    _ambiguous(status, "smtp")


def test_with_retry_ambiguous_a_worker_killed_after_the_dot_is_sent_again(smtp_server, folder):
    status = _kill_during(
        lambda kill: smtp_server.call_at_next("DATA", kill),
        _smtp(smtp_server),
        folder,
        retry_ambiguous=True,
    )
    assert _copies(smtp_server, status.id) == 2  # the operator asked for it: once more
    assert status.state is DeliveryState.SENT, status


def test_a_worker_killed_before_the_final_dot_is_sent_once(smtp_server, folder):
    status = _kill_during(
        lambda kill: smtp_server.call_at_next("RCPT", kill), _smtp(smtp_server), folder
    )
    # No hand-over was recorded (the dot never went): resent, delivered once.
    assert _copies(smtp_server, status.id) == 1
    assert status.state is DeliveryState.SENT, status


@pytest.fixture
def sendgrid_api(services: None) -> Iterator[FakeProviderAPI]:
    with FakeProviderAPI() as api:
        api.sendgrid_keys.add(SENDGRID_KEY)
        yield api
        assert api.schema_errors == []


def _sendgrid(api: FakeProviderAPI) -> dict[str, Any]:
    return {"provider": "sendgrid", "api_key": SENDGRID_KEY, "base_url": api.url}


def test_a_worker_killed_after_its_http_request_went_out_is_not_sent_again(sendgrid_api, folder):
    status = _kill_during(sendgrid_api.call_at_next_request, _sendgrid(sendgrid_api), folder)
    assert len(sendgrid_api.requests) == 1
    _ambiguous(status, "sendgrid")


def test_with_retry_ambiguous_a_killed_http_request_is_sent_again(sendgrid_api, folder):
    status = _kill_during(
        sendgrid_api.call_at_next_request,
        _sendgrid(sendgrid_api),
        folder,
        retry_ambiguous=True,
    )
    assert len(sendgrid_api.requests) == 2
    assert status.state is DeliveryState.SENT, status
