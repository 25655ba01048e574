"""Send every template bomb through a real Notifier, each in a forked, memory-capped child.

Run as ``python -m tests.templates.bomb_runner TRANSPORT RENDER_TIMEOUT [NAME ...]``;
prints one JSON object per bomb: ``{"name", "state", "error_type", "error",
"seconds", "cpu_seconds", "growth_mb"}``. A child sends one ``bomb`` notification
of a tenant whose folder holds that bomb and waits for its final status;
``seconds`` is wall-clock time from the send to that status, ``cpu_seconds`` the
CPU time the child spent meanwhile (all its threads), ``growth_mb`` the child's peak resident memory
over what it had just before the send (``/proc/self/clear_refs`` resets the
peak). Its address space is capped (``RLIMIT_AS``) at 1 GiB over its size, so a
bomb that got through would fail the child rather than the machine.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tenant_notify.testing import make_notifier
from tests.templates.bombs import BOMBS

SAFETY_MARGIN = 1 << 30
CHILD_SECONDS = 60


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def cpu_seconds() -> float:
    """CPU time of this process, every thread (the render's, the caller's, the rest)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(
    name: str, files: dict[str, str], transport: str, render_timeout: float
) -> dict[str, Any]:
    # The child ends with os._exit(): the folder is removed by the parent.
    folder = Path(tempfile.mkdtemp(prefix=f"bomb-{name}-", dir=os.environ["BOMB_DIR"]))
    for relpath, source in files.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    notify = make_notifier(
        transport=transport,
        tenants={
            "evil": {"name": "Evil", "email_from": "e@evil.test", "templates_dir": str(folder)}
        },
        templates={"render_timeout": render_timeout},
        retry={"max_attempts": 1},
    )
    try:
        # Warm up what every send needs (imports, the built-in templates), so
        # the figure is the bomb's.
        notify.send(
            "welcome",
            tenant_id="evil",
            to="w@example.test",
            context={"user_email": "w@example.test", "user_name": "W"},
        ).wait(30)
        limit = status_kib("VmSize") * 1024 + SAFETY_MARGIN
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = status_kib("VmRSS")
        started, cpu_started = time.monotonic(), cpu_seconds()
        receipt = notify.send("bomb", tenant_id="evil", to="victim@example.test")
        status = receipt.wait(60)
        seconds = time.monotonic() - started
        cpu = cpu_seconds() - cpu_started
        growth = status_kib("VmHWM") - before
    finally:
        notify.close()
    return {
        "name": name,
        "state": status.state.value,
        "error_type": status.error_type,
        "error": (status.error or "")[:300],
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "growth_mb": round(growth / 1024, 1),
    }


def main(argv: list[str]) -> None:
    transport, render_timeout, *names = argv
    with tempfile.TemporaryDirectory(prefix="bombs-") as folder:
        os.environ["BOMB_DIR"] = folder
        for name in names or list(BOMBS):
            print(run_in_child(name, transport, render_timeout), flush=True)


def run_in_child(name: str, transport: str, render_timeout: str) -> str:
    """One bomb in a forked child; its result as a JSON line."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        signal.alarm(CHILD_SECONDS)  # whatever happens, the child ends
        try:
            result = run_one(name, BOMBS[name], transport, float(render_timeout))
        except BaseException as err:
            result = {"name": name, "state": "crashed", "error": f"{type(err).__name__}: {err}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read().decode()
    _, code = os.waitpid(pid, 0)
    return data or json.dumps({"name": name, "state": "died", "error": f"wait status {code}"})


if __name__ == "__main__":
    main(sys.argv[1:])
