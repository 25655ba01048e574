"""The canaries through a real Celery worker: nothing in its log, the statuses it
writes to Redis, the headers of the dead letter it publishes, or ``replay --list``.

A worker of its own (queue and key prefix of this run) delivers through SMTP with
a numeric password (TOML ``password = 73915824``) to a loopback server that
refuses the AUTH echoing it, and, for a second tenant without AUTH, refuses the
recipient quoting it. Both notifications fail, are dead-lettered, and are read
back from the dead-letter queue as they are.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest

from tenant_notify import DeliveryState, Notifier
from tests.canary import CANARY_NUMBER, CANARY_SECRET, CANARY_TO, Exits
from tests.integration.conftest import AMQP_URL, ROOT, Worker, _cleanup, _toml, settings_table
from tests.smtp_server import LoopbackSMTPServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[LoopbackSMTPServer, LoopbackSMTPServer]]:
    with LoopbackSMTPServer(auth=("app", "the-right-one")) as auth, LoopbackSMTPServer() as plain:
        auth.auth_failure_reply = "535 5.7.8 password {password} of {login} is wrong"
        plain.reject_recipient(CANARY_TO, f"550 5.1.1 <{CANARY_TO}> unknown ({CANARY_SECRET})")
        yield auth, plain


@pytest.fixture(scope="module")
def canary_settings(run_id: str, servers: Any) -> Iterator[dict[str, Any]]:
    auth, plain = servers
    settings = settings_table(f"{run_id}c", auth.port)
    settings["retry"] = {"max_attempts": 1}
    settings["email"].update(username="app", password=CANARY_NUMBER)
    settings["tenants"] = {
        "acme": {"name": "Acme", "email_from": "orders@acme.test"},
        "globex": {
            "name": "Globex",
            "email_from": "hello@globex.test",
            "email": {"host": "127.0.0.1", "port": plain.port, "username": "", "password": ""},
        },
    }
    yield settings
    _cleanup(settings)


@pytest.fixture(scope="module")
def canary_worker(
    canary_settings: dict[str, Any], run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Worker, Path]]:
    folder = tmp_path_factory.mktemp("canary-worker")
    config_file = folder / "tenant-notify.toml"
    config_file.write_text(_toml(canary_settings) + "\n", encoding="utf-8")
    handle = Worker(config_file, folder, f"{run_id}c")
    handle.start()
    try:
        yield handle, config_file
    finally:
        handle.stop()


def dead_letter_headers(settings: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The headers of the dead letters, read without taking them off the queue."""
    with kombu.Connection(AMQP_URL, connect_timeout=2) as conn:
        channel = conn.channel()
        queue = kombu.Queue(settings["celery"]["dead_letter_queue"], channel=channel)
        deadline = time.monotonic() + 15  # published after the final status
        while queue.queue_declare(passive=True).message_count < count:
            assert time.monotonic() < deadline, "the dead letters did not arrive"
            time.sleep(0.1)
        messages = [queue.get(no_ack=False) for _ in range(count)]
        headers = [dict(m.headers) for m in messages if m is not None]
        channel.close()  # unacknowledged: they go back
    return headers


def test_nothing_a_celery_worker_lets_out_holds_a_canary(canary_settings, canary_worker) -> None:
    worker, config_file = canary_worker
    exits = Exits()
    with exits.watching_logs(), Notifier.from_settings(canary_settings) as notify:
        for tenant in ("acme", "globex"):
            receipt = notify.send_welcome_email(
                user_email=CANARY_TO, user_name="C", tenant_id=tenant
            )
            status = receipt.wait(30)
            assert status.state is DeliveryState.FAILED, status
            exits.add_status(status)
    headers = dead_letter_headers(canary_settings, 2)
    assert len(headers) == 2
    exits.add("dead-letter headers", repr(headers))
    exits.add("worker log", worker.log())
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tenant_notify.cli",
            "replay",
            "--list",
            "--config",
            str(config_file),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert "2 notification(s) dead-lettered" in listed.stdout, listed.stdout + listed.stderr
    exits.add("tenant-notify replay --list", listed.stdout + listed.stderr)
    exits.assert_clean()
