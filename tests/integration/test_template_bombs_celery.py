"""Every template bomb, sent through a real Celery worker, ends ``failed`` with a limit error.

A worker of its own (``celery -A tenant_notify.celery_app worker``, two prefork
processes, a queue and a Redis key prefix of this run) runs under
``prlimit --as`` so that a bomb getting through would fail the worker, not the
machine. One tenant per bomb, its folder holding that bomb as the kind
``bomb``. The bombs go one at a time; for each, the memory growth is the
largest of the pool processes' peak resident memory (reset through
``/proc/<pid>/clear_refs`` just before the send) over what they held then.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenant_notify import Notifier
from tests.integration.conftest import Worker, _cleanup, _toml, settings_table
from tests.smtp_server import LoopbackSMTPServer
from tests.templates.bombs import BOMBS
from tests.templates.test_bombs import (
    MAX_CPU_SECONDS,
    MAX_GROWTH_MB,
    MAX_SECONDS,
    RENDER_TIMEOUT,
)

pytestmark = pytest.mark.integration

ADDRESS_SPACE = 3 << 30  # per worker process; a Celery pool process takes about 0.5 GiB


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def bomb_settings(
    run_id: str, smtp: LoopbackSMTPServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bombs")
    tenants = {}
    for name, files in BOMBS.items():
        for relpath, source in files.items():
            path = root / name / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source, encoding="utf-8")
        tenants[name.replace("_", "-")] = {
            "name": name,
            "email_from": "bomb@evil.test",
            "templates_dir": str(root / name),
        }
    settings = settings_table(f"{run_id}b", smtp.port)
    settings["tenants"] = tenants
    settings["templates"] = {"render_timeout": RENDER_TIMEOUT}
    settings["retry"] = {"max_attempts": 1}
    # One queue for all 79 tenants: what is measured is rendering, not fairness,
    # and a worker declaring a queue per tenant starts slowly on a loaded machine.
    settings["celery"] = {**settings.get("celery", {}), "fair": False}
    return settings


@pytest.fixture(scope="module")
def bomb_worker(
    bomb_settings: dict[str, Any], run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    folder = tmp_path_factory.mktemp("bomb-worker")
    config_file = folder / "tenant-notify.toml"
    config_file.write_text(_toml(bomb_settings) + "\n", encoding="utf-8")
    handle = Worker(
        config_file, folder, f"{run_id}b", wrapper=["prlimit", f"--as={ADDRESS_SPACE}", "--"]
    )
    handle.start(timeout=180)  # waits for "ready", no longer on an idle machine
    try:
        yield handle
    finally:
        handle.stop()
        _cleanup(bomb_settings)


@pytest.fixture(scope="module")
def outcomes(bomb_settings: dict[str, Any], bomb_worker: Worker) -> dict[str, dict[str, Any]]:
    results = {}
    with Notifier.from_settings(bomb_settings) as notify:
        # Warm the pool processes up (imports, built-in templates) for both.
        for i in range(4):
            notify.send_welcome_email(
                user_email=f"warm{i}@example.test", user_name="W", tenant_id="macro-capture"
            ).wait(30)
        for name in BOMBS:
            pool = bomb_worker.children()
            for pid in pool:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            before = {pid: status_kib(pid, "VmRSS") for pid in pool}
            cpu_before = sum(cpu_seconds(pid) for pid in pool)
            started = time.monotonic()
            receipt = notify.send(
                "bomb", tenant_id=name.replace("_", "-"), to="victim@example.test"
            )
            status = receipt.wait(60)
            seconds = time.monotonic() - started
            cpu = sum(cpu_seconds(pid) for pid in pool) - cpu_before
            growth = max(status_kib(pid, "VmHWM") - before[pid] for pid in pool) / 1024
            results[name] = {
                "state": status.state.value,
                "error_type": status.error_type,
                "error": status.error,
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu, 3),
                "growth_mb": round(growth, 1),
                "pool": pool,
            }
        assert bomb_worker.children() == pool, "a pool process died on the way"
    # The figures for the record (pytest -s shows them).
    slowest = max(r["seconds"] for r in results.values())
    most_cpu = max(r["cpu_seconds"] for r in results.values())
    largest = max(r["growth_mb"] for r in results.values())
    print(
        f"\n{len(results)} bombs on celery: slowest {slowest} s, most CPU {most_cpu} s,"
        f" largest growth {largest} MB"
    )
    return results


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_fails_on_a_celery_worker_in_time_and_memory(
    outcomes: dict[str, dict[str, Any]], name: str
) -> None:
    outcome = outcomes[name]
    assert (outcome["state"], outcome["error_type"]) == ("failed", "TemplateLimitError"), outcome
    assert outcome["cpu_seconds"] < MAX_CPU_SECONDS, outcome
    assert outcome["seconds"] < MAX_SECONDS, outcome
    assert outcome["growth_mb"] < MAX_GROWTH_MB, outcome
