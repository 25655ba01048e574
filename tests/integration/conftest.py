"""Fixtures for the integration tests: real RabbitMQ, Redis, Celery worker and SMTP.

Every test here needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and Redis on
127.0.0.1:6379. When one is not reachable the tests are skipped with the reason,
unless ``CI`` is set: then they fail, so a CI run cannot pass without them.

One worker process (``celery -A tenant_notify.celery_app worker``, concurrency 2)
serves the whole session, on a queue and a Redis key prefix (in DB 15) of its
own, delivering into one loopback SMTP server; both are removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.smtp_server import LoopbackSMTPServer

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/15"
ROOT = Path(__file__).resolve().parents[2]

TENANTS = {
    "acme": ("Acme Shop", "orders@acme.test"),
    "globex": ("Globex Café", "hello@globex.test"),
    "initech": ("Initech", "noreply@initech.test"),
}


def _problem() -> str | None:
    """Why the services cannot be used, or None when they can."""
    try:
        import kombu
        import redis
    except ModuleNotFoundError as err:
        return f"{err.name} is not installed (pip install '.[test]')"
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as err:
        return f"Redis is not reachable at 127.0.0.1:6379: {err}"
    try:
        with kombu.Connection(AMQP_URL, connect_timeout=2) as conn:
            conn.connect()
    except Exception as err:
        return f"RabbitMQ is not reachable at 127.0.0.1:5672: {type(err).__name__}: {err}"
    return None


@pytest.fixture(scope="session")
def services() -> None:
    """Skip (or, under CI, fail) when RabbitMQ or Redis is not reachable."""
    problem = _problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"integration services missing under CI: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def run_id(services: None) -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def smtp(services: None) -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer() as server:
        yield server


def settings_table(
    run_id: str, smtp_port: int, *, broker_url: str = AMQP_URL, **celery: Any
) -> dict[str, Any]:
    """The settings the worker and the test's notifiers share."""
    return {
        "transport": "celery",
        "email": {"provider": "smtp", "host": "127.0.0.1", "port": smtp_port, "timeout": 5},
        "sms": {"provider": "console"},
        "retry": {"initial_delay": 0.2, "max_delay": 1.0, "max_attempts": 3, "jitter": 0},
        "idempotency": {"lease": 12},
        "celery": {
            "broker_url": broker_url,
            "result_backend": REDIS_URL,
            "queue": f"tn_it_{run_id}",
            "dead_letter_queue": f"tn_it_{run_id}.dead",
            "soft_time_limit": 8,
            "time_limit": 10,
            "publish_timeout": 1.5,
            "connect_timeout": 0.5,
            **celery,
        },
        "redis": {"url": REDIS_URL, "key_prefix": f"tn_it:{run_id}:"},
        "tenants": {
            tenant_id: {"name": name, "email_from": sender}
            for tenant_id, (name, sender) in TENANTS.items()
        },
    }


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for settings_table (no arrays of tables)."""
    scalars, tables = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{key} = {_value(value)}")
    out = ([f"[{prefix[:-1]}]"] if prefix and scalars else []) + scalars
    for key, value in tables:
        out.append(_toml(value, f"{prefix}{key}."))
    return "\n".join(out)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Worker:
    """A real ``celery -A tenant_notify.celery_app worker`` process, restartable."""

    def __init__(
        self,
        config_file: Path,
        log_dir: Path,
        run_id: str,
        extra_env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
        library_worker: list[str] | None = None,
    ) -> None:
        self.config_file = config_file
        self.log_dir = log_dir
        self.run_id = run_id
        self.extra_env = extra_env or {}
        # A command the worker runs under (["prlimit", "--as=...", "--"]), if any.
        self.wrapper = wrapper or []
        # ``tenant-notify worker`` with these options instead of ``celery worker``.
        self.library_worker = library_worker
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"worker-{self.starts}.log"

    def start(self, timeout: float = 30.0) -> None:
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
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while self.log_file.read_bytes().count(ready) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                # Not left behind, still consuming, when the test gives up on it.
                self.stop()
                raise RuntimeError(f"the worker did not start:\n{self.log_file.read_text()}")
            time.sleep(0.05)

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

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture(scope="session")
def settings(run_id: str, smtp: LoopbackSMTPServer) -> dict[str, Any]:
    return settings_table(run_id, smtp.port)


@pytest.fixture(scope="session")
def worker(
    settings: dict[str, Any], run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    if shutil.which("pgrep") is None:
        pytest.skip("the pgrep command is needed to find the worker's pool processes")
    folder = tmp_path_factory.mktemp("worker")
    config_file = folder / "tenant-notify.toml"
    config_file.write_text(_toml(settings) + "\n", encoding="utf-8")
    handle = Worker(config_file, folder, run_id)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()
        _cleanup(settings)


def work_queues(settings: dict[str, Any]) -> list[str]:
    """Every queue the notifications of ``settings`` may wait in (one per tenant, ...)."""
    from tenant_notify import load_settings
    from tenant_notify.transports.celery.message import Routes

    return Routes.from_settings(load_settings(settings)).names()


def queued(settings: dict[str, Any]) -> int:
    """Messages waiting in all of those queues (a queue never declared holds none)."""
    import kombu

    total = 0
    with kombu.Connection(AMQP_URL, connect_timeout=2) as conn:
        for name in work_queues(settings):
            with contextlib.suppress(Exception):
                total += int(conn.channel().queue_declare(name, passive=True).message_count)
    return total


def _cleanup(settings: dict[str, Any]) -> None:
    import kombu
    import redis

    with kombu.Connection(AMQP_URL, connect_timeout=2) as conn:
        channel = conn.channel()
        for name in [*work_queues(settings), settings["celery"]["dead_letter_queue"]]:
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


class TcpProxy:
    """A TCP proxy on loopback that can be stopped (a broker outage) and started again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[Any] = []

    def start(self) -> TcpProxy:
        import threading

        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self.port = server.getsockname()[1]
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()
        return self

    def _accept(self, server: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Refuse new connections and cut the open ones, as a broker going down would."""
        if self._server is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would
            # leave the socket listening until that call returns.
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._sockets.clear()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy(("127.0.0.1", 5672)).start()
    yield p
    p.stop()
