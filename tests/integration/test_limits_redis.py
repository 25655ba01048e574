"""Tenant limits counted in Redis: two processes share one daily cap.

Two sending processes (Celery transport, real RabbitMQ and Redis, a queue and a
key prefix of this run, no worker) send for the same tenant at the same time.
Together they get exactly ``email_daily`` receipts; every other send raises
RateLimitedError at the call, and nothing of those is queued: the queue holds
exactly the accepted messages and Redis holds exactly their statuses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import REDIS_URL, ROOT, _cleanup, queued, settings_table

pytestmark = pytest.mark.integration

CAP = 25
PER_PROCESS = 30


@pytest.fixture
def limited_settings(run_id: str, smtp: Any) -> Iterator[dict[str, Any]]:
    settings = settings_table(f"{run_id}lim", smtp.port)
    settings["limits"] = {"email_daily": CAP, "on_limit": "raise"}
    yield settings
    _cleanup(settings)  # its queues (the tenants' included) and keys


def test_two_processes_share_the_daily_cap_and_queue_nothing_over_it(
    limited_settings: dict[str, Any], tmp_path: Path
) -> None:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(limited_settings))
    go = tmp_path / "go"
    senders = [
        subprocess.Popen(
            [
                sys.executable,
                *("-m", "tests.integration.limits_sender"),
                *(str(settings_file), str(go), str(PER_PROCESS)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for sender in senders:  # both built and connected before either sends
            assert sender.stdout is not None
            assert json.loads(sender.stdout.readline()) == {"ready": True}
        go.touch()
        results = []
        for sender in senders:
            out, _ = sender.communicate(timeout=120)
            assert sender.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
                sender.wait(10)

    accepted = [nid for result in results for nid in result["accepted"]]
    refused = [entry for result in results for entry in result["refused"]]
    assert len(accepted) == CAP
    assert len(refused) == 2 * PER_PROCESS - CAP
    # Both processes were refused by the one shared count, not each by its own.
    assert all(result["accepted"] for result in results)
    assert {entry["limit"] for entry in refused} == {"email_daily"}
    assert all(0 < float(entry["retry_after"]) <= 86_400 for entry in refused)
    deadline = time.monotonic() + 20
    while queued(limited_settings) < CAP and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queued(limited_settings) == CAP
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        prefix = limited_settings["redis"]["key_prefix"]
        statuses = {
            key.removeprefix(f"{prefix}status:") for key in client.scan_iter(f"{prefix}status:*")
        }
    finally:
        client.close()
    assert statuses == set(accepted)
