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
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# Re-exported: the test modules take them from here.
from tests.processes import AMQP_URL, REDIS_URL, ROOT, Worker  # noqa: F401
from tests.processes import cleanup as _cleanup
from tests.processes import toml as _toml
from tests.smtp_server import LoopbackSMTPServer

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
