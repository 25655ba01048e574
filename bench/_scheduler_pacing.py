"""The "429 with a reset 10 s ahead" scenario of bench/bench_scheduler.py.

A loopback SendGrid-shaped API accepts the first ``--pacing-warmup`` requests,
then answers every request with ``429`` and ``X-RateLimit-Reset`` set to the
same moment ``--pacing-window`` seconds ahead, and accepts everything after it.
``--pacing-notifications`` order confirmations are queued on RabbitMQ before the
workers start, so the window opens while both worker processes have a backlog.

Two variants, interleaved over ``--pacing-rounds`` rounds:

* the library: ``tenant-notify worker --concurrency 2`` (Redis for the stores,
  the limits and the pauses);
* the baseline: a hand-written Celery task (bench/_scheduler_pacing_app.py) on
  prefork ``-c 2`` that posts to the same API and, on a 429, retries itself
  after the reset the reply names, as the seed did.

Figures per variant and round: requests that reached the API during the window,
per worker process (each request's connection is traced back to the process that
holds it), notifications failed, and seconds from the window's end until the
last notification went out. The issue's bar: no notification failed, at most 2
attempts per worker process during the window.

An attempt *during the window* is a request that reached the API after the first
429 went out and before the reset: one sent when a worker could have known of the
limit. When it reached the API is the kernel's receive stamp on its first bytes
(``SO_TIMESTAMPNS``), not the moment this fake's handler thread got to it: the
fake is Python sharing two cores with the workers, and requests that arrived
before the window opened wait in its queue and are answered 429 inside the window.
Those are counted apart ("answered during the window", this scenario's count
before 2026-12-01), with, per process, the requests that arrived after the
process itself had been answered a 429.

The drain (seconds from the reset to the last notification sent) is the workers':
until the reset the fake looks up the process of each new connection before it
answers (the count needs it), after the reset its sampling thread does, so the
connections the workers open again after a 10 s pause (their idle ones expired)
are answered at once. Answering each only after a psutil scan had held the new
connections' first answers 0.1-6 s on a loaded machine, and with them the ramp
after the probe (one more call in flight per answer): 2-5 s of drain, not the
workers' ~1 s (the jitter the deferrals are spread over).

``run_pacing(args)`` is what bench_scheduler.py calls (``add_arguments`` adds
its options); ``python bench/_scheduler_pacing.py`` runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench_celery import _toml

ROOT = Path(__file__).resolve().parents[1]
AMQP = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
API_KEY = "SG.bench-pacing"
# Linux's SO_TIMESTAMPNS (the socket module does not name it): receive timestamps.
SO_TIMESTAMPNS = 35


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("provider throttling (429 with a reset)")
    group.add_argument("--pacing-notifications", type=int, default=200, metavar="N")
    group.add_argument("--pacing-window", type=float, default=10.0, metavar="SECONDS")
    group.add_argument("--pacing-warmup", type=int, default=20, metavar="REQUESTS")
    group.add_argument("--pacing-rounds", type=int, default=5, metavar="R")
    group.add_argument(
        "--pacing-library-only",
        action="store_true",
        help="skip the hand-written baseline (a look at the library, not a figure to publish)",
    )


class ThrottlingAPI:
    """SendGrid's send endpoint on loopback, throttling for one window."""

    def __init__(self, warmup: int, window: float) -> None:
        self.warmup = warmup
        self.window = window
        self.lock = threading.Lock()
        self.accepted = 0
        self.window_start: float | None = None
        self.window_end: float | None = None
        # (time answered, status, client port, time the request arrived)
        self.requests: list[tuple[float, int, int, float]] = []
        # When the first 429 went out, overall and on each client port.
        self.first_429: float | None = None
        self.first_429_by_port: dict[int, float] = {}
        self.tracer: _Tracer | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # The kernel stamps each segment as it arrives: the moment a request
                # reached the API, whenever this handler gets to read it.
                self.connection.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                if owner.tracer is not None:
                    owner.tracer.connected()

            def handle_one_request(self) -> None:
                self.arrived = _arrival(self.connection)
                super().handle_one_request()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                port = self.client_address[1]
                if owner.tracer is not None:
                    # Inline only until the reset: after it no request is counted, and
                    # a lookup per new connection held each answer 0.1-6 s on a loaded
                    # machine (the drain after the window measured that, not the workers).
                    owner.tracer.saw(
                        port, inline=owner.window_end is None or time.time() < owner.window_end
                    )
                status, headers = owner.answer(port, body, self.arrived)
                if status == 429:
                    # Before its first byte is written: a request that arrives after
                    # this could have been sent by a worker that read the 429.
                    owner.answered_429(port, time.time())
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                payload = b"" if status == 202 else b'{"errors":[{"message":"rate limited"}]}'
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        # A real API's listen backlog, not socketserver's 5: 64 threads connecting at
        # once on a loaded machine overflowed that, and the resets came back as
        # "failed after the request was sent" (AmbiguousDeliveryError, not retried):
        # the notifications this scenario once counted as failed.
        class Server(ThreadingHTTPServer):
            request_queue_size = 1024

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, port: int, body: bytes, arrived: float) -> tuple[int, dict[str, str]]:
        now = time.time()
        with self.lock:
            if self.window_start is None and self.accepted >= self.warmup:
                self.window_start, self.window_end = now, now + self.window
            throttled = self.window_start is not None and now < (self.window_end or 0)
            status = 429 if throttled else 202
            if not throttled:
                self.accepted += 1
            self.requests.append((now, status, port, arrived))
        if throttled:
            return 429, {"X-RateLimit-Reset": f"{self.window_end:.3f}"}
        return 202, {"X-Message-Id": uuid.uuid4().hex}

    def answered_429(self, port: int, at: float) -> None:
        with self.lock:
            if self.first_429 is None:
                self.first_429 = at
            self.first_429_by_port.setdefault(port, at)

    def in_window(self) -> list[tuple[float, int, int, float]]:
        start, end = self.window_start or 0.0, self.window_end or 0.0
        with self.lock:
            return [r for r in self.requests if start <= r[0] < end]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _arrival(sock: socket.socket) -> float:
    """When the next request's first bytes reached this host (the kernel's receive
    timestamp, peeked without reading); now, if the stamp is missing."""
    with contextlib.suppress(OSError):
        _, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(16), socket.MSG_PEEK)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                return seconds + nanoseconds / 1e9
    return time.time()


def _ports_by_pid(root_pid: int) -> dict[int, int]:
    """Client port -> pid, for every TCP connection of the worker tree."""
    import psutil

    ports: dict[int, int] = {}
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return ports
    for process in processes:
        with contextlib.suppress(psutil.Error):
            for conn in process.net_connections(kind="tcp"):
                if conn.laddr:
                    ports[conn.laddr.port] = process.pid
    return ports


class _Tracer:
    """Which worker process holds which connection: sampled while the run goes on,
    and looked up when a request comes on a connection not seen yet (while the
    request waits for its reply, its connection is surely open: one the library
    closes soon after, a call its gate stopped, is still traced)."""

    def __init__(self, root_pid: int, api: ThrottlingAPI) -> None:
        self.root_pid = root_pid
        self.ports: dict[int, int] = {}
        self._lock = threading.Lock()
        self._new = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        api.tracer = self

    def connected(self) -> None:
        """A connection was accepted: look it up soon, off the handler's thread."""
        self._new.set()

    def saw(self, port: int, *, inline: bool = True) -> None:
        """A request came on ``port``: make sure its process is known, now (the
        caller waits for the lookup) or soon (the sampling thread looks it up)."""
        if port not in self.ports:
            if inline:
                self._refresh()
            else:
                self._new.set()

    def _refresh(self) -> None:
        with self._lock:
            self.ports.update(_ports_by_pid(self.root_pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._new.wait(0.2)
            self._new.clear()
            self._refresh()

    def stop(self) -> None:
        self._refresh()
        self._stop.set()
        self._thread.join(5)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _cleanup(queues: list[str], key_prefix: str | None) -> None:
    import kombu
    import redis

    with kombu.Connection(AMQP) as conn:
        for name in queues:
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)
            with contextlib.suppress(Exception):
                conn.channel().exchange_delete(name)
    if key_prefix:
        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])


def _library(api: ThrottlingAPI, n: int, folder: Path) -> dict[str, Any]:
    from tenant_notify import DeliveryState, Notifier

    run = uuid.uuid4().hex[:8]
    queue = f"bench_pacing_{run}"
    prefix = f"bench_pacing:{run}:"
    settings: dict[str, Any] = {
        "transport": "celery",
        "email": {"provider": "sendgrid", "api_key": API_KEY, "base_url": api.url},
        "celery": {"broker_url": AMQP, "queue": queue, "dead_letter_queue": f"{queue}.dead"},
        "redis": {"url": REDIS, "key_prefix": prefix},
        "tenants": {
            "acme": {"name": "Acme Shop", "email_from": "Acme Shop <orders@acme.test>"},
            "globex": {"name": "Globex Café", "email_from": "hello@globex.test"},
        },
    }
    config = folder / f"{queue}.toml"
    config.write_text(_toml(settings))
    worker: subprocess.Popen[bytes] | None = None
    announced = _Announcements(f"{prefix}pace:announce")
    try:
        with Notifier.from_settings(settings) as notify:
            receipts = [
                notify.send_email(
                    to_email=f"user{i}@example.com",
                    subject=f"Order {i}",
                    body="Thank you for your order.",
                    tenant_id=("acme", "globex")[i % 2],
                )
                for i in range(n)
            ]
            notify.transport.flush(30)
            env = dict(os.environ, TENANT_NOTIFY_CONFIG_FILE=str(config))
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
            log = (folder / f"{queue}.log").open("wb")
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tenant_notify.cli",
                    "worker",
                    "--concurrency",
                    "2",
                    "--loglevel",
                    "WARNING",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            tracer = _Tracer(worker.pid, api)
            final = {DeliveryState.SENT, DeliveryState.FAILED}

            def settled() -> bool:
                return all(
                    (s := notify.status_store.get(r.id)) is not None and s.state in final
                    for r in receipts
                )

            _wait(settled, 300, "the library's notifications to settle")
            tracer.stop()
            statuses = [notify.status_store.get(r.id) for r in receipts]
        failures = [s for s in statuses if s is not None and s.state is DeliveryState.FAILED]
        last = max(s.updated_at.timestamp() for s in statuses if s is not None)
        why: dict[str, int] = {}
        for s in failures:
            reason = f"{s.error_type} after {s.attempts} attempts: {s.error}"
            why[reason] = why.get(reason, 0) + 1
        return {
            "failed": len(failures),
            "why_failed": why,
            "last_sent": last,
            "ports": tracer.ports,
            "pid": worker.pid,
            "pause_announced": announced.first_pause,
        }
    finally:
        announced.stop()
        if worker is not None:
            _stop(worker)
        _cleanup([queue, f"{queue}.dead"], prefix)


class _Announcements:
    """When the workers' first pause announcement (Redis pub/sub) went out."""

    def __init__(self, channel: str) -> None:
        import redis

        self.first_pause: float | None = None
        self._pubsub = redis.Redis.from_url(REDIS).pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.first_pause is None:
            message = self._pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            data = message.get("data")
            text = data.decode() if isinstance(data, bytes) else str(data)
            if text.startswith("pause "):
                self.first_pause = time.time()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(Exception):
            self._pubsub.close()


def _baseline(api: ThrottlingAPI, n: int, folder: Path) -> dict[str, Any]:
    import kombu

    run = uuid.uuid4().hex[:8]
    queue = f"bench_pacing_hand_{run}"
    env = dict(os.environ, BENCH_QUEUE=queue, BENCH_BROKER_URL=AMQP, BENCH_API_URL=api.url)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), env.get("PYTHONPATH", "")])
    sys.path.insert(0, str(ROOT / "bench"))
    os.environ.update(BENCH_QUEUE=queue, BENCH_BROKER_URL=AMQP, BENCH_API_URL=api.url)
    import _scheduler_pacing_app as hand

    hand.app.conf.task_default_queue = queue
    hand.app.conf.broker_url = AMQP
    worker: subprocess.Popen[bytes] | None = None
    try:
        for i in range(n):
            hand.send.apply_async((i,), queue=queue)
        log = (folder / f"{queue}.log").open("wb")
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "_scheduler_pacing_app",
                "worker",
                "-c",
                "2",
                "-Q",
                queue,
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        tracer = _Tracer(worker.pid, api)

        # Done when every message went out, or when the queue stayed empty (a task
        # that gave up is acked too): whatever never got a 202 failed.
        idle_since: float | None = None
        deadline = time.monotonic() + 300
        with kombu.Connection(AMQP) as conn:
            while time.monotonic() < deadline:
                with api.lock:
                    if api.accepted >= n:
                        break
                waiting = conn.channel().queue_declare(queue, passive=True).message_count
                if waiting == 0 and worker_idle(api):
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 15:
                        break
                else:
                    idle_since = None
                time.sleep(0.1)
        tracer.stop()
        with api.lock:
            delivered = api.accepted  # the warm-up's are notifications too
            last = max(r[0] for r in api.requests if r[1] == 202)
        return {
            "failed": n - delivered,
            "last_sent": last,
            "ports": tracer.ports,
            "pid": worker.pid,
        }
    finally:
        if worker is not None:
            _stop(worker)
        _cleanup([queue], None)


def worker_idle(api: ThrottlingAPI, quiet: float = 5.0) -> bool:
    """No request reached the API for ``quiet`` seconds."""
    with api.lock:
        return not api.requests or time.time() - api.requests[-1][0] > quiet


LIBRARY = "`tenant-notify worker -c 2` (pause shared through Redis)"
BASELINE = "hand-written Celery task, prefork `-c 2`, retries itself after the reset"


def _one(variant: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    n = args.pacing_notifications
    api = ThrottlingAPI(args.pacing_warmup, args.pacing_window)
    try:
        run = _library if variant == LIBRARY else _baseline
        result = run(api, n, folder)
        figures = _count(api, result["ports"])
        announced, opened = result.get("pause_announced"), api.first_429
        if announced is not None and opened is not None:
            figures["pause_announced_ms"] = round((announced - opened) * 1000, 1)
        return {
            "variant": variant,
            **figures,
            "failed": result["failed"],
            "why_failed": result.get("why_failed", {}),
            "drained_after_window_s": round(result["last_sent"] - (api.window_end or 0.0), 2),
            "accepted": api.accepted,
        }
    finally:
        api.close()


def _count(api: ThrottlingAPI, ports: dict[int, int]) -> dict[str, Any]:
    """What reached the API during the window, per worker process.

    The window opens when the first 429 is answered and ends at the reset. An
    attempt *during the window* is a request that reached the API (the kernel's
    receive stamp) after that first 429 went out and before the reset: one made
    when a worker could have known of the limit. A request that had arrived
    before, and only waited in this fake's queue for its turn to be answered (with
    a 429 all the same), was on its way before anything could be known; it is
    counted apart ("answered during the window"), as this scenario counted
    everything before.
    """

    def process(port: int) -> str:
        pid = ports.get(port)
        return str(pid) if pid is not None else "unknown"

    with api.lock:
        requests = list(api.requests)
        opened = api.first_429
        first_by_port = dict(api.first_429_by_port)
    end = api.window_end or 0.0
    # When each process was first answered a 429 (on any of its connections).
    first_by_process: dict[str, float] = {}
    for port, at in first_by_port.items():
        key = process(port)
        first_by_process[key] = min(at, first_by_process.get(key, at))
    answered: dict[str, int] = {}  # answered during the window (this scenario's old count)
    during: dict[str, int] = {}  # reached the API during the window
    after_own: dict[str, int] = {}  # ... and after their process had been answered a 429
    offsets: dict[str, list[int]] = {}
    for at, _status, port, arrived in requests:
        key = process(port)
        if api.window_start is not None and api.window_start <= at < end:
            answered[key] = answered.get(key, 0) + 1
        if opened is None or not opened <= arrived < end:
            continue
        during[key] = during.get(key, 0) + 1
        offsets.setdefault(key, []).append(round((arrived - opened) * 1000, 1))
        if arrived >= first_by_process.get(key, end):
            after_own[key] = after_own.get(key, 0) + 1
    return {
        "attempts_in_window": sum(during.values()),
        "attempts_per_process": during,
        "max_per_process": max(during.values(), default=0),
        "ms_into_window": {key: sorted(values) for key, values in offsets.items()},
        "max_after_own_429": max(after_own.values(), default=0),
        "answered_in_window": sum(answered.values()),
        "max_answered_per_process": max(answered.values(), default=0),
        "answered_per_process": answered,
    }


def run_pacing(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario; return the figures and a markdown section."""
    rounds: list[dict[str, Any]] = []
    load = []
    with tempfile.TemporaryDirectory(prefix="tn-bench-pacing-") as tmp:
        folder = Path(tmp)
        for r in range(args.pacing_rounds):
            order = [LIBRARY, BASELINE] if r % 2 == 0 else [BASELINE, LIBRARY]
            if getattr(args, "pacing_library_only", False):
                order = [LIBRARY]
            for variant in order:
                load.append(os.getloadavg()[0])
                result = _one(variant, args, folder)
                result["round"] = r + 1
                rounds.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    from _harness import command_line, git_commit

    markdown = f"`{command_line()}` at {git_commit()}:\n\n{_markdown(args, rounds, load)}"
    return {"rounds": rounds, "markdown": markdown, "load": load}


def _range(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def _markdown(args: argparse.Namespace, rounds: list[dict[str, Any]], load: list[float]) -> str:
    lines = [
        f"A SendGrid-shaped API on loopback answers 429 with `X-RateLimit-Reset` "
        f"{args.pacing_window:g} s ahead after {args.pacing_warmup} accepted requests; "
        f"{args.pacing_notifications} order confirmations wait in the queue. "
        f"{args.pacing_rounds} rounds, the variants interleaved; ranges over the rounds; "
        f"1-minute load average {_range([round(x, 1) for x in load])} on 2 cores. "
        "*During the window*: reached the API (kernel receive stamp) after the first 429 "
        "went out and before the reset; *answered during the window*: every request the API "
        "answered then, with those that had arrived before it opened and waited in its queue.",
        "",
        "| Variant | Requests during the window | Most by one worker process "
        "| Of those, most after its process was answered a 429 "
        "| Answered during the window (most by one process) "
        "| Notifications failed | Last sent, s after the window |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in (LIBRARY, BASELINE):
        mine = [r for r in rounds if r["variant"] == variant]
        if not mine:
            continue
        lines.append(
            f"| {variant} | {_range([r['attempts_in_window'] for r in mine])} "
            f"| {_range([r['max_per_process'] for r in mine])} "
            f"| {_range([r['max_after_own_429'] for r in mine])} "
            f"| {_range([r['answered_in_window'] for r in mine])} "
            f"({_range([r['max_answered_per_process'] for r in mine])}) "
            f"| {_range([r['failed'] for r in mine])} "
            f"| {_range([r['drained_after_window_s'] for r in mine])} |"
        )
    announced = [r["pause_announced_ms"] for r in rounds if "pause_announced_ms" in r]
    if announced:
        lines += [
            "",
            f"The library's pause was announced on Redis {_range(announced)} ms after the "
            "first 429 went out.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from _harness import publish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument(
        "--no-write", dest="write", action="store_false", help="leave docs/benchmarks.md alone"
    )
    args = parser.parse_args()
    publish("scheduler-pacing", run_pacing(args)["markdown"], write=args.write)


if __name__ == "__main__":
    main()
