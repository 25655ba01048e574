"""``tenant-notify worker`` end to end: deliveries at once, tenants in turn, urgent first, crashes.

A real worker (two processes) on RabbitMQ and Redis delivers to a loopback
Postmark API; what the server saw (requests answered at the same moment, order
of arrival, each notification's count) is the evidence, never a timing.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenant_notify import DeliveryState, Notifier
from tests.http_fakes import FakeProviderAPI, postmark_error
from tests.integration.conftest import Worker, _cleanup, _toml, settings_table

pytestmark = pytest.mark.integration

TOKEN = "pm-fair-token"
PROCESSES, THREADS = 2, 4


@pytest.fixture(scope="module")
def api(services: None) -> Iterator[FakeProviderAPI]:
    with FakeProviderAPI() as server:
        server.postmark_tokens.add(TOKEN)
        yield server


@pytest.fixture(scope="module")
def fair_settings(run_id: str, api: FakeProviderAPI) -> Iterator[dict[str, Any]]:
    table = settings_table(f"{run_id}f", 9)
    table["email"] = {"provider": "postmark", "server_token": TOKEN, "base_url": api.url}
    table["kinds"] = {"welcome": {"urgent": True}}
    yield table
    _cleanup(table)


@pytest.fixture(scope="module")
def fair_worker(
    fair_settings: dict[str, Any], run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    folder: Path = tmp_path_factory.mktemp("fair-worker")
    config_file = folder / "tenant-notify.toml"
    config_file.write_text(_toml(fair_settings) + "\n", encoding="utf-8")
    options = ["-c", str(PROCESSES), "--threads", str(THREADS)]
    handle = Worker(config_file, folder, f"{run_id}f", library_worker=options)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def notify(fair_settings: dict[str, Any], api: FakeProviderAPI) -> Iterator[Notifier]:
    api.clear()
    api.latency, api.hold_until = 0.0, 0
    with Notifier.from_settings(fair_settings) as notifier:
        yield notifier
    api.latency, api.hold_until = 0.0, 0


def send(notify: Notifier, tenant: str, count: int, tag: str) -> list[str]:
    return [
        notify.send_email(
            to_email=f"{tag}{i}@example.com", subject="s", body="b", tenant_id=tenant
        ).id
        for i in range(count)
    ]


def arrivals(api: FakeProviderAPI) -> list[str]:
    return [request.json["To"] for request in api.requests]


def wait_for(api: FakeProviderAPI, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(api.requests) < count:
        assert time.monotonic() < deadline, f"{len(api.requests)} of {count} arrived"
        time.sleep(0.05)


def queue_first(notify: Notifier, worker: Worker, *sends: tuple[str, int, str]) -> None:
    """Queue everything with the worker stopped, then start it: a backlog for sure."""
    worker.stop()
    for tenant, count, tag in sends:
        send(notify, tenant, count, tag)
    assert notify.transport.flush(10)
    worker.start()


def test_each_process_delivers_threads_at_once(notify, api, fair_worker):
    api.hold_until = PROCESSES * THREADS  # no reply until that many are open at once
    ids = send(notify, "acme", 3 * PROCESSES * THREADS, "c")
    for notification_id in ids:
        assert notify.wait(notification_id, 60).state is DeliveryState.SENT
    assert api.max_in_flight == PROCESSES * THREADS


def test_a_tenant_behind_a_backlog_is_delivered_before_the_backlog_ends(notify, api, fair_worker):
    api.latency = 0.01
    queue_first(notify, fair_worker, ("acme", 300, "a"), ("globex", 20, "b"))
    wait_for(api, 320)
    order = ["acme" if "acme.test" in r.json["From"] else "globex" for r in api.requests]
    last_b = max(i for i, who in enumerate(order) if who == "globex")
    # FIFO would put B's twenty after A's three hundred; in turn they are done within
    # about forty deliveries (more on a loaded machine, where a process's few messages of
    # B wait for acknowledgements to be refilled), with most of A's backlog still to go.
    assert last_b < 120, "".join(who[0] for who in order[:160])
    assert order[last_b + 1 :].count("acme") > 180


def test_urgent_kinds_go_ahead_of_their_tenants_bulk(notify, api, fair_worker):
    # Arrivals are counted at the API: the urgent welcome email is the first of its
    # template in a fresh process (compiled then), so with very fast answers the
    # bulk's plain emails overtook it there while it was rendering (19 of them once,
    # at load 20). 50 ms answers keep that to a few; FIFO still puts it last.
    api.latency = 0.05
    fair_worker.stop()
    send(notify, "acme", 200, "bulk")
    urgent = notify.send_welcome_email(
        user_email="urgent@example.com", user_name="U", tenant_id="acme"
    )
    assert notify.transport.flush(10)
    fair_worker.start()
    assert urgent.wait(60).state is DeliveryState.SENT
    wait_for(api, 201)
    position = next(i for i, to in enumerate(arrivals(api)) if "urgent@" in to)
    # Behind at most what the processes had taken of the bulk before it came up.
    assert position < 2 * PROCESSES * THREADS + 2


def test_a_retry_waits_in_the_deferred_queue_and_is_delivered(notify, api, fair_worker):
    api.script(postmark_error(503, 0, "Service Unavailable"))  # the first attempt: transient
    [notification_id] = send(notify, "globex", 1, "retry")
    status = notify.wait(notification_id, 60)
    assert status.state is DeliveryState.SENT
    assert status.attempts == 2
    assert len(api.requests) == 2


def test_a_429_pauses_every_process_and_fails_nothing(notify, api, fair_worker):
    # Two throttled replies, then normal ones; a retry policy of one attempt would
    # fail both if a throttling spent an attempt.
    for _ in range(2):
        reply = postmark_error(429, 0, "Rate limit exceeded")
        reply.headers["Retry-After"] = "2"
        api.script(reply)
    first = send(notify, "acme", 1, "pace")
    deadline = time.monotonic() + 30
    while not notify.dispatcher.pacing.pauses():  # the pause, in Redis for every process
        assert time.monotonic() < deadline, "the 429 paused no account"
        time.sleep(0.02)
    later = send(notify, "acme", 6, "pacea") + send(notify, "globex", 6, "paceg")
    statuses = [notify.wait(notification_id, 60) for notification_id in first + later]
    assert [s.state for s in statuses] == [DeliveryState.SENT] * 13
    # None spent an attempt on the pause: not the one that met the limit, nor those
    # behind it, in either worker process.
    assert {s.attempts for s in statuses} == {1}
    throttled, *rest = api.requests
    offsets = [round(r.at - throttled.at, 3) for r in rest]
    # Nothing went to the API until the pause was over (the notifications sent
    # meanwhile waited in both processes); then one call alone, the probe, which
    # met the limit again; the rest after that second pause.
    assert len(rest) == 14, offsets
    assert all(offset >= 1.9 for offset in offsets), offsets
    assert len([offset for offset in offsets if offset < 3.9]) == 1, offsets


def test_killed_worker_loses_nothing_and_doubles_nothing(notify, api, fair_worker):
    api.latency = 0.05
    queue_first(notify, fair_worker, ("acme", 200, "ka"), ("globex", 200, "kg"))
    wait_for(api, 60)
    fair_worker.kill()  # SIGKILL of the parent, deliveries in hand and messages reserved
    killed_at = len(api.requests)
    assert killed_at < 400, "the worker finished before it could be killed"
    fair_worker.start()
    wait_for(api, 400)
    deadline = time.monotonic() + 2  # stragglers that would be doubles
    while time.monotonic() < deadline:
        time.sleep(0.2)
    counts = collections.Counter(arrivals(api))
    assert len(counts) == 400
    assert {to: n for to, n in counts.items() if n != 1} == {}


def test_backlog_command_lists_each_tenants_waiting_notifications(notify, api, fair_worker, capsys):
    from tenant_notify.cli import main

    def backlog() -> dict[str, list[str]]:
        assert main(["backlog", "--config", str(fair_worker.config_file)]) == 0
        lines = capsys.readouterr().out.splitlines()[2:]
        return {line.split()[0]: line.split() for line in lines if line.strip()}

    fair_worker.stop()
    try:
        before = backlog()  # what an earlier test may have left
        send(notify, "acme", 3, "bl-a")
        send(notify, "globex", 2, "bl-g")
        assert notify.transport.flush(10)
        rows = backlog()
    finally:
        fair_worker.start()
    assert int(rows["acme"][2]) - int(before["acme"][2]) == 3
    assert int(rows["globex"][2]) - int(before["globex"][2]) == 2
    assert rows["acme"][4].endswith("s")  # how long its head has waited
    if before["initech"][2] == "0":
        assert rows["initech"][2] == "0" and rows["initech"][4] == "-"
    wait_for(api, 5)
