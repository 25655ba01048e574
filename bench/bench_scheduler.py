"""The delivery scheduler: concurrency against slow providers, fairness between tenants.

Run: ``python bench/bench_scheduler.py`` (or ``nox -s bench``) with RabbitMQ and Redis on
loopback. Writes the ``scheduler-*`` sections of docs/benchmarks.md (``--no-write``:
print only). Every figure is against a baseline measured in the same run, in
interleaved rounds.

**Provider latency** (``scheduler-latency-http``, ``scheduler-latency-smtp``): a queue
filled with ``--emails`` order confirmations (2,000) is drained into

* a loopback Postmark-shaped HTTP API that answers each request after 100 ms
  (bench/http_sink.py), or
* an SMTP server 20 ms away: every reply (the greeting, EHLO, MAIL, RCPT, the 354
  after DATA, the end of the data, ...) reaches the client 20 ms after the command
  it answers reached the server, which goes on reading meanwhile (bench/smtp_sink.py:
  the delay is in the reply's path, not in the session), and the same server
  offering PIPELINING (``scheduler-latency-smtp-pipelining``), as production
  servers do: a pipelined group costs one round trip (smtplib, and so the
  hand-written task, never pipelines: four round trips a message),

by ``tenant-notify worker -c 2`` (two processes, ``[celery] threads`` each: 32 by
default) and by a hand-written Celery task doing one provider call per message
(bench/handwritten_app.py: the same templates, one HTTP POST on a keep-alive client,
or the fastest stdlib MIME over one held SMTP connection per thread) on prefork
``-c 2`` and on ``--pool threads -c 64`` (one process). The prefork task is
bound by the latency alone (two messages in flight), so it drains
``--baseline-emails`` (400): its rate is the same for any count, and 2,000 would
take minutes a round. Timed from the first arrival at the server to the last.
``--latency-base COMMIT`` adds the same worker run from COMMIT's source tree
(``git archive``, as the zero-latency row does) to each latency table, as a
baseline: what a change did, in the same interleaved rounds.

**Zero latency** (``scheduler-zero-latency``): the same into the plain counting SMTP
sink, ``tenant-notify worker -c 2`` against the worker of main at this issue's start
commit (``--base``, default ``1c350ba``: Celery's prefork pool, one FIFO queue),
extracted with ``git archive`` and run from its own source tree.

**Noisy neighbour** (``scheduler-noisy``): with the worker running, tenant A sends
``--noisy-a`` (20,000) notifications, then tenant B ``--noisy-b`` (100), into the 100 ms
HTTP API (each tenant's sends from 8 threads). Reported per variant: B's
send-to-sent latency (from the return of each of B's sends to its arrival at the
server; p50, p99) and the Jain fairness index ``(a + b)^2 / (2 (a^2 + b^2))`` of
A's and B's delivery rates while both have a backlog: A's lasts the round, B's is
the time when more of B's sends have returned than arrived (a send that returns
late, held up on the sender's side, does not stretch it; the older window, B's
first arrival to its last whatever its backlog, is a column too). Against today's FIFO: the
same worker with ``[celery] fair = false`` (one queue, first in, first out). A
round ends when B's last notification has arrived (the rest of A's backlog is
purged).

**429 pacing** (``scheduler-pacing``): bench/_scheduler_pacing.py's ``run_pacing``,
when that module is there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import (
    Comparison,
    Sample,
    Target,
    Variant,
    arguments,
    command_line,
    git_commit,
    publish,
)
from bench_celery import AMQP, REDIS, _toml, cleanup, send_order, start, stop, task_args
from bench_celery import drain as celery_drain
from handwritten import TENANTS
from http_sink import HttpSink
from smtp_sink import SmtpSink

from tenant_notify import Notifier, load_settings
from tenant_notify.transports.celery.message import Routes

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"

LIBRARY = "`tenant-notify worker -c 2` (32 threads per process)"
PREFORK = "hand-written task, one provider call, prefork `-c 2`"
THREADED = "hand-written task, one provider call, `--pool threads -c 64`"
BASE = "`tenant-notify worker -c 2` of main at the start commit (prefork, FIFO)"
AT_LEAST_ONCE = "delivered at least once, claimed and recorded in Redis; acked late"
HAND = "acked late; nothing recorded"


def settings(tag: str, email: dict[str, Any], **celery: Any) -> dict[str, Any]:
    return {
        "transport": "celery",
        "email": email,
        "celery": {
            "broker_url": AMQP,
            "queue": f"bench_sched_{tag}",
            "dead_letter_queue": f"bench_sched_{tag}.dead",
            **celery,
        },
        "redis": {"url": REDIS, "key_prefix": f"bench:{tag}:"},
        "idempotency": {"ttl": 600},
        "tenants": TENANTS,
    }


def http_provider(url: str) -> dict[str, Any]:
    return {"provider": "postmark", "server_token": TOKEN, "base_url": url, "read_timeout": 30}


#: ``--smtp-max-connections``: the library's SMTP connections per process (None: its default).
SMTP_CONNECTIONS: int | None = None


def smtp_provider(port: int) -> dict[str, Any]:
    table: dict[str, Any] = {
        "provider": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "local_hostname": "bench",
    }
    if SMTP_CONNECTIONS is not None:
        table["max_connections"] = SMTP_CONNECTIONS
    return table


def queues_of(table: dict[str, Any]) -> list[str]:
    return Routes.from_settings(load_settings(table)).names()


def env_for(
    queue: str = "", *, smtp_port: int = 0, http_url: str = "", path: str = ""
) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, str(ROOT / "bench"), str(ROOT)) if p)
    env.update(
        BENCH_QUEUE=queue,
        BENCH_BROKER_URL=AMQP,
        BENCH_REDIS_URL=REDIS,
        BENCH_SMTP_PORT=str(smtp_port),
        BENCH_HTTP_URL=http_url,
    )
    env.pop("BENCH_SMTP_CA", None)
    return env


def drain(
    process_factory: Callable[[], subprocess.Popen[bytes]],
    count: Callable[[], int],
    expected: int,
    sink_pid: int,
    log: Path | None = None,
) -> Sample:
    """Start a worker on a filled queue; measure from the first arrival to the last
    (bench_celery's drain: a round fails with the worker's log if it stalls)."""
    return celery_drain(process_factory, count, expected, None, sink_pid=sink_pid, log=log)


def fill(table: dict[str, Any], emails: int, tag: str) -> None:
    with Notifier.from_settings(table) as notify:
        for i in range(emails):
            send_order(notify, i, tag)
        assert notify.transport.flush(300)  # type: ignore[attr-defined]


class Latency:
    """The three variants against one slow sink (HTTP or SMTP)."""

    def __init__(
        self, run: str, kind: str, sink: Any, folder: Path, emails: int, baseline_emails: int
    ) -> None:
        self.run, self.kind, self.sink, self.folder = run, kind, sink, folder
        self.emails, self.baseline_emails = emails, baseline_emails

    def email(self) -> dict[str, Any]:
        return (
            http_provider(self.sink.url) if self.kind == "http" else smtp_provider(self.sink.port)
        )

    def library(self, round_no: int) -> Sample:
        return self.library_at("")(round_no)

    def library_at(self, src: str) -> Callable[[int], Sample]:
        """The worker run from ``src`` (another commit's source tree; "": this one)."""
        return lambda round_no: self._library(round_no, src)

    def _library(self, round_no: int, src: str) -> Sample:
        tag = f"{self.run}_{self.kind}_lib{'_at' if src else ''}_{round_no}"
        table = settings(tag, self.email())
        config = self.folder / f"{tag}.toml"
        config.write_text(_toml(table))
        fill(table, self.emails, tag)
        self.sink.reset()
        command = [sys.executable, "-m", "tenant_notify.cli", "worker", "--config", str(config)]
        command += ["-c", "2", "--loglevel", "WARNING"]
        env = env_for(path=src)
        try:
            return drain(
                lambda: start(command, env, self.folder / f"{tag}.log"),
                lambda: self.sink.count,
                self.emails,
                self.sink.pid,
                self.folder / f"{tag}.log",
            )
        finally:
            cleanup(queues_of(table), f"bench:{tag}:")

    def hand_written(self, pool: str) -> Callable[[int], Sample]:
        task_name = (
            "handwritten.send_order_confirmation_http"
            if self.kind == "http"
            else "handwritten.send_order_confirmation_fair"
        )
        emails = self.baseline_emails if pool == "prefork" else self.emails

        def run(round_no: int) -> Sample:
            from handwritten_app import make_app

            queue = f"bench_sched_hand_{self.run}_{self.kind}_{pool}_{round_no}"
            task = make_app(confirms=False, queue=queue).tasks[task_name]
            for i in range(emails):
                task.apply_async(kwargs=task_args(i, queue), queue=queue)
            self.sink.reset()
            env = env_for(
                queue,
                smtp_port=getattr(self.sink, "port", 0),
                http_url=getattr(self.sink, "url", "") if self.kind == "http" else "",
            )
            options = ["-c", "2"] if pool == "prefork" else ["--pool", "threads", "-c", "64"]
            command = [sys.executable, "-m", "celery", "-A", "handwritten_app", "worker"]
            command += [*options, "-Q", queue, "--loglevel", "WARNING"]
            command += ["--without-gossip", "--without-mingle"]
            try:
                return drain(
                    lambda: start(command, env, self.folder / f"{queue}.log"),
                    lambda: self.sink.count,
                    emails,
                    self.sink.pid,
                    self.folder / f"{queue}.log",
                )
            finally:
                cleanup([queue], None)

        return run


def latency(run: str, kind: str, args: Any, folder: Path) -> str:
    if kind == "http":
        sink_cm: Any = HttpSink(latency=0.1)
        title = "HTTP API answering after 100 ms"
    elif kind == "smtp":
        sink_cm = SmtpSink(latency=0.02)
        title = "SMTP server 20 ms away (each reply 20 ms after its command)"
        if SMTP_CONNECTIONS is not None:
            title += f", the library's `max_connections = {SMTP_CONNECTIONS}` per process"
    else:  # smtp-pipelining
        sink_cm = SmtpSink(latency=0.02, pipelining=True)
        title = "SMTP server 20 ms away (each reply 20 ms after its command), offering PIPELINING"
    with sink_cm as sink:
        bench = Latency(run, kind, sink, folder, args.emails, args.baseline_emails)
        also: list[Variant] = []
        if args.latency_base:  # the same worker at another commit, for what a change did
            src = str(base_tree(args.latency_base, folder))
            also.append(
                Variant(
                    f"`tenant-notify worker -c 2` at {args.latency_base}",
                    bench.library_at(src),
                    guarantee=AT_LEAST_ONCE,
                    baseline=True,
                    short=f"library@{args.latency_base}",
                )
            )
        result = Comparison(
            f"scheduler, {title}",
            [
                Variant(LIBRARY, bench.library, guarantee=AT_LEAST_ONCE, short="library"),
                *also,
                Variant(
                    PREFORK,
                    bench.hand_written("prefork"),
                    guarantee=HAND,
                    baseline=True,
                    short="prefork -c 2",
                ),
                Variant(
                    THREADED,
                    bench.hand_written("threads"),
                    guarantee=HAND,
                    baseline=True,
                    short="threads -c 64",
                ),
            ],
            rounds=args.rounds,
            cpu_scopes={
                "delivery": "the worker's whole process tree (system under test)",
                "sink": "the provider's process (not the system under test)",
            },
        ).run()
    targets = [
        Target("at least 10x the prefork -c 2 hand-written task", LIBRARY, PREFORK, at_least=10),
        Target("at least 1.5x the threaded hand-written task", LIBRARY, THREADED, at_least=1.5),
    ]
    baselines = [PREFORK, THREADED, *(v.name for v in also)]
    return f"**{title}**\n\n" + result.markdown(
        targets=targets, ratios_to=baselines, cpu_ratios_to=baselines
    )


# --- zero latency: against main at the start commit --------------------------------------


def base_tree(commit: str, folder: Path) -> Path:
    """The start commit's src/ in ``folder`` (git archive), for its worker to run from."""
    target = folder / f"base-{commit}"
    if not target.exists():
        archive = folder / f"base-{commit}.tar"
        with archive.open("wb") as out:
            subprocess.run(
                ["git", "-C", str(ROOT), "archive", commit, "src"], stdout=out, check=True
            )
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target / "src"


def zero_latency(run: str, args: Any, folder: Path) -> str:
    src = base_tree(args.base, folder)
    with SmtpSink() as sink:

        def variant(base: bool) -> Callable[[int], Sample]:
            def measure(round_no: int) -> Sample:
                tag = f"{run}_zero_{'base' if base else 'lib'}_{round_no}"
                # The old worker consumes [celery] queue alone: publish there (fair off).
                table = settings(tag, smtp_provider(sink.port), **({"fair": False} if base else {}))
                fill(table, args.emails, tag)
                if base:
                    del table["celery"]["fair"]  # a key the old settings do not know
                config = folder / f"{tag}.toml"
                config.write_text(_toml(table))
                sink.reset()
                command = [sys.executable, "-m", "tenant_notify.cli", "worker"]
                command += ["--config", str(config), "-c", "2", "--loglevel", "WARNING"]
                if base:
                    command += ["--", "--without-gossip", "--without-mingle"]
                env = env_for(path=str(src) if base else str(ROOT / "src"))
                try:
                    return drain(
                        lambda: start(command, env, folder / f"{tag}.log"),
                        lambda: sink.count,
                        args.emails,
                        sink.pid,
                        folder / f"{tag}.log",
                    )
                finally:
                    cleanup(
                        queues_of({**table, "celery": {**table["celery"], "fair": True}}),
                        f"bench:{tag}:",
                    )

            return measure

        result = Comparison(
            "scheduler, zero latency (plain SMTP sink)",
            [
                Variant(LIBRARY, variant(False), guarantee=AT_LEAST_ONCE, short="library"),
                Variant(
                    BASE.replace("start commit", f"start commit {args.base}"),
                    variant(True),
                    guarantee=AT_LEAST_ONCE,
                    baseline=True,
                    short="main@start",
                ),
            ],
            rounds=args.rounds,
            cpu_scopes={
                "delivery": "the worker's whole process tree (system under test)",
                "sink": "the SMTP sink's process (not the system under test)",
            },
        ).run()
    base_name = BASE.replace("start commit", f"start commit {args.base}")
    return result.markdown(
        targets=[Target("no loss of throughput at zero latency", LIBRARY, base_name, at_least=1.0)],
        ratios_to=[base_name],
        cpu_ratios_to=[base_name],
    )


# --- noisy neighbour -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def jain(rates: list[float]) -> float:
    total = sum(rates)
    squares = sum(r * r for r in rates)
    return total * total / (len(rates) * squares) if squares else 0.0


def wait_consumers(queue: str, count: int, process: subprocess.Popen[bytes]) -> None:
    import kombu

    deadline = time.monotonic() + 60
    while True:
        with kombu.Connection(AMQP) as conn, contextlib.suppress(Exception):
            if conn.channel().queue_declare(queue, passive=True).consumer_count >= count:
                return
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"no {count} consumers on {queue}")
        time.sleep(0.1)


def noisy_round(
    run: str, fair: bool, round_no: int, args: Any, sink: HttpSink, folder: Path
) -> dict[str, float]:
    tag = f"{run}_noisy_{'fair' if fair else 'fifo'}_{round_no}"
    table = settings(tag, http_provider(sink.url), fair=fair)
    config = folder / f"{tag}.toml"
    config.write_text(_toml(table))
    sink.reset()
    command = [sys.executable, "-m", "tenant_notify.cli", "worker", "--config", str(config)]
    command += ["-c", "2", "--loglevel", "WARNING"]
    log = folder / f"{tag}.log"
    process = start(command, env_for(), log)
    a_sender, b_sender = "orders@acme.test", "hello@globex.test"
    try:
        wait_consumers(queues_of(table)[-1], 2, process)  # both processes consuming
        with Notifier.from_settings(table) as notify:

            def send(tenant: str, i: int) -> tuple[str, float]:
                customer = f"{tenant}{i}@example.com"
                o = {"order_id": f"{tag}-{tenant}-{i}", "customer_email": customer}
                notify.send_order_confirmation(
                    **o, order_total="19.99", currency="EUR", tenant_id=tenant
                )
                return customer, time.time()

            with concurrent.futures.ThreadPoolExecutor(8) as pool:  # A's burst, quickly
                list(pool.map(lambda i: send("acme", i), range(args.noisy_a)))
                # Then B's, as quickly: B has a backlog from its first send to its last arrival.
                b_sent = dict(pool.map(lambda i: send("globex", i), range(args.noisy_b)))
            assert notify.transport.flush(300)  # type: ignore[attr-defined]
            deadline = time.monotonic() + 900
            while True:
                arrivals = sink.arrivals()
                b_arrived = {to: t for t, who, to in arrivals if b_sender in who}
                if len(b_arrived) >= args.noisy_b:
                    break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"B: {len(b_arrived)} of {args.noisy_b} arrived")
                time.sleep(0.05)
    finally:
        stop(process)
        cleanup(queues_of(table), f"bench:{tag}:")
    latencies = [b_arrived[to] - sent for to, sent in b_sent.items()]
    a_times = [t for t, who, _ in arrivals if a_sender in who]
    intervals = backlog_intervals(list(b_sent.values()), list(b_arrived.values()))
    window = max(1e-6, sum(end - begin for begin, end in intervals))
    a_in, b_in = count_in(a_times, intervals), count_in(list(b_arrived.values()), intervals)
    # The figure before: from B's first arrival to its last, B's backlog or not.
    b_times = sorted(b_arrived.values())
    span = max(1e-6, b_times[-1] - b_times[0])
    a_span = sum(1 for t in a_times if b_times[0] <= t <= b_times[-1])
    return {
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "jain": jain([a_in / window, b_in / window]),
        "a_rate": a_in / window,
        "b_rate": b_in / window,
        "backlog_s": window,
        "jain_span": jain([a_span / span, len(b_times) / span]),
        "span_s": span,
        "load": os.getloadavg()[0],
    }


def backlog_intervals(sent: list[float], arrived: list[float]) -> list[tuple[float, float]]:
    """The times B has a backlog: more of its sends returned than arrived at the server.

    A send counts from its return (as B's latency does); an arrival closes the
    interval it ends. A's backlog (20,000) lasts the whole round.
    """
    events = sorted([(t, 1) for t in sent] + [(t, -1) for t in arrived])
    intervals: list[tuple[float, float]] = []
    waiting, begin = 0, 0.0
    for t, step in events:
        if waiting <= 0 < waiting + step:
            begin = t
        waiting += step
        if waiting <= 0 < waiting - step:
            intervals.append((begin, t))
    return intervals


def count_in(times: list[float], intervals: list[tuple[float, float]]) -> int:
    """Arrivals inside the intervals (both ends included)."""
    return sum(1 for t in times if any(begin <= t <= end for begin, end in intervals))


def noisy(run: str, args: Any, folder: Path) -> str:
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    began = time.time()
    with HttpSink(latency=0.1) as sink:
        for round_no in range(args.noisy_rounds or args.rounds):
            order = [True, False] if round_no % 2 == 0 else [False, True]
            for fair in order:
                figures = noisy_round(run, fair, round_no, args, sink, folder)
                print(f"noisy round {round_no} fair={fair}: {figures}", flush=True)
                results[fair].append(figures)

    def cell(rows: list[dict[str, float]], key: str, fmt: str) -> str:
        values = [row[key] for row in rows]
        return (
            f"{format(statistics.median(values), fmt)} "
            f"[{format(min(values), fmt)}-{format(max(values), fmt)}]"
        )

    loads = [row["load"] for rows in results.values() for row in rows]
    minutes = (time.time() - began) / 60
    lines = [
        f"Command: `{command_line()}` at {git_commit()}, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(began))} UTC, {minutes:.1f} minutes.",
        "",
        f"Tenant A sends {args.noisy_a:,} order confirmations, then tenant B {args.noisy_b:,}, "
        "to a Postmark-shaped API answering after 100 ms; `tenant-notify worker -c 2` (32 threads "
        f"each) running throughout. {args.noisy_rounds or args.rounds} interleaved rounds "
        "(fair and FIFO alternating which goes first); 1-minute load average "
        f"{statistics.median(loads):.2f} [{min(loads):.2f}-{max(loads):.2f}] on "
        f"{os.cpu_count()} cores. Median [min-max] over the rounds.",
        "",
        "| Variant | B send-to-sent p50 (s) | B p99 (s) | Jain index (A, B) | A /s | B /s "
        "| B's backlog (s) | Jain, B's first to last arrival |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fair, name in (
        (True, "fair (`[celery] fair = true`, the default)"),
        (False, "today's FIFO (`fair = false`: one queue)"),
    ):
        rows = results[fair]
        lines.append(
            f"| {name} | {cell(rows, 'p50', '.2f')} | {cell(rows, 'p99', '.2f')} | "
            f"{cell(rows, 'jain', '.3f')} | {cell(rows, 'a_rate', '.0f')} | "
            f"{cell(rows, 'b_rate', '.0f')} | {cell(rows, 'backlog_s', '.2f')} | "
            f"{cell(rows, 'jain_span', '.3f')} |"
        )
    p99 = statistics.median(row["p99"] for row in results[True])
    index = statistics.median(row["jain"] for row in results[True])
    lines += [
        "",
        "Targets (median over the rounds):",
        f"- B's p99 at most 2 s: {p99:.2f} s, {'met' if p99 <= 2 else 'NOT met'}",
        f"- Jain index at least 0.95: {index:.3f}, {'met' if index >= 0.95 else 'NOT met'}",
    ]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=2000, help="emails per latency round")
    parser.add_argument(
        "--baseline-emails", type=int, default=400, help="emails per prefork -c 2 round"
    )
    parser.add_argument("--noisy-a", type=int, default=20_000, help="tenant A's burst")
    parser.add_argument("--noisy-b", type=int, default=100, help="tenant B's sends after it")
    parser.add_argument(
        "--noisy-rounds", type=int, help="rounds of the noisy neighbour (default: --rounds)"
    )
    parser.add_argument("--base", default="1c350ba", help="main's commit for the zero-latency row")
    parser.add_argument(
        "--latency-base",
        metavar="COMMIT",
        help="latency tables: also the worker at COMMIT (its src/, git archive), as a baseline",
    )
    parser.add_argument(
        "--smtp-max-connections",
        type=int,
        metavar="N",
        help="the library's SMTP max_connections per process (default: its own, 10); "
        "to check the connection arithmetic, not a figure of the defaults",
    )
    parser.add_argument(
        "--only",
        choices=("http", "smtp", "smtp-pipelining", "zero", "noisy", "pacing"),
        action="append",
        help="run only these comparisons (repeatable)",
    )
    pacing: Any = None
    with contextlib.suppress(ImportError):
        import _scheduler_pacing as pacing  # schedlimits' 429 scenario

        if hasattr(pacing, "add_arguments"):
            pacing.add_arguments(parser)
    args = parser.parse_args()
    global SMTP_CONNECTIONS
    SMTP_CONNECTIONS = args.smtp_max_connections
    chosen = set(args.only or ("http", "smtp", "smtp-pipelining", "zero", "noisy", "pacing"))
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as name:
        folder = Path(name)
        if "http" in chosen:
            publish("scheduler-latency-http", latency(run, "http", args, folder), write=args.write)
        if "smtp" in chosen:
            publish("scheduler-latency-smtp", latency(run, "smtp", args, folder), write=args.write)
        if "smtp-pipelining" in chosen:
            publish(
                "scheduler-latency-smtp-pipelining",
                latency(run, "smtp-pipelining", args, folder),
                write=args.write,
            )
        if "zero" in chosen:
            publish("scheduler-zero-latency", zero_latency(run, args, folder), write=args.write)
        if "noisy" in chosen:
            publish("scheduler-noisy", noisy(run, args, folder), write=args.write)
        if "pacing" in chosen and pacing is not None:
            figures = pacing.run_pacing(args)
            markdown = figures if isinstance(figures, str) else figures["markdown"]
            publish("scheduler-pacing", markdown, write=args.write)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
