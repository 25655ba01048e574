"""In-process delivery end to end: the library, fair hand-written queues, the sink's ceiling.

Run: ``python bench/bench_inprocess.py`` (or ``nox -s bench``). Writes the
``inprocess`` section of docs/benchmarks.md (``--no-write``: print only).

Every variant sends the same order confirmations (a distinct order and customer
each, two tenants, one of them German) from a process of its own to one counting
SMTP sink (bench/smtp_sink.py, aiosmtpd in its own process), all over two held
connections, and is timed from the first send to the last message accepted:

* **tenant-notify, inprocess**: ``send_order_confirmation`` on the in-process
  transport (two workers) with the SMTP provider;
* **fair hand-written queue, smtplib**: a ``queue.Queue`` and two consumer
  threads that render the library's templates with plain Jinja2, build MIME the
  fastest stdlib way and send over one held ``smtplib`` connection each
  (bench/handwritten.py);
* **fair hand-written asyncio, aiosmtplib**: the same on one event loop, two
  consumer tasks, a held ``aiosmtplib`` connection each;
* **sink ceiling**: two threads writing prebuilt SMTP transactions on raw sockets,
  waiting for each reply as smtplib does: what the sink accepts when the client
  costs next to nothing. The same exchange as the library's, so that the ratio is
  the library's own cost: its messages (written by the library itself: the same
  headers, parts and transfer encodings, so the same lines for aiosmtpd, which
  reads DATA line by line), MAIL with SIZE, the final dot in a write of its own,
  and with PIPELINING the envelope in one write and the next one behind the dot;
* **sink ceiling as measured before**: the same clients with the hand-written
  baselines' messages (stdlib MIME: base64 bodies, about two thirds of the
  library's lines), each message and its dot in one write, no envelope behind it;
* with ``--base-python`` (an interpreter with another install of the library,
  e.g. today's main in a second worktree), **tenant-notify at <label>**: the
  first variant's exact code run against that install, in the same rounds.

Each round starts a fresh process per variant; it warms up (connections,
templates, caches) before its window. CPU is read inside the window: the whole
benchmark process (every thread: the system under test), the caller's thread
alone and the delivering rest, and the sink (not part of the system under test:
it stands for the mail server). After every round the sink's count is checked
against what the variant says it sent, so a variant that drops mail fails.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
)
from handwritten import TENANTS, Renderer, fast_mime, order

WARM_UP = 200
TENANT_IDS = ("acme", "globex")
SCOPES = {
    "process": "the sending process, every thread (the system under test)",
    "delivery": "the same minus the caller's thread: the queue's consumers",
    "caller": "the caller's thread while it sends",
    "sink": "the SMTP sink's process (not the system under test)",
}


class Window:
    """Wall clock and CPU of this process, its caller thread and the sink, over a window."""

    def __init__(self, sink_pid: int) -> None:
        self.sink = TreeCpu([sink_pid], children=False)

    def __enter__(self) -> Window:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        self.thread, self.sink_cpu = time.thread_time(), self.sink.seconds()
        return self

    def caller_done(self) -> None:
        self.caller = time.thread_time() - self.thread

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu
        self.thread = time.thread_time() - self.thread
        self.sink_cpu = self.sink.seconds() - self.sink_cpu

    def sample(self, n: int, sent: int, *, threads: bool = True) -> Sample:
        cpu = {"process": self.cpu, "sink": self.sink_cpu}
        if threads:
            cpu.update(delivery=self.cpu - self.thread, caller=self.caller)
        return Sample(ops=n, wall=self.wall, cpu=cpu, extra={"sent": sent})


# --- the variants, each run in a process of its own ----------------------------------------


def round_library(port: int, sink_pid: int, n: int, run: str, workers: int) -> Sample:
    import logging

    import structlog

    from tenant_notify import Notifier

    # As in production: info lines filtered out, so the figures are the library's own.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    notify = Notifier.from_settings(
        {
            "transport": {"backend": "inprocess", "workers": workers, "queue_size": 1_000_000},
            "email": {
                "provider": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "local_hostname": "bench",
            },
            "tenants": TENANTS,
            "idempotency": {"ttl": 600},
            # A cold render compiles the templates inside the render's time limit in
            # older installs; on a loaded machine that can take longer than the 2 s
            # default and fail the warm-up. The same setting for every install.
            "templates": {"render_timeout": 30.0},
        }
    )

    def send(i: int) -> str:
        tenant = TENANT_IDS[i % 2]
        o = order(i, run, tenant)
        return notify.send_order_confirmation(
            order_id=o["order_id"],
            customer_email=o["customer_email"],
            order_total=o["order_total"],
            currency=o["currency"],
            tenant_id=tenant,
        ).id

    def drain() -> None:
        # Polling, not Notifier.wait(): a waiter on the status store is woken by
        # every status saved, which would put its wake-ups into the figures. Polls
        # are rare until the end is near (each takes the transport's lock).
        deadline = time.monotonic() + 300
        while pending := notify.transport.pending:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise TimeoutError("the in-process transport did not drain")
            time.sleep(0.05 if pending > 100 else 0.001)

    def check(ids: list[str]) -> None:
        states = {notify.status(i).state.value for i in ids}
        if states != {"sent"}:
            raise RuntimeError(f"not all sent: {states}")

    warm = [send(-1 - i) for i in range(WARM_UP)]
    drain()
    check(warm)
    with Window(sink_pid) as window:
        ids = [send(i) for i in range(n)]
        window.caller_done()
        drain()
    check(ids)
    notify.close()
    return window.sample(n, WARM_UP + n)


def round_queue(port: int, sink_pid: int, n: int, run: str, workers: int) -> Sample:
    import smtplib

    renderer = Renderer()
    jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def consume() -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="bench") as conn:
            while (job := jobs.get()) is not None:
                tenant = job["tenant_id"]
                raw = fast_mime(tenant, job["customer_email"], *renderer.render(tenant, job))
                conn.sendmail(_sender(tenant), [job["customer_email"]], raw)
                jobs.task_done()
            jobs.task_done()

    threads = [threading.Thread(target=consume) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for i in range(WARM_UP):
        jobs.put(order(-1 - i, run, TENANT_IDS[i % 2]))
    jobs.join()
    with Window(sink_pid) as window:
        for i in range(n):
            jobs.put(order(i, run, TENANT_IDS[i % 2]))
        window.caller_done()
        jobs.join()
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join()
    return window.sample(n, WARM_UP + n)


def round_asyncio(port: int, sink_pid: int, n: int, run: str, workers: int) -> Sample:
    import aiosmtplib

    renderer = Renderer()

    async def main() -> Window:
        jobs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def consume() -> None:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="bench")
            await smtp.connect()
            try:
                while True:
                    job = await jobs.get()
                    tenant = job["tenant_id"]
                    raw = fast_mime(tenant, job["customer_email"], *renderer.render(tenant, job))
                    await smtp.sendmail(_sender(tenant), [job["customer_email"]], raw)
                    jobs.task_done()
            finally:
                await smtp.quit()

        consumers = [asyncio.create_task(consume()) for _ in range(workers)]
        for i in range(WARM_UP):
            jobs.put_nowait(order(-1 - i, run, TENANT_IDS[i % 2]))
        await jobs.join()
        with Window(sink_pid) as window:
            for i in range(n):
                jobs.put_nowait(order(i, run, TENANT_IDS[i % 2]))
            window.caller_done()
            await jobs.join()
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        return window

    window = asyncio.run(main())
    return window.sample(n, WARM_UP + n, threads=False)


def round_ceiling(port: int, sink_pid: int, n: int, run: str, workers: int) -> Sample:
    """The sink's limit for the library's own exchange (see the module doc)."""
    return _ceiling(port, sink_pid, n, _library_transactions(run), workers, as_library=True)


def round_ceiling_stdlib(port: int, sink_pid: int, n: int, run: str, workers: int) -> Sample:
    """The same for the hand-written baselines' messages (stdlib MIME, base64 bodies),
    each sent with its final dot in one write: the ceiling as it was measured before."""
    renderer = Renderer()
    transactions = []
    for tenant in TENANT_IDS:
        o = order(0, run, tenant)
        raw = fast_mime(tenant, o["customer_email"], *renderer.render(tenant, o))
        transactions.append(_commands(_sender(tenant), o["customer_email"], raw, size=False))
    return _ceiling(port, sink_pid, n, transactions, workers, as_library=False)


def _library_transactions(run: str) -> list[list[bytes]]:
    """What the library's SMTP provider sends for an order of each tenant.

    The library itself renders and writes the messages (memory provider, eager
    transport, then the provider's own ``wire_bytes``), so the ceiling's messages
    are the library's byte for byte but for the Message-ID, the boundary and the
    order's own fields: the same headers, parts and transfer encodings, so the same
    lines for the sink to read; and MAIL carries the SIZE the library adds.
    """
    from tenant_notify import Notifier
    from tenant_notify._mime import wire_bytes
    from tenant_notify.providers.memory import get_outbox

    outbox = f"ceiling-{run}"
    table = {
        "transport": {"backend": "eager"},
        "email": {"provider": "memory", "outbox": outbox},
        "tenants": TENANTS,
    }
    transactions = []
    with Notifier.from_settings(table) as notify:
        for tenant in TENANT_IDS:
            o = order(0, run, tenant)
            notify.send_order_confirmation(
                order_id=o["order_id"],
                customer_email=o["customer_email"],
                order_total=o["order_total"],
                currency=o["currency"],
                tenant_id=tenant,
            )
            raw, _ = wire_bytes(get_outbox(outbox).emails[-1])
            transactions.append(_commands(_sender(tenant), o["customer_email"], raw, size=True))
    return transactions


def _commands(sender: str, to: str, raw: bytes, *, size: bool) -> list[bytes]:
    """MAIL, RCPT, DATA, the dot-stuffed message and the final dot."""
    data = raw.replace(b"\n.", b"\n..")
    if data.startswith(b"."):
        data = b"." + data
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return [
        f"MAIL FROM:<{sender}>{f' SIZE={len(raw)}' if size else ''}\r\n".encode(),
        f"RCPT TO:<{to}>\r\n".encode(),
        b"DATA\r\n",
        data,
        b".\r\n",
    ]


def _ceiling(
    port: int,
    sink_pid: int,
    n: int,
    transactions: list[list[bytes]],
    workers: int,
    *,
    as_library: bool,
) -> Sample:
    def client(count: int, ready: threading.Barrier) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            # As the library's connections: each write goes out at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            replies = sock.makefile("rb")
            _reply(replies)
            sock.sendall(b"EHLO bench\r\n")
            # With PIPELINING offered, pipeline as the library does: the sink's limit
            # for the exchanges the library has with it.
            pipelined = b"PIPELINING" in _reply(replies, lines=True)
            _transactions(sock, replies, transactions, WARM_UP // workers, pipelined, as_library)
            ready.wait()
            ready.wait()  # the window starts
            _transactions(sock, replies, transactions, count, pipelined, as_library)
            sock.sendall(b"QUIT\r\n")
            _reply(replies)

    ready = threading.Barrier(workers + 1)
    share = [n // workers + (k < n % workers) for k in range(workers)]
    threads = [threading.Thread(target=client, args=(count, ready)) for count in share]
    for thread in threads:
        thread.start()
    ready.wait()
    with Window(sink_pid) as window:
        ready.wait()
        window.caller_done()
        for thread in threads:
            thread.join()
    return window.sample(n, (WARM_UP // workers) * workers + n, threads=False)


def _transactions(
    sock: socket.socket,
    replies: Any,
    transactions: list[list[bytes]],
    count: int,
    pipelined: bool,
    as_library: bool,
) -> None:
    """``count`` messages: MAIL, RCPT and DATA, each reply read (with PIPELINING, the
    three in one write), then the message with its final dot.

    ``as_library``: written as the library's SMTP provider writes them (see
    providers/smtp.py): the final dot in a write of its own, and with PIPELINING the
    next message's envelope written behind the dot before its reply is read (RFC
    2920 3.1: one round trip a message on a busy connection). Else the message and
    its dot in one write, each message after the last one's reply.
    """
    followed = False
    for i in range(count):
        envelope, data, dot = (commands := transactions[i % 2])[:3], commands[3], commands[4]
        codes = []
        if pipelined:
            if not followed:
                sock.sendall(b"".join(envelope))
            codes += [_reply(replies) for _ in envelope]
        else:
            for command in envelope:
                sock.sendall(command)
                codes.append(_reply(replies))
        if as_library:
            sock.sendall(data)
            sock.sendall(dot)
        else:
            sock.sendall(data + dot)
        followed = as_library and pipelined and i + 1 < count
        if followed:
            sock.sendall(b"".join(transactions[(i + 1) % 2][:3]))
        codes.append(_reply(replies))
        if any(code not in (250, 354) for code in codes):
            raise RuntimeError(f"the sink answered {codes}")


def _reply(replies: Any, *, lines: bool = False) -> Any:
    """One reply's code (or, with ``lines``, all its lines), read line by line."""
    text = b""
    while True:
        line = replies.readline()
        if not line:
            raise ConnectionError("the sink closed the connection")
        text += line
        if line[3:4] != b"-":
            return text if lines else int(line[:3])


def _sender(tenant: str) -> str:
    return TENANTS[tenant]["email_from"].rpartition("<")[2].rstrip(">")


ROUNDS: dict[str, Callable[[int, int, int, str, int], Sample]] = {
    "library": round_library,
    "queue": round_queue,
    "asyncio": round_asyncio,
    "ceiling": round_ceiling,
    "ceiling-stdlib": round_ceiling_stdlib,
}

LIBRARY = "tenant-notify, inprocess (2 workers)"
QUEUE = "fair hand-written queue: plain Jinja2, stdlib MIME, held smtplib connections (2 threads)"
ASYNCIO = (
    "fair hand-written asyncio: plain Jinja2, stdlib MIME, held aiosmtplib connections (2 tasks)"
)
CEILING = (
    "sink ceiling: the library's own messages and writes, prebuilt, on raw sockets (2 connections)"
)
CEILING_STDLIB = (
    "sink ceiling as measured before: stdlib MIME messages (base64, fewer lines), "
    "each with its dot in one write (2 connections)"
)


#: The library when issue 16 was filed: its CPU-per-email target is against this install.
ISSUE_BASE = "7bbd47b"


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="emails per round and variant")
    parser.add_argument("--workers", type=int, default=2, help="threads/connections per variant")
    parser.add_argument("--pipelining", action="store_true", help="the sink offers PIPELINING")
    parser.add_argument(
        "--base-python",
        action="append",
        default=[],
        help="an interpreter with another install of the library (repeatable)",
    )
    parser.add_argument(
        "--base-label",
        action="append",
        default=[],
        help=f"what each --base-python has installed, in order (default {ISSUE_BASE})",
    )
    parser.add_argument("--round", choices=ROUNDS, help=argparse_hidden())
    parser.add_argument("--port", type=int, help=argparse_hidden())
    parser.add_argument("--sink-pid", type=int, help=argparse_hidden())
    parser.add_argument("--run-id", default="r", help=argparse_hidden())
    args = parser.parse_args()
    if args.round:
        sample = ROUNDS[args.round](args.port, args.sink_pid, args.n, args.run_id, args.workers)
        print(sample.to_json())
        return

    from smtp_sink import SmtpSink

    with SmtpSink(pipelining=args.pipelining) as sink:

        def runner(kind: str, python: str = sys.executable) -> Callable[[int], Sample]:
            def run(round_no: int) -> Sample:
                before = sink.count
                sample = run_json(
                    [
                        *(python, str(Path(__file__).resolve()), "--round", kind),
                        *("--port", str(sink.port), "--sink-pid", str(sink.pid)),
                        *("-n", str(args.n), "--workers", str(args.workers)),
                        *("--run-id", f"{kind}{round_no}"),
                    ]
                )
                arrived = sink.count - before
                if arrived != sample.extra["sent"]:
                    raise RuntimeError(f"{kind}: sent {sample.extra['sent']}, {arrived} arrived")
                return sample

            return run

        guarantee = "validated, idempotent, status recorded, retried; queued in memory"
        variants = [
            Variant(LIBRARY, runner("library"), guarantee=guarantee, short="library"),
            Variant(
                QUEUE,
                runner("queue"),
                guarantee="queued in memory; nothing checked or recorded",
                baseline=True,
                short="queue",
            ),
            Variant(
                ASYNCIO,
                runner("asyncio"),
                guarantee="queued in memory; nothing checked or recorded",
                baseline=True,
                short="asyncio",
            ),
            Variant(
                CEILING,
                runner("ceiling"),
                guarantee="none (the sink's limit)",
                baseline=True,
                short="ceiling",
            ),
            Variant(
                CEILING_STDLIB,
                runner("ceiling-stdlib"),
                guarantee="none (the sink's limit for other messages)",
                baseline=True,
                short="stdlib ceiling",
            ),
        ]
        labels = args.base_label + [ISSUE_BASE] * (len(args.base_python) - len(args.base_label))
        bases = {
            label: f"tenant-notify at {label}, inprocess (2 workers)"
            for label in labels[: len(args.base_python)]
        }
        for (label, base_name), python in zip(bases.items(), args.base_python, strict=True):
            variants.append(
                Variant(
                    base_name,
                    runner("library", python),
                    guarantee=guarantee,
                    baseline=True,
                    short=label,
                )
            )
        result = Comparison(
            "in-process end to end",
            variants,
            rounds=args.rounds,
            metric="rate",
            unit="email",
            cpu_scopes=SCOPES,
        ).run()

    targets = [
        Target(
            "in-process end to end vs the fair hand-written queue", LIBRARY, QUEUE, at_least=1.5
        ),
        Target("in-process end to end vs the sink's ceiling", LIBRARY, CEILING, at_least=0.6),
    ]
    if ISSUE_BASE in bases:
        # Issue 16's target is against the library as it was when the issue was filed.
        targets.append(
            Target(
                f"library CPU per email vs {ISSUE_BASE} (≤ 0.75x: 25% below)",
                LIBRARY,
                bases[ISSUE_BASE],
                at_most=0.75,
                of="process",
            )
        )
    key = "inprocess-pipelining" if args.pipelining else "inprocess"
    cpu_baselines = [QUEUE, *bases.values()]
    publish(key, result.markdown(targets=targets, cpu_ratios_to=cpu_baselines), write=args.write)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
