"""The floor under a Celery worker's CPU per email: is 1.5x the in-process delivery reachable?

Run: ``python bench/bench_worker_floor.py`` (RabbitMQ and Redis on loopback, as for
bench/bench_celery.py). Writes the ``worker-floor`` section of docs/benchmarks.md
(``--no-write``: print only).

Issue 16 asks for a worker that spends at most 1.5x the CPU of the in-process delivery
of the same email. A worker that keeps the library's guarantees (a shared ledger: the
delivery claim and its completion in Redis; the broker's message acknowledged once the
completion is written) does, per email, everything the in-process delivery does
(render, MIME, SMTP) and, on top, at least one AMQP receive and acknowledgement and the
claim's and the completion's Redis round trips. So if those alone cost more than 0.5x
the in-process delivery, no such worker can meet the bar, however little else it does.
This measures them, in the same interleaved rounds, each in a process of its own:

* **(a) in-process delivery** of the same order confirmations (bench/bench_inprocess.py's
  library round: two worker threads, memory stores, the counting SMTP sink in its own
  process); CPU of the delivering threads (the process minus the caller's thread),
  as bench/bench_celery.py's in-process row;
* **(b) AMQP receive and ack, py-amqp alone**: the task messages the library publishes
  (a Notifier on the ``celery`` transport fills the tenants' queues beforehand: the same
  bodies, headers and properties the worker receives), consumed with py-amqp (no kombu,
  no Celery, no library), prefetch 32 per queue as the worker's; frames read the
  cheapest way (one non-blocking ``recv`` a wake-up, handed to py-amqp's frame handler),
  each body's JSON read, each message acknowledged on its own (``basic.ack`` without
  ``multiple``) as it is done;
* **(c) the ledger's Redis round trips, redis-py alone**: per email two pipelined calls
  (``pipeline(transaction=False)``): the claim (``SET idem:delivery:<id> <lease> NX PX``
  and ``GET status:<id>``, the status the caller wrote) and the completion (``SET
  idem:delivery:<id> done PX`` and ``SET status:<id> <the final status's JSON> PX``),
  on the statuses the library's caller wrote for those emails; the final status's JSON
  is made beforehand (not the round trips' cost);
* **(b+c) both in one loop**: receive, claim, complete, acknowledge: a worker minus the
  delivery itself, one process;
* and the same three below any client library, as the lower bound of what any client
  pays: **(b0)** the frames split by hand, only the delivery tag and the body read (no
  properties decoded), the acknowledgement a frame packed by hand; **(c0)** the same
  two round trips as RESP packed by hand on a plain socket, the replies read just far
  enough to check them; **(b0+c0)** both in one loop;
* and, for reference, not floors: the library's own ledger calls of one delivery on its
  Redis stores, one thread, paced as the floors (claim, ``sending``, the hand-over record,
  completion, ``sent``); ``tenant-notify worker -c 2`` draining the same kind of fill into
  the sink (bench/bench_celery.py's library row).

(b), (c) and (b+c) run **at the in-process delivery's rate** (that of its latest round):
a message is finished no earlier than its turn at that rate, so each wake-up finds what a
worker delivering at that rate finds (about one message), not the batches of a consumer
running flat out. CPU is that of the round's process (every thread). The table's ratio
"(b) + (c) vs (a)" is paired per round; the verdict reads its median against 0.5.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import Comparison, Sample, Stats, Variant, arguments, cpu_seconds, publish, run_json

ROOT = Path(__file__).resolve().parents[1]
AMQP_HOST = "127.0.0.1:5672"
REDIS = "redis://127.0.0.1:6379/15"
PREFETCH = 32  # the worker's prefetch per queue (its default threads)
LEASE_MS = 60_000
TTL_MS = 600_000
DONE = "\0done"

IN_PROCESS = "(a) in-process delivery of the same emails (2 threads, memory stores)"
AMQP_ONLY = "(b) AMQP receive + ack of the same messages, py-amqp alone"
REDIS_ONLY = "(c) claim + completion round trips, redis-py pipelines alone"
BOTH = "(b+c) receive, claim, complete, ack in one loop"
AMQP_RAW = "(b0) AMQP receive + ack by hand: frames split, no properties decoded"
REDIS_RAW = "(c0) claim + completion as hand-packed RESP on a plain socket"
BOTH_RAW = "(b0+c0) both by hand in one loop"
LEDGER = "the library's own ledger calls of a delivery, one thread (reference)"
WORKER = "`tenant-notify worker -c 2` (for reference)"


# --- the measured loops, each in a process of its own ------------------------------------


class _Pace:
    """Finish message k no earlier than k / rate seconds after the first."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.start: float | None = None

    def due(self, k: int) -> float:
        """Seconds until message ``k`` is due (0 or less: now)."""
        if self.start is None:
            self.start = time.perf_counter()
        return self.start + k * self.interval - time.perf_counter()


def _recv_frames(sock: socket.socket, buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """What the socket holds (one non-blocking recv), as whole frames; a frame cut
    short stays in ``buffer`` for the next call."""
    try:
        chunk = sock.recv(65536, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return []
    if not chunk:
        raise OSError("the broker closed the connection")
    buffer += chunk
    frames = []
    pos, size_all = 0, len(buffer)
    while size_all - pos >= 8:
        frame_type, channel, size = _FRAME.unpack_from(buffer, pos)
        end = pos + 7 + size
        if end >= size_all:
            break
        frames.append((frame_type, channel, bytes(buffer[pos + 7 : end])))
        pos = end + 1
    del buffer[:pos]
    return frames


_FRAME = struct.Struct(">BHI")
_METHOD = struct.Struct(">HH")
_TAG = struct.Struct(">Q")
_ACK = struct.Struct(">BHIHHQB")


class _RawDeliveries:
    """Basic.Deliver frames split by hand: the delivery tag and the body, nothing else."""

    def __init__(self, sock: socket.socket, ready: deque[tuple[int, bytes]]) -> None:
        self.sock, self.ready = sock, ready
        self.buffer = bytearray()
        self.tag = 0
        self.size = 0
        self.body: list[bytes] = []
        self.got = 0

    def read(self) -> None:
        for frame_type, _, payload in _recv_frames(self.sock, self.buffer):
            if frame_type == 1:
                if _METHOD.unpack_from(payload) != (60, 60):
                    raise RuntimeError("a method other than basic.deliver")
                tag_at = 4 + 1 + payload[4]  # after the consumer tag
                self.tag = _TAG.unpack_from(payload, tag_at)[0]
            elif frame_type == 2:
                self.size = _TAG.unpack_from(payload, 4)[0]
                self.body, self.got = [], 0
            elif frame_type == 3:
                self.body.append(payload)
                self.got += len(payload)
                if self.got >= self.size:
                    self.ready.append((self.tag, b"".join(self.body)))


class _Resp:
    """Hand-packed RESP on a plain socket; replies read just far enough to check them."""

    def __init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.round_trip(_pack("SELECT", "15"), 1)

    def round_trip(self, packed: bytes, replies: int) -> list[bytes | None]:
        self.sock.sendall(packed)
        out: list[bytes | None] = []
        while len(out) < replies:
            reply = self._reply()
            if reply is _MORE:
                self.buffer += self.sock.recv(65536)
                continue
            out.append(reply)  # type: ignore[arg-type]
        return out

    def _reply(self) -> object:
        buffer = self.buffer
        line_end = buffer.find(b"\r\n")
        if line_end < 0:
            return _MORE
        kind = buffer[:1]
        if kind == b"$":
            size = int(buffer[1:line_end])
            if size < 0:
                self.buffer = buffer[line_end + 2 :]
                return None
            end = line_end + 2 + size
            if len(buffer) < end + 2:
                return _MORE
            self.buffer = buffer[end + 2 :]
            return buffer[line_end + 2 : end]
        if kind == b"-":
            raise RuntimeError(buffer[:line_end].decode())
        self.buffer = buffer[line_end + 2 :]
        return buffer[1:line_end]


_MORE = object()


def _pack(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _library_ledger(prefix: str) -> Callable[[str], None]:
    """The library's own ledger calls of one delivery (for reference: not a floor):
    claim, ``sending``, the hand-over record, completion, ``sent``, on its Redis stores."""
    from tenant_notify.config import load_settings
    from tenant_notify.models import DeliveryState
    from tenant_notify.stores.redis import RedisIdempotencyStore, RedisStatusStore, connect

    client = connect(load_settings({"redis": {"url": REDIS, "key_prefix": prefix}}))
    claims = RedisIdempotencyStore(client, key_prefix=prefix)
    statuses = RedisStatusStore(client, key_prefix=prefix)
    warm = f"warm-up:{uuid.uuid4().hex}"  # connected before the window
    claims.claim(warm, 1.0)
    claims.release(warm)

    def ledger(notification_id: str) -> None:
        key = f"delivery:{notification_id}"
        claim = claims.claim(key, LEASE_MS / 1000)
        if claim.status is None:
            raise RuntimeError(f"claim of {notification_id}: {claim}")
        sending = claim.status.evolve(state=DeliveryState.SENDING, attempts=1)
        statuses.save(sending)
        claims.mark_handed(key, "smtp", TTL_MS / 1000)
        claims.complete(key, TTL_MS / 1000)
        statuses.save(
            sending.evolve(
                state=DeliveryState.SENT,
                provider="smtp",
                provider_message_id=f"<{notification_id}@acme.test>",
            )
        )

    return ledger


def round_loop(args: Any) -> Sample:
    """One loop round: ``args.kind`` is ``amqp``, ``redis`` or ``both``, each with
    ``-raw`` for the hand-made client."""
    work = json.loads(Path(args.work).read_text())
    ids: list[str] = work["ids"]
    finals: dict[str, str] = work["finals"]
    prefix: str = work["key_prefix"]
    n = len(ids)
    pace = _Pace(args.rate)
    kind, _, raw = args.kind.partition("-")
    use_amqp = kind in ("amqp", "both")
    use_redis = kind in ("redis", "both")  # ("ledger": the library's own, below)
    ledger: Callable[[str], None] | None = None
    if use_redis and raw:
        resp = _Resp()

        def ledger(notification_id: str) -> None:
            claim_key = f"{prefix}idem:delivery:{notification_id}"
            status_key = f"{prefix}status:{notification_id}"
            token = "\0lease:" + uuid.uuid4().hex
            claim = _pack("SET", claim_key, token, "NX", "PX", "60000") + _pack("GET", status_key)
            acquired, previous = resp.round_trip(claim, 2)
            if acquired != b"OK" or previous is None:
                raise RuntimeError(f"claim of {notification_id}: {acquired!r}, {previous!r}")
            done = _pack("SET", claim_key, DONE, "PX", "600000")
            done += _pack("SET", status_key, finals[notification_id], "PX", "600000")
            resp.round_trip(done, 2)

    elif use_redis:
        import redis

        client = redis.Redis.from_url(REDIS)
        client.ping()

        def ledger(notification_id: str) -> None:
            claim_key = f"{prefix}idem:delivery:{notification_id}"
            status_key = f"{prefix}status:{notification_id}"
            pipe = client.pipeline(transaction=False)
            pipe.set(claim_key, "\0lease:" + uuid.uuid4().hex, nx=True, px=LEASE_MS)
            pipe.get(status_key)
            acquired, previous = pipe.execute()
            if not acquired or previous is None:
                raise RuntimeError(f"claim of {notification_id}: {acquired!r}, {previous!r}")
            pipe = client.pipeline(transaction=False)
            pipe.set(claim_key, DONE, px=TTL_MS)
            pipe.set(status_key, finals[notification_id], px=TTL_MS)
            pipe.execute()

    if kind == "ledger":
        ledger = _library_ledger(prefix)
    if not use_amqp:
        assert ledger is not None
        cpu = cpu_seconds()
        wall = time.perf_counter()
        for k, notification_id in enumerate(ids):
            wait = pace.due(k)
            if wait > 0:
                time.sleep(wait)
            ledger(notification_id)
        return Sample(n, time.perf_counter() - wall, {"process": cpu_seconds() - cpu})

    import amqp

    conn = amqp.Connection(host=AMQP_HOST, userid="guest", password="guest", heartbeat=0)
    conn.connect()
    channel = conn.channel()
    ready: deque[tuple[int, bytes]] = deque()
    for queue in work["queues"]:
        channel.basic_qos(0, PREFETCH, False)
        channel.basic_consume(queue, callback=lambda m: ready.append((m.delivery_tag, m.body)))
    sock = conn.sock
    if raw:
        deliveries = _RawDeliveries(sock, ready)
        read: Callable[[], None] = deliveries.read
        channel_id = channel.channel_id

        def ack(tag: int) -> None:
            sock.sendall(_ACK.pack(1, channel_id, 13, 60, 80, tag, 0) + b"\xce")

    else:
        buffer = bytearray()

        def read() -> None:
            for frame in _recv_frames(sock, buffer):
                conn.on_inbound_frame(frame)

        def ack(tag: int) -> None:
            channel.basic_ack(tag)

    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    done = 0
    cpu = cpu_seconds()
    wall: float | None = None
    deadline = time.monotonic() + 120
    while done < n:
        if not ready:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done} of {n} messages received")
            selector.select(1.0)
            read()
            continue
        wait = pace.due(done)
        if wait > 0:
            time.sleep(wait)
            read()  # what came meanwhile, as a worker's wake-up finds it
        tag, body = ready.popleft()
        if wall is None:
            wall = time.perf_counter()
        args_, _, _ = json.loads(body)
        notification_id = args_[0]["id"]
        if notification_id not in finals:
            raise RuntimeError(f"an unexpected message: {notification_id}")
        if ledger is not None:
            ledger(notification_id)
        ack(tag)
        done += 1
    assert wall is not None
    sample = Sample(n, time.perf_counter() - wall, {"process": cpu_seconds() - cpu})
    conn.close()
    return sample


# --- the fill, the variants ----------------------------------------------------------------


class Floor:
    def __init__(self, emails: int, folder: Path, sink: Any) -> None:
        self.emails, self.folder, self.sink = emails, folder, sink
        self.rate = 0.0  # the in-process delivery's latest rate
        self.run = uuid.uuid4().hex[:8]

    def fill(self, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send ``emails`` order confirmations on the celery transport (messages in the
        tenants' queues, ``queued`` statuses in Redis); the work file for a loop round."""
        import bench_celery as bc

        from tenant_notify import Notifier
        from tenant_notify._json import compact
        from tenant_notify.models import DeliveryState

        table = bc.settings(tag, self.sink.port)
        ids = []
        with Notifier.from_settings(table) as notify:
            for i in range(self.emails):
                ids.append(bc.send_order(notify, i, tag).id)  # type: ignore[attr-defined]
            if not notify.transport.flush(300):  # type: ignore[attr-defined]
                raise RuntimeError("the fill was not confirmed by the broker")
            finals = {}
            for notification_id in ids:
                queued = notify.status(notification_id)
                sent = queued.evolve(
                    state=DeliveryState.SENT,
                    attempts=1,
                    provider="smtp",
                    provider_message_id=f"<{notification_id}@acme.test>",
                )
                finals[notification_id] = compact(sent.to_dict())
        queue = table["celery"]["queue"]
        work = {
            "ids": ids,
            "finals": finals,
            "key_prefix": table["redis"]["key_prefix"],
            "queues": [f"{queue}.tenant.{t}" for t in bc.TENANT_IDS],
        }
        return table, work

    def loop(self, kind: str) -> Callable[[int], Sample]:
        def run(round_no: int) -> Sample:
            import bench_celery as bc

            tag = f"floor{self.run}_{kind}_{round_no}"
            table, work = self.fill(tag)
            if kind.startswith("redis") or kind == "ledger":
                bc.purge(table["celery"]["queue"])
            path = self.folder / f"{tag}.json"
            path.write_text(json.dumps(work))
            try:
                return run_json(
                    [
                        *(sys.executable, str(Path(__file__).resolve()), "--round", kind),
                        *("--work", str(path), "--rate", str(self.rate)),
                    ]
                )
            finally:
                bc.cleanup([table["celery"]["queue"]], table["redis"]["key_prefix"])

        return run

    def inprocess(self, round_no: int) -> Sample:
        before = self.sink.count
        sample = run_json(
            [
                *(sys.executable, str(ROOT / "bench" / "bench_inprocess.py"), "--round", "library"),
                *("--port", str(self.sink.port), "--sink-pid", str(self.sink.pid)),
                *("-n", str(self.emails), "--run-id", f"floor{self.run}_{round_no}"),
            ]
        )
        if self.sink.count - before != sample.extra["sent"]:
            raise RuntimeError(f"in-process: sent {sample.extra['sent']}, fewer arrived")
        self.rate = sample.ops / sample.wall
        return Sample(sample.ops, sample.wall, {"process": sample.cpu["delivery"]})

    def worker(self, round_no: int) -> Sample:
        import bench_celery as bc

        t = bc.Throughput(
            f"floor{self.run}", self.emails, self.folder, self.sink, tls=False, events=False
        )
        sample = t.library(round_no)
        return Sample(sample.ops, sample.wall, {"process": sample.cpu["delivery"]})


def _ratio_line(result: Any, names: list[str], label: str) -> tuple[str, Stats]:
    per_round = [result.cpu(name, "process") for name in names]
    base = result.cpu(IN_PROCESS, "process")
    sums = [sum(values) for values in zip(*per_round, strict=True)]
    ratios = [s / b for s, b in zip(sums, base, strict=True)]
    stats = Stats.of(ratios)
    return f"{label}: **{stats.median:.2f}x** [{stats.low:.2f}-{stats.high:.2f}]", stats


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=1000, help="emails per round and variant")
    parser.add_argument(
        "--no-worker", action="store_true", help="leave out the worker's reference row"
    )
    parser.add_argument(
        "--round",
        choices=("amqp", "redis", "both", "amqp-raw", "redis-raw", "both-raw", "ledger"),
        help=argparse_hidden(),
    )
    parser.add_argument("--work", help=argparse_hidden())
    parser.add_argument("--rate", type=float, default=0.0, help=argparse_hidden())
    args = parser.parse_args()
    if args.round:
        args.kind = args.round
        print(round_loop(args).to_json())
        return

    from smtp_sink import SmtpSink

    with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder, SmtpSink() as sink:
        floor = Floor(args.emails, Path(folder), sink)
        floor.inprocess(-1)  # warms up and gives the first rounds their rate
        recorded = "claimed, completed and recorded in Redis"
        variants = [
            Variant(
                IN_PROCESS,
                floor.inprocess,
                guarantee="queued in memory; statuses in memory",
                baseline=True,
                short="in-process",
            ),
            Variant(AMQP_ONLY, floor.loop("amqp"), guarantee="acked one by one", short="amqp"),
            Variant(REDIS_ONLY, floor.loop("redis"), guarantee=recorded, short="redis"),
            Variant(BOTH, floor.loop("both"), guarantee=recorded + "; then acked", short="both"),
            Variant(AMQP_RAW, floor.loop("amqp-raw"), guarantee="acked one by one", short="amqp0"),
            Variant(REDIS_RAW, floor.loop("redis-raw"), guarantee=recorded, short="redis0"),
            Variant(
                BOTH_RAW,
                floor.loop("both-raw"),
                guarantee=recorded + "; then acked",
                short="both0",
            ),
            Variant(
                LEDGER,
                floor.loop("ledger"),
                guarantee=recorded + "; statuses `sending` and `sent`; hand-over record",
                short="ledger",
            ),
        ]
        if not args.no_worker:
            variants.append(
                Variant(
                    WORKER,
                    floor.worker,
                    guarantee="delivered at least once, " + recorded + "; acked late",
                    short="worker",
                )
            )
        result = Comparison(
            "worker floor",
            variants,
            rounds=args.rounds,
            metric="rate",
            unit="email",
            cpu_scopes={
                "process": "(a): the delivering threads (the process minus its caller's "
                "thread); (b), (c), (b+c): the round's process; the worker: its whole tree",
            },
        ).run()
    line, stats = _ratio_line(result, [AMQP_ONLY, REDIS_ONLY], "(b) + (c) vs (a), CPU per email")
    both_line, _ = _ratio_line(result, [BOTH], "(b+c) in one loop vs (a)")
    raw_line, raw = _ratio_line(result, [AMQP_RAW, REDIS_RAW], "(b0) + (c0) vs (a)")
    both_raw_line, _ = _ratio_line(result, [BOTH_RAW], "(b0+c0) in one loop vs (a)")

    def verdict(figure: Stats, clients: str) -> str:
        left = 1.5 - figure.median
        if figure.median <= 0.5:
            return f"with {clients}, {left:.2f}x of (a) is left for the delivery: within reach."
        return (
            f"with {clients}, {left:.2f}x of (a) is left for the delivery, which costs 1.0x: "
            "**out of reach** for a worker that keeps a shared ledger on Redis and acks on "
            "RabbitMQ."
        )

    notes = [
        "Floor (paired per round, median [range]):",
        f"- {line} (bar: 0.5x)",
        f"- {both_line}",
        f"- {raw_line} (below any client library)",
        f"- {both_raw_line}",
        f"- {verdict(stats, 'py-amqp and redis-py')}",
        f"- {verdict(raw, 'clients made by hand')}",
        "",
        f"(b), (c) and (b+c) paced at the in-process delivery's latest rate "
        f"({floor.rate:,.0f}/s in the last round).",
    ]
    publish(
        "worker-floor",
        result.markdown(notes=notes, ratios_to=[IN_PROCESS], cpu_ratios_to=[IN_PROCESS]),
        write=args.write,
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
    main()
