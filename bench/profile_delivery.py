"""Where a delivery's CPU goes: py-spy over the in-process path or a draining Celery worker.

Run: ``python bench/profile_delivery.py inprocess`` or ``... worker`` (needs the ``bench``
extra, which brings py-spy; ``worker`` needs RabbitMQ and Redis on loopback).
Prints the share of samples (py-spy ``--gil``: only threads holding the interpreter lock,
so waiting on sockets is not counted) per part of the pipeline, most first:

* ``inprocess``: bench/bench_inprocess.py's library round (two worker threads, order
  confirmations into the counting SMTP sink), the caller's thread included;
* ``worker``: ``tenant-notify worker -c 2`` (the library's consumer: two processes of
  delivery threads) draining a queue filled beforehand, every process of its tree;
  ``--celery`` runs it as Celery's own worker (the main process, which talks to the
  broker and the pool, and the pool processes, which deliver); ``--events`` turns
  task events on, ``--empty`` drains the hand-written empty task instead (Celery's
  own cost per task), ``--http`` delivers to bench/http_sink.py's Postmark-shaped API
  answering after 100 ms (bench_scheduler.py's provider-latency scenario) instead of
  the SMTP sink.

A profile is a breakdown, not a benchmark: its shares are what to read, and the
benchmarks' tables are where figures come from.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: (label, a frame whose presence in a stack puts the sample there), first match wins.
IN_PROCESS = [
    ("money filter (Babel)", "money_filter"),
    ("rendering (Jinja2)", "TemplateRenderer.render_email"),
    ("MIME (_mime.wire_bytes)", "wire_bytes"),
    ("SMTP exchanges", "SmtpProvider._deliver"),
    ("SMTP provider, rest", "SmtpProvider.send_email"),
    ("status store", "MemoryStatusStore"),
    ("idempotency store (claim)", "MemoryIdempotencyStore"),
    ("statuses built (DeliveryStatus)", "DeliveryStatus."),
    ("logging (dropped events)", "structlog"),
    ("dispatcher, rest", "Dispatcher._deliver"),
    ("caller: validation", "normalize_email"),
    ("caller: rest of the send", "Notifier.send_order_confirmation"),
    ("in-process queue and threads", "InProcessTransport"),
]
CONSUMER = [
    ("broker: reading and decoding messages", "Consumer._on_message"),
    ("broker: acks and the event loop", "Consumer._consume"),
    ("broker: settling (acks from the threads)", "Consumer._settle"),
    ("Redis claim", "RedisIdempotencyStore"),
    ("Redis statuses", "RedisStatusStore"),
    ("Redis reputation (pause, suppression)", "RedisReputationStore"),
    ("rendering", "TemplateRenderer.render_email"),
    ("MIME", "wire_bytes"),
    ("SMTP", "SmtpProvider"),
    ("HTTP provider (httpx)", "HttpProvider"),
    ("dispatcher, rest", "Dispatcher._deliver"),
    ("the message to a delivery, rest", "deliver_message"),
    ("delivery threads, rest", "Consumer._work"),
]
WORKER = [
    ("main: task events", "EventDispatcher"),
    ("main: broker (AMQP frames, acks)", "amqp/"),
    ("main: results from the pool", "ResultHandler"),
    ("main: task messages to the pool", "on_task_received"),
    ("main: event loop, rest", "asynloop"),
    ("pool: Redis claim", "RedisIdempotencyStore"),
    ("pool: Redis statuses", "RedisStatusStore"),
    ("pool: rendering", "TemplateRenderer.render_email"),
    ("pool: MIME", "wire_bytes"),
    ("pool: SMTP", "SmtpProvider"),
    ("pool: dispatcher, rest", "Dispatcher._deliver"),
    ("pool: the task, rest", "_deliver_task"),
    ("pool: Celery's trace (saferepr, signals, state)", "trace_task"),
    ("pool: reading and answering the main process", "workloop"),
]


def _frame(raw: str) -> str:
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", raw)
    if match is None:
        return raw
    where = re.sub(r".*/site-packages/|.*/lib/python3\.\d+/|.*/src/", "", match.group(2))
    return f"{match.group(1)} ({where})"


def breakdown(raw_file: Path, parts: list[tuple[str, str]], keep: tuple[str, ...] = ()) -> None:
    shares: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";")]
        joined = ";".join(frames)
        if (keep and not any(k in joined for k in keep)) or "_find_and_load" in joined:
            continue  # start-up (imports) and threads that are not the pipeline
        total += int(count)
        label = next((name for name, key in parts if key in joined), None)
        shares[label or f"other: {frames[-1]}"] += int(count)
    print(f"{total} samples")
    for label, count in shares.most_common(25):
        print(f"{100 * count / total:5.1f}%  {label}")


def spy(target: list[str], out: Path, *, rate: int = 400) -> list[str]:
    return ["py-spy", "record", "--gil", "-r", str(rate), "-f", "raw", "-o", str(out), *target]


def profile_inprocess(n: int, out: Path) -> None:
    from smtp_sink import SmtpSink

    with SmtpSink() as sink:
        command = [
            *(sys.executable, str(ROOT / "bench" / "bench_inprocess.py"), "--round", "library"),
            *("--port", str(sink.port), "--sink-pid", str(sink.pid), "-n", str(n)),
        ]
        subprocess.run(spy(["--", *command], out), check=True, capture_output=True)
    # The caller's thread and the transport's threads; not the interpreter's start-up.
    breakdown(out, IN_PROCESS, ("bench_inprocess", "Thread._bootstrap"))


def profile_worker(
    n: int, out: Path, *, events: bool, empty: bool, celery: bool, seconds: int, http: bool = False
) -> None:
    import bench_celery as bc
    from http_sink import HttpSink
    from smtp_sink import SmtpSink

    from tenant_notify import Notifier

    folder = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    tag = "profile" + os.urandom(3).hex()
    sink_cm: Any = HttpSink(latency=0.1) if http else SmtpSink()
    with sink_cm as sink:
        if empty:
            from handwritten_app import make_app

            queue = f"bench_hand_{tag}"
            task = make_app(confirms=False, queue=queue).tasks["handwritten.empty"]
            for i in range(n):
                task.apply_async((i,), queue=queue)
            worker = bc.celery_worker(bc.worker_env(queue), events, folder / "worker.log")
        else:
            queue = f"bench_tn_{tag}"
            if http:
                import bench_scheduler as bs

                table = bs.settings(tag, bs.http_provider(sink.url), send_events=events)
                queue = table["celery"]["queue"]
            else:
                table = bc.settings(tag, sink.port, send_events=events)
            (folder / "notify.toml").write_text(bc._toml(table))
            with Notifier.from_settings(table) as notify:
                for i in range(n):
                    bc.send_order(notify, i, tag)
                notify.transport.flush(30)  # type: ignore[attr-defined]
            command = [
                *(sys.executable, "-m", "tenant_notify.cli", "worker"),
                *("--config", str(folder / "notify.toml"), "-c", "2", "--loglevel", "WARNING"),
            ]
            if celery:  # Celery's own worker instead of the library's consumer
                command += ["--", "--without-gossip", "--without-mingle"]
            worker = bc.start(command, bc.worker_env(queue), folder / "worker.log")
        try:
            # Past the worker's start-up (seconds on a loaded machine), into the drain.
            deadline = time.monotonic() + 120
            while sink.count < (50 if not empty else 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            if empty:
                time.sleep(3)  # the empty task sends nothing to count
            target = ["--subprocesses", "--duration", str(seconds), "--pid", str(worker.pid)]
            subprocess.run(spy(target, out, rate=300), check=True, capture_output=True)
        finally:
            bc.stop(worker)
            bc.cleanup([queue], f"bench:{tag}:")  # with its tenant and deferred queues
    breakdown(out, WORKER if celery or empty else CONSUMER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("inprocess", "worker"))
    parser.add_argument("-n", type=int, default=0, help="messages (default 8000 / 4000)")
    parser.add_argument("--events", action="store_true", help="worker: task events on")
    parser.add_argument("--empty", action="store_true", help="worker: the empty task")
    parser.add_argument("--celery", action="store_true", help="worker: Celery's own worker")
    parser.add_argument(
        "--http", action="store_true", help="worker: into the HTTP API answering after 100 ms"
    )
    parser.add_argument("--seconds", type=int, default=10, help="worker: seconds sampled")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw samples here")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.raw or Path(tmp) / "samples.txt"
        if args.what == "inprocess":
            profile_inprocess(args.n or 8000, out)
        else:
            profile_worker(
                args.n or 4000,
                out,
                events=args.events,
                empty=args.empty,
                celery=args.celery,
                seconds=args.seconds,
                http=args.http,
            )


if __name__ == "__main__":
    main()
