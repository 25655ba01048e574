"""The Celery transport against hand-written Celery code, same broker, interleaved rounds.

Run: ``python bench/bench_celery.py`` (or ``nox -s bench``) with RabbitMQ and Redis on
loopback (127.0.0.1:5672 guest/guest, 127.0.0.1:6379). Writes the ``celery-caller``
and ``celery-throughput`` sections of docs/benchmarks.md (``--no-write``: print only).

**Caller's cost** (µs per call in this process; no worker consumes meanwhile, each
variant's queue is purged after its round), each variant with the guarantee it
gives when the call returns:

* ``task.delay()`` of a hand-written task with the same arguments
  (bench/handwritten_app.py) with Celery's defaults: written to the socket, the
  broker's confirm never asked for;
* the same with ``confirm_publish``: the broker has confirmed the message;
* ``notify.send_order_confirmation(...)`` on the ``celery`` transport with
  ``publisher_confirms = "async"`` (the default): the notification id derived from
  the idempotency key (no waited round trip), the ``queued`` status handed to the
  Redis writer (written with others within 5 ms), the message written,
  its confirm read in the background (republished if lost, recorded as failed if it
  never comes); and with ``"sync"``: the same, and the broker has confirmed it
  (the guarantee of ``delay()`` with ``confirm_publish``);
* ``notify.send_email(...)`` without an idempotency key (nothing to reserve);
* raw kombu ``Producer.publish`` of a ready body, without and with confirms: the
  floor of a publish.

**Throughput** (emails per second into the counting SMTP sink, bench/smtp_sink.py,
in a process of its own; a queue filled beforehand, drained by a worker with two
prefork processes, timed from the first email the sink accepts to the last):

* ``tenant-notify worker -c 2``, the library's own consumer (two processes of
  delivery threads; rendering subject, text and HTML; claims and statuses in Redis),
  and the same worker run as Celery's own (``-- --pool prefork``: two pool processes);
* the seed's way: a hand-written task building each email with
  ``email.message.EmailMessage`` and opening a connection per message;
* a fair hand-written task: the same templates, the fastest stdlib MIME, one
  connection held per worker process;
* in-process delivery of the same emails (bench/bench_inprocess.py's library
  round: two worker threads, memory stores), for the worker's CPU target;
* an empty task (it only counts itself in Redis) drained by the same worker: what
  Celery itself does per second here (its rate is tasks, not emails).

With ``--base-python`` (an interpreter with another install of the library, as
bench_inprocess.py takes it) the throughput tables run that install's worker too, on
the same queues' kind of fill, in the same interleaved rounds: its CPU per email is the
baseline of a paired ratio. ``--variants`` runs only the variants named (short names),
for a quick comparison.

CPU per email is read over the same window for the delivering processes (the
worker's whole tree: main process and pool; for in-process delivery, the process
minus its caller's thread) and for the sink (not the system under test).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kombu
from _harness import (
    Comparison,
    Sample,
    Target,
    TreeCpu,
    Variant,
    arguments,
    cpu_seconds,
    publish,
    run_json,
    write_section,
)
from handwritten import TENANTS, order
from smtp_sink import SmtpSink

from tenant_notify import Notifier

ROOT = Path(__file__).resolve().parents[1]
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/15"
TENANT_IDS = ("acme", "globex")


def settings(tag: str, smtp_port: int, **celery: Any) -> dict[str, Any]:
    return {
        "transport": "celery",
        "email": {
            "provider": "smtp",
            "host": "127.0.0.1",
            "port": smtp_port,
            "local_hostname": "bench",
        },
        "celery": {
            "broker_url": AMQP,
            "queue": f"bench_tn_{tag}",
            "dead_letter_queue": f"bench_tn_{tag}.dead",
            **celery,
        },
        "redis": {"url": REDIS, "key_prefix": f"bench:{tag}:"},
        "idempotency": {"ttl": 600},
        "tenants": TENANTS,
    }


def task_args(i: int, run: str) -> dict[str, Any]:
    o = order(i, run, TENANT_IDS[i % 2])
    return {**o, "order_total": str(o["order_total"])}


def send_order(notify: Notifier, i: int, run: str) -> object:
    o = order(i, run, TENANT_IDS[i % 2])
    return notify.send_order_confirmation(
        order_id=o["order_id"],
        customer_email=o["customer_email"],
        order_total=o["order_total"],
        currency=o["currency"],
        tenant_id=o["tenant_id"],
    )


def purge(queue: str) -> None:
    """Purge ``queue``, and the library's per-tenant and deferred queues beside it."""
    names = [queue, f"{queue}.deferred", *(f"{queue}.tenant.{t}" for t in TENANT_IDS)]
    with kombu.Connection(AMQP) as conn:
        for name in names:
            with contextlib.suppress(Exception):  # not declared (yet)
                conn.channel().queue_purge(name)


# --- caller's cost ----------------------------------------------------------------------


def measure_calls(n: int, call: Callable[[int], object], queue: str) -> Callable[[int], Sample]:
    counter = iter(range(10**9))

    def run(round_no: int) -> Sample:
        numbers = [next(counter) for _ in range(n)]
        wall, cpu = time.perf_counter(), cpu_seconds()
        for i in numbers:
            call(i)
        sample = Sample(ops=n, wall=time.perf_counter() - wall, cpu={"caller": cpu_seconds() - cpu})
        purge(queue)
        return sample

    return run


DELAY = "hand-written `task.delay()`, Celery defaults"
DELAY_CONFIRMED = "hand-written `task.delay()`, `confirm_publish`"
LIB_ASYNC = "`notify.send_order_confirmation()`, confirms `async` (default)"
LIB_SYNC = "`notify.send_order_confirmation()`, confirms `sync`"


def caller_cost(run: str, n: int, rounds: int) -> str:
    from handwritten_app import make_app

    closers: list[Callable[[], None]] = []
    variants = []
    for name, confirms, short, suffix, guarantee in (
        (DELAY, False, "delay()", "delay", "written to the socket; no confirm asked for"),
        (DELAY_CONFIRMED, True, "delay() confirmed", "confirmed", "confirmed by the broker"),
    ):
        queue = f"bench_hand_{run}_{suffix}"
        task = make_app(confirms=confirms, queue=queue).tasks["handwritten.send_order_confirmation"]
        variants.append(
            Variant(
                name,
                measure_calls(n, lambda i, task=task: task.delay(**task_args(i, run)), queue),
                guarantee=guarantee,
                baseline=True,
                short=short,
            )
        )

    body = json.dumps([[], task_args(0, run), {}])
    for label, options, guarantee in (
        ("", {}, "written to the socket"),
        (", confirms", {"confirm_publish": True}, "confirmed by the broker"),
    ):
        conn = kombu.Connection(AMQP, transport_options=options)
        closers.append(conn.release)
        producer = kombu.Producer(conn.channel())
        queue = f"bench_raw_{run}{label.replace(', ', '_')}"
        kombu.Queue(queue, routing_key=queue)(conn.channel()).declare()

        def publish_raw(i: int, producer: Any = producer, queue: str = queue) -> None:
            producer.publish(
                body,
                routing_key=queue,
                content_type="application/json",
                content_encoding="utf-8",
                headers={"id": str(i)},
            )

        variants.append(
            Variant(
                f"raw kombu `Producer.publish` of a ready body{label} (floor)",
                measure_calls(n, publish_raw, queue),
                guarantee=guarantee,
            )
        )

    # No waited Redis round trip: the id is derived from the key, and the `queued`
    # status's SET NX waits in the Redis writer to be written with others (within 5 ms).
    reserved = "`queued` handed to the Redis writer (in Redis within 5 ms); "
    for name, confirms, guarantee in (
        (LIB_ASYNC, "async", reserved + "written; confirm read in the background"),
        (LIB_SYNC, "sync", reserved + "confirmed by the broker"),
    ):
        notify = Notifier.from_settings(
            settings(f"{run}_{confirms}", 25, publisher_confirms=confirms)
        )
        closers.append(notify.close)
        prefix = f"{run}-{confirms}"
        variants.append(
            Variant(
                name,
                measure_calls(
                    n,
                    lambda i, notify=notify, prefix=prefix: send_order(notify, i, prefix),
                    f"bench_tn_{run}_{confirms}",
                ),
                guarantee=guarantee,
            )
        )
        if confirms == "async":
            variants.append(
                Variant(
                    "`notify.send_email()` without an idempotency key, confirms `async`",
                    measure_calls(
                        n,
                        lambda i, notify=notify: notify.send_email(
                            to_email=f"customer{i}@example.com",
                            subject=f"Your order {i}",
                            body="Thank you for your order.",
                            tenant_id="acme",
                        ),
                        f"bench_tn_{run}_{confirms}",
                    ),
                    guarantee="`queued` handed to the Redis writer (in Redis within 5 ms); "
                    "written; confirm read in the background",
                )
            )
    try:
        result = Comparison(
            "celery caller",
            variants,
            rounds=rounds,
            metric="time",
            unit="call",
            cpu_scopes={"caller": "the calling process, every thread (the system under test)"},
            warmup=True,
        ).run()
    finally:
        for close in closers:
            close()
    return result.markdown(
        cpu_ratios_to=[DELAY, DELAY_CONFIRMED],
        targets=[
            Target(
                "issue 9: an order confirmation (key, confirms on) costs the caller at most "
                "0.5x Celery's default `delay()`",
                LIB_ASYNC,
                DELAY,
                at_most=0.5,
            )
        ],
    )


# --- throughput --------------------------------------------------------------------------


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def worker_env(queue: str, smtp_port: int = 0, ca_file: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(ROOT)])
    env.update(
        BENCH_QUEUE=queue,
        BENCH_BROKER_URL=AMQP,
        BENCH_REDIS_URL=REDIS,
        BENCH_SMTP_PORT=str(smtp_port),
    )
    env.pop("BENCH_SMTP_CA", None)
    if ca_file is not None:
        env["BENCH_SMTP_CA"] = str(ca_file)
    return env


#: Seconds a worker may take to deliver its first email (start-up on a loaded machine),
#: and then to make any progress at all, before its round fails (with its log).
FIRST_ARRIVAL = 240.0
STALLED = 120.0


def _main_threads_cpu(pids: list[int]) -> float:
    """Seconds the main threads of ``pids`` have run (the scheduler's own count,
    ``/proc/<pid>/task/<pid>/schedstat``): in ``tenant-notify worker``'s processes,
    the thread that talks to the broker."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def drain(
    worker: Callable[[], subprocess.Popen[bytes]],
    count: Callable[[], int],
    expected: int,
    sink: SmtpSink | None,
    *,
    log: Path | None = None,
    sink_pid: int | None = None,
    connection_threads: bool = False,
) -> Sample:
    """Start a worker on a filled queue; measure from the first arrival to the last.

    ``connection_threads``: also the CPU of the worker processes' main threads (the
    library's consumer: the thread that reads the broker and acknowledges), as the
    ``connection`` scope.

    A round fails (:class:`RuntimeError` with the tail of the worker's ``log``) when
    the worker exits, delivers nothing within :data:`FIRST_ARRIVAL` seconds, or
    stops making progress for :data:`STALLED` seconds; a slow round on a loaded
    machine is not a failure.
    """
    pid = sink_pid if sink_pid is not None else sink.pid if sink is not None else None
    sink_cpu = TreeCpu([pid], children=False) if pid is not None else None
    process = worker()

    def fail(what: str) -> RuntimeError:
        code = process.poll()
        status = "still running" if code is None else f"exited with {code}"
        tail = ""
        if log is not None and log.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        return RuntimeError(f"{what} (the worker {status}); its log ends:\n{tail}")

    try:
        tree = TreeCpu([process.pid])
        deadline = time.monotonic() + FIRST_ARRIVAL
        while count() < 1:
            if process.poll() is not None or time.monotonic() > deadline:
                raise fail(f"the worker delivered nothing in {FIRST_ARRIVAL:.0f} s")
            time.sleep(0.0005)
        wall, cpu = time.perf_counter(), tree.seconds()
        server = sink_cpu.seconds() if sink_cpu is not None else 0.0
        children = [c.pid for c in tree.processes[0].children()] if connection_threads else []
        connection = _main_threads_cpu(children)
        seen, progress_at = 1, time.monotonic()
        while (now_count := count()) < expected:
            now = time.monotonic()
            if now_count > seen:
                seen, progress_at = now_count, now
            if process.poll() is not None or now - progress_at > STALLED:
                raise fail(f"{now_count} of {expected} delivered, none for {STALLED:.0f} s")
            time.sleep(0.0005)
        wall = time.perf_counter() - wall
        cpu = tree.seconds() - cpu
        server = sink_cpu.seconds() - server if sink_cpu is not None else 0.0
        connection = _main_threads_cpu(children) - connection
    finally:
        stop(process)
    scopes = {"delivery": cpu, "sink": server}
    if connection_threads:
        scopes["connection"] = connection
    return Sample(ops=expected - 1, wall=wall, cpu=scopes)


class Throughput:
    """The variants of one throughput comparison, sharing one sink."""

    def __init__(
        self,
        run: str,
        emails: int,
        folder: Path,
        sink: SmtpSink,
        *,
        tls: bool,
        events: bool,
        pipelining: bool = False,
    ) -> None:
        self.run, self.emails, self.folder, self.sink = run, emails, folder, sink
        self.tls, self.events = tls, events
        # The connection threads' CPU of the library's consumer (other rows: "-").
        self.threads_scope = False
        self.ca = sink.cert_file if tls else None
        # Names (queues, keys) differ between tables: a table that reused an earlier one's
        # queue name published into the exchange kombu remembered declaring, which the
        # earlier table's cleanup had deleted, and its worker found nothing to deliver.
        pipe = "pipe" if pipelining else "nopipe"
        self.label = f"{'tls' if tls else 'plain'}, {'ev' if events else 'noev'}, {pipe}"

    def tag(self, name: str, round_no: int) -> str:
        return f"{self.run}_{name}_{self.label.replace(', ', '_')}_{round_no}"

    def library(self, round_no: int, pool: str = "consumer", python: str | None = None) -> Sample:
        tag = self.tag(f"lib{pool}{'base' if python else ''}", round_no)
        table = settings(tag, self.sink.port, send_events=self.events)
        if self.tls:
            table["email"].update(starttls=True, ca_file=str(self.ca))
        config = self.folder / f"{tag}.toml"
        config.write_text(_toml(table))
        with Notifier.from_settings(table) as notify:
            for i in range(self.emails):
                send_order(notify, i, tag)
            if not notify.transport.flush(300):  # type: ignore[attr-defined]
                raise RuntimeError("the fill was not confirmed by the broker")
        self.sink.reset()
        command = [
            *(python or sys.executable, "-m", "tenant_notify.cli", "worker"),
            *("--config", str(config)),
            *("-c", "2", "--loglevel", "WARNING"),
        ]
        if pool != "consumer":  # Celery's own worker, with that pool
            command += ["--", "--without-gossip", "--without-mingle", f"--pool={pool}"]
        env = worker_env(f"bench_tn_{tag}")
        log = self.folder / f"{tag}.log"
        try:
            return drain(
                lambda: start(command, env, log),
                lambda: self.sink.count,
                self.emails,
                self.sink,
                log=log,
                connection_threads=pool == "consumer" and self.threads_scope,
            )
        finally:
            cleanup([f"bench_tn_{tag}"], f"bench:{tag}:")

    def hand_written(self, task_name: str, name: str) -> Callable[[int], Sample]:
        def run(round_no: int) -> Sample:
            from handwritten_app import make_app

            queue = f"bench_hand_{self.tag(name, round_no)}"
            task = make_app(confirms=False, queue=queue).tasks[task_name]
            for i in range(self.emails):
                task.apply_async(kwargs=task_args(i, queue), queue=queue)
            self.sink.reset()
            env = worker_env(queue, self.sink.port, self.ca)
            log = self.folder / f"{queue}.log"
            try:
                return drain(
                    lambda: celery_worker(env, self.events, log),
                    lambda: self.sink.count,
                    self.emails,
                    self.sink,
                    log=log,
                )
            finally:
                cleanup([queue], None)

        return run

    def inprocess(self, round_no: int) -> Sample:
        self.sink.reset()
        sample = run_json(
            [
                *(sys.executable, str(ROOT / "bench" / "bench_inprocess.py"), "--round", "library"),
                *("--port", str(self.sink.port), "--sink-pid", str(self.sink.pid)),
                *("-n", str(self.emails), "--run-id", self.tag("inproc", round_no)),
            ]
        )
        if self.sink.count != sample.extra["sent"]:
            raise RuntimeError(
                f"in-process: sent {sample.extra['sent']}, {self.sink.count} arrived"
            )
        return Sample(sample.ops, sample.wall, {k: sample.cpu[k] for k in ("delivery", "sink")})

    def empty(self, round_no: int) -> Sample:
        import redis
        from handwritten_app import make_app

        queue = f"bench_hand_{self.tag('empty', round_no)}"
        task = make_app(confirms=False, queue=queue).tasks["handwritten.empty"]
        for i in range(self.emails):
            task.apply_async((i,), queue=queue)
        client = redis.Redis.from_url(REDIS)
        key = f"bench:empty:{queue}"
        log = self.folder / f"{queue}.log"
        try:
            return drain(
                lambda: celery_worker(worker_env(queue), self.events, log),
                lambda: int(client.get(f"{key}:count") or 0),
                self.emails,
                self.sink,
                log=log,
            )
        finally:
            client.delete(*(f"{key}:{end}" for end in ("first", "last", "count")))
            cleanup([queue], None)


def celery_worker(env: dict[str, str], events: bool, log: Path) -> subprocess.Popen[bytes]:
    return start(
        [
            *(sys.executable, "-m", "celery", "-A", "handwritten_app", "worker", "-c", "2"),
            *("-Q", env["BENCH_QUEUE"], "--loglevel", "WARNING"),
            *("--without-gossip", "--without-mingle", *(["-E"] if events else [])),
        ],
        env,
        log,
    )


LIBRARY = "`tenant-notify worker -c 2` (its own consumer: 2 processes of delivery threads)"
PREFORK = "`tenant-notify worker -c 2 -- --pool prefork` (Celery's own worker, 2 pool processes)"
SEED = "the seed's way: `EmailMessage`, a connection per message (`-c 2`)"
FAIR = "fair hand-written task: same templates, fastest stdlib MIME, held connection (`-c 2`)"
INPROCESS = "in-process delivery of the same emails (2 threads, memory stores)"
EMPTY = "empty task, Celery's own ceiling (tasks, not emails; `-c 2`)"
THREADS = "`tenant-notify worker -c 2 -- --pool threads` (Celery's worker, no pool processes)"


def throughput(
    run: str,
    emails: int,
    rounds: int,
    folder: Path,
    *,
    tls: bool,
    pipelining: bool,
    events: bool,
    threads_pool: bool = False,
    base: tuple[str, str] | None = None,
    variants: frozenset[str] | None = None,
) -> str:
    title = (
        f"{'STARTTLS' if tls else 'plain'} SMTP, server "
        f"{'offers' if pipelining else 'does not offer'} PIPELINING, "
        f"task events {'on' if events else 'off'}"
    )
    with SmtpSink(cert_dir=folder if tls else None, pipelining=pipelining) as sink:
        t = Throughput(run, emails, folder, sink, tls=tls, events=events, pipelining=pipelining)
        at_least_once = "delivered at least once, claimed and recorded in Redis; acked late"
        chosen = [
            Variant(LIBRARY, t.library, guarantee=at_least_once, short="library"),
            Variant(
                PREFORK,
                lambda round_no: t.library(round_no, "prefork"),
                guarantee=at_least_once,
                short="celery prefork",
            ),
            Variant(
                SEED,
                t.hand_written("handwritten.send_order_confirmation", "seed"),
                guarantee="acked late; nothing recorded",
                baseline=True,
                short="seed's way",
            ),
            Variant(
                FAIR,
                t.hand_written("handwritten.send_order_confirmation_fair", "fair"),
                guarantee="acked late; nothing recorded",
                baseline=True,
                short="fair task",
            ),
            Variant(EMPTY, t.empty, guarantee="-", short="empty task"),
        ]
        if threads_pool:
            chosen.insert(
                2,
                Variant(
                    THREADS,
                    lambda round_no: t.library(round_no, "threads"),
                    guarantee=at_least_once + "; no time limits",
                    short="threads pool",
                ),
            )
        if not tls:
            chosen.insert(
                4 if threads_pool else 3,
                Variant(
                    INPROCESS,
                    t.inprocess,
                    guarantee="queued in memory; statuses in memory",
                    baseline=True,
                    short="in-process",
                ),
            )
        if base is not None:
            python, label = base
            chosen.insert(
                1,
                Variant(
                    base_name(label),
                    lambda round_no: t.library(round_no, python=python),
                    guarantee=at_least_once,
                    baseline=True,
                    short=label,
                ),
            )
        if variants is not None:
            chosen = [v for v in chosen if v.short in variants]
        scopes = {
            "delivery": "the delivering processes: a worker's whole tree (main process and "
            "pool), for in-process delivery the process minus its caller's thread",
            "sink": "the SMTP sink's process (not the system under test)",
        }
        consumers = {"library", *([base[1]] if base is not None else [])}
        if {v.short for v in chosen} & consumers:
            t.threads_scope = True
            scopes["connection"] = (
                "the worker processes' main threads (the consumer's connection thread: "
                "reading the broker, acknowledging), the scheduler's own run time"
            )
        result = Comparison(
            f"celery throughput, {title}",
            chosen,
            rounds=rounds,
            cpu_scopes=scopes,
        ).run()
    names = {v.name for v in chosen}
    targets = [Target("earlier target: at least 2.5x the seed's way", LIBRARY, SEED, at_least=2.5)]
    if not tls:
        targets.append(
            Target(
                "worker CPU per email vs in-process delivery of the same email",
                LIBRARY,
                INPROCESS,
                at_most=1.5,
                of="delivery",
            )
        )
        targets.append(
            Target(
                "the same for Celery's own prefork worker",
                PREFORK,
                INPROCESS,
                at_most=1.5,
                of="delivery",
            )
        )
    if base is not None:
        targets.append(
            Target(
                f"worker CPU per email vs {base[1]}'s worker",
                LIBRARY,
                base_name(base[1]),
                at_most=1.0,
                of="delivery",
            )
        )
        if t.threads_scope:
            targets.append(
                Target(
                    f"connection threads' CPU per email vs {base[1]}'s",
                    LIBRARY,
                    base_name(base[1]),
                    at_most=1.0,
                    of="connection",
                )
            )
    baselines = [SEED, FAIR] + ([INPROCESS] if not tls else [])
    baselines += [base_name(base[1])] if base is not None else []
    targets = [g for g in targets if g.variant in names and g.baseline in names]
    baselines = [b for b in baselines if b in names]
    return f"**{title}**\n\n" + result.markdown(
        targets=targets, ratios_to=baselines, cpu_ratios_to=baselines
    )


def base_name(label: str) -> str:
    return f"`tenant-notify worker -c 2` at {label} (the same, another install of the library)"


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    lines, tables = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    out = ([f"[{prefix[:-1]}]"] if prefix and lines else []) + lines
    out += [_toml(value, f"{prefix}{key}.") for key, value in tables]
    return "\n".join(out) + "\n"


def cleanup(queues: list[str], key_prefix: str | None) -> None:
    import redis

    extra = [f"{q}.{tail}" for q in queues for tail in ("dead", "deferred")]
    extra += [f"{q}.tenant.{t}" for q in queues for t in TENANT_IDS]
    with kombu.Connection(AMQP) as conn:
        for name in queues + extra:
            channel = conn.channel()
            try:
                channel.queue_delete(name)
                channel.exchange_delete(name)
            except Exception:
                continue
    if key_prefix:
        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])


def _flags(choice: str) -> list[bool]:
    return {"on": [True], "off": [False], "both": [False, True]}[choice]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="calls per round (caller's cost)")
    parser.add_argument("--emails", type=int, default=1000, help="emails per throughput round")
    parser.add_argument(
        "--only", choices=("caller", "throughput"), help="run one of the two comparisons"
    )
    both = ("on", "off", "both")
    parser.add_argument(
        "--events", choices=both, default="off", help="task events of the workers (default: off)"
    )
    parser.add_argument("--tls", choices=both, default="both", help="STARTTLS to the sink")
    parser.add_argument(
        "--pipelining", choices=both, default="both", help="the sink offers PIPELINING"
    )
    parser.add_argument("--base-python", help="an interpreter with another install of the library")
    parser.add_argument("--base-label", default="base", help="what --base-python has installed")
    parser.add_argument(
        "--variants",
        help="throughput: only these variants, by short name, comma-separated (library, "
        "celery prefork, threads pool, seed's way, in-process, fair task, empty task, the "
        "base label); a quick comparison, not a table for the docs",
    )
    parser.add_argument(
        "--threads-pool",
        action="store_true",
        help="also run the library's worker with Celery's threads pool (no pool processes)",
    )
    args = parser.parse_args()
    base = (args.base_python, args.base_label) if args.base_python else None
    variants = frozenset(v.strip() for v in args.variants.split(",")) if args.variants else None
    run = uuid.uuid4().hex[:8]
    caller = f"{run}_caller"
    try:
        if args.only in (None, "caller"):
            publish("celery-caller", caller_cost(caller, args.n, args.rounds), write=args.write)
        if args.only in (None, "throughput"):
            tables = []
            events = _flags(args.events)[::-1]
            with tempfile.TemporaryDirectory(prefix="bench-celery-") as folder:
                for pipelining in _flags(args.pipelining):
                    for tls in _flags(args.tls):
                        for ev in events:
                            tables.append(
                                throughput(
                                    run,
                                    args.emails,
                                    args.rounds,
                                    Path(folder),
                                    tls=tls,
                                    pipelining=pipelining,
                                    events=ev,
                                    threads_pool=args.threads_pool,
                                    base=base,
                                    variants=variants,
                                )
                            )
                            if args.write:  # table by table: a late failure keeps the rest
                                write_section("celery-throughput", "\n".join(tables))
            publish("celery-throughput", "\n".join(tables), write=args.write)
    finally:
        cleanup([f"bench_tn_{caller}_async", f"bench_tn_{caller}_sync"], f"bench:{caller}")
        cleanup([f"bench_hand_{caller}_delay", f"bench_hand_{caller}_confirmed"], None)
        cleanup([f"bench_raw_{caller}", f"bench_raw_{caller}_confirms"], None)


if __name__ == "__main__":
    main()
