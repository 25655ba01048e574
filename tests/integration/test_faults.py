"""The delivery ledger under infrastructure faults (issue 9's "Why"), end to end.

Each test runs a real ``tenant-notify worker``, the shared RabbitMQ and Redis
reached through a TCP proxy the test starts (tests/faults.py), and counts what the
loopback SMTP server received. A send that raises is retried with the same call
(same idempotency key), as the caller's contract says: nothing may be lost, and
nothing may arrive twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import Counts, run_fault
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
    assert counts.lost == 0 and counts.sent == COUNT, counts
    assert counts.recovery is not None and counts.recovery <= 30.0, counts
    # A second send only in the documented window: an attempt the kill caught after the
    # provider had accepted its message.
    assert counts.doubled_outside_window == 0, counts
    # And a copy sent again is the same message where it arrives: one Message-ID.
    assert counts.same_message_id == counts.doubled, counts
