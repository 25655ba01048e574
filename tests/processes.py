"""Worker processes for the tests and benchmarks that need a real one, and their clean-up.

:class:`Worker` runs ``celery -A tenant_notify.celery_app worker`` or the library's
own ``tenant-notify worker`` from a settings file, waits until it is ready, and
stops or kills it (its main process, or its whole process group when it was
started in a session of its own). :func:`toml` writes the settings tables the
tests build; :func:`cleanup` deletes a run's queues and Redis keys on the shared
services. Used by tests/integration/ (through its conftest), tests/faults.py and
bench/bench_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/15"


def toml(table: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for the tests' settings tables (no arrays of tables)."""
    scalars, tables = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{key} = {_value(value)}")
    out = ([f"[{prefix[:-1]}]"] if prefix and scalars else []) + scalars
    for key, value in tables:
        out.append(toml(value, f"{prefix}{key}."))
    return "\n".join(out)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cleanup(settings: dict[str, Any]) -> None:
    """Delete the run's queues and Redis keys (on the real services, not through a proxy)."""
    import kombu
    import redis

    from tenant_notify import load_settings
    from tenant_notify.transports.celery.message import Routes

    queues = [*Routes.from_settings(load_settings(settings)).names()]
    queues.append(settings["celery"]["dead_letter_queue"])
    with kombu.Connection(AMQP_URL, connect_timeout=2) as conn:
        channel = conn.channel()
        for name in queues:
            for delete in (channel.queue_delete, channel.exchange_delete):
                try:
                    delete(name)
                except Exception:
                    channel = conn.channel()
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=settings["redis"]["key_prefix"] + "*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


class Worker:
    """A real worker process from ``config_file``, restartable.

    ``celery -A tenant_notify.celery_app worker`` (two prefork processes) by
    default; with ``library_worker`` (its options, ``["-c", "2"]``) the library's
    ``tenant-notify worker``. With ``new_session`` it runs in a process group of
    its own, which :meth:`stop` and :meth:`kill_group` signal as a whole.
    """

    def __init__(
        self,
        config_file: Path,
        log_dir: Path,
        run_id: str,
        extra_env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
        library_worker: list[str] | None = None,
        *,
        new_session: bool = False,
        name: str = "worker",
    ) -> None:
        self.config_file = config_file
        self.log_dir = log_dir
        self.run_id = run_id
        self.extra_env = extra_env or {}
        # A command the worker runs under (["prlimit", "--as=...", "--"]), if any.
        self.wrapper = wrapper or []
        # ``tenant-notify worker`` with these options instead of ``celery worker``.
        self.library_worker = library_worker
        self.new_session = new_session
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self, timeout: float = 30.0) -> float:
        """Start it and wait until it is ready; return the monotonic time it was."""
        self.starts += 1
        env = dict(os.environ)
        env["TENANT_NOTIFY_CONFIG_FILE"] = str(self.config_file)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        env.pop("CELERY_BROKER_URL", None)
        env.pop("CELERY_RESULT_BACKEND", None)
        env.update(self.extra_env)
        if self.library_worker is not None:
            command = [*self.wrapper, sys.executable, "-m", "tenant_notify.cli", "worker"]
            command += [*self.library_worker, "--loglevel", "INFO"]
            ready, count = b"worker_ready", self._processes()
            timeout = max(timeout, 120.0)  # several processes, each connecting, on a busy machine
        else:
            command = [*self.wrapper, sys.executable, "-m", "celery", "-A"]
            command += ["tenant_notify.celery_app", "worker"]
            command += ["--concurrency", "2", "--loglevel", "INFO", "--without-mingle"]
            command += ["--without-gossip", "--hostname", f"tn-it-{self.run_id}-{self.starts}@%h"]
            ready, count = b" ready.", 1
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=self.new_session,
            )
        deadline = time.monotonic() + timeout
        while self.log_file.read_bytes().count(ready) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                # Not left behind, still consuming, when the test gives up on it.
                self.stop()
                raise RuntimeError(f"the worker did not start:\n{self.log_file.read_text()}")
            time.sleep(0.05)
        return time.monotonic()

    def _processes(self) -> int:
        options = self.library_worker or []
        for flag in ("-c", "--concurrency"):
            if flag in options:
                return int(options[options.index(flag) + 1])
        return os.cpu_count() or 1

    def children(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the main process, then wait until its pool processes are gone."""
        assert self.process is not None
        children = self.children()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            if time.monotonic() > deadline:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        self.process = None

    def kill_group(self) -> None:
        """SIGKILL the whole process group at once (an OOM kill, a lost node)."""
        assert self.process is not None and self.new_session
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + 10
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(5)
        self.process = None

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            if self.new_session:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def log(self) -> str:
        """Every log this worker (and any other in its folder) wrote."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
