"""Infrastructure faults for the delivery-ledger tests and bench/bench_faults.py.

:class:`FaultProxy` sits on loopback in front of the shared Redis or RabbitMQ and
can *reset* every connection (and refuse new ones) or *stall* them (hold every
byte, then forward it all), until :meth:`FaultProxy.restore`. :class:`FaultWorker`
is a real ``tenant-notify worker`` in a process group of its own, so a test can
SIGKILL the whole group at once. :func:`run_fault` runs one of the faults of
issue 9's "Why" against N order confirmations and counts what the SMTP server
received: sent, lost, doubled.

The shared services are never stopped or reconfigured: only the proxies, the
worker processes and the SMTP server started here are, by their own handles.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import Worker, cleanup, toml

REDIS = ("127.0.0.1", 6379)
RABBITMQ = ("127.0.0.1", 5672)
REDIS_DB = 15
TENANTS = {
    "acme": ("Acme Shop", "orders@acme.test"),
    "globex": ("Globex Café", "hello@globex.test"),
    "initech": ("Initech", "noreply@initech.test"),
}


class FaultProxy:
    """A loopback TCP proxy that can reset or stall the connections through it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._flowing = threading.Event()  # bytes to the target
        self._flowing.set()
        self._answering = threading.Event()  # bytes from the target
        self._answering.set()
        self._refusing = False
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port: int = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    # --- faults --------------------------------------------------------------------

    def reset(self) -> None:
        """Reset every open connection; reset new ones too, until :meth:`restore`."""
        with self._lock:
            self._refusing = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _abort(sock)

    def stall(self, *, replies_only: bool = False) -> None:
        """Hold every byte in both directions (connections stay open) until
        :meth:`restore`; ``replies_only``: only those coming back from the target."""
        if not replies_only:
            self._flowing.clear()
        self._answering.clear()

    def restore(self) -> None:
        with self._lock:
            self._refusing = False
        self._flowing.set()
        self._answering.set()

    def close(self) -> None:
        self._closed = True
        self.restore()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self.reset()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b, gate in (
                (client, upstream, self._flowing),
                (upstream, client, self._answering),
            ):
                threading.Thread(target=self._pipe, args=(a, b, gate), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, gate: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                gate.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _abort(sock: socket.socket) -> None:
    """Close with a RST, as a peer that crashed or a middlebox that dropped it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # A pipe thread blocked reading it would keep the socket open (and the RST
    # unsent) until the peer next writes: wake it first.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


def settings_for(
    run_id: str,
    smtp_port: int,
    *,
    redis_port: int = REDIS[1],
    amqp_port: int = RABBITMQ[1],
    **celery: Any,
) -> dict[str, Any]:
    """Settings for one side (a caller or the worker), with the library's defaults
    for every delivery-ledger setting (lease, timeouts) but where noted."""
    return {
        "transport": "celery",
        "email": {"provider": "smtp", "host": "127.0.0.1", "port": smtp_port, "timeout": 5},
        "retry": {"initial_delay": 0.2, "max_delay": 1.0, "max_attempts": 5, "jitter": 0},
        "celery": {
            "broker_url": f"amqp://guest:guest@127.0.0.1:{amqp_port}//",
            "queue": f"tn_fault_{run_id}",
            "dead_letter_queue": f"tn_fault_{run_id}.dead",
            "ignore_result": True,
            **celery,
        },
        "redis": {
            "url": f"redis://127.0.0.1:{redis_port}/{REDIS_DB}",
            "key_prefix": f"tn_fault:{run_id}:",
        },
        "tenants": {
            tenant_id: {"name": name, "email_from": sender}
            for tenant_id, (name, sender) in TENANTS.items()
        },
    }


class FaultWorker(Worker):
    """``tenant-notify worker`` in a process group of its own (restartable)."""

    def __init__(self, settings: dict[str, Any], folder: Path, concurrency: int = 2) -> None:
        name = f"worker-{uuid.uuid4().hex[:6]}"
        config_file = folder / f"{name}.toml"
        config_file.write_text(toml(settings) + "\n", encoding="utf-8")
        super().__init__(
            config_file,
            folder,
            name,
            library_worker=["-c", str(concurrency)],
            new_session=True,
            name=name,
        )


# --- the faults ----------------------------------------------------------------------

#: name -> what it does, as issue 9's "Why" lists them.
FAULTS = {
    "worker-redis-reset": "worker-side Redis reset for 5 s mid-run",
    "caller-redis-stall": "caller-side Redis stalled for 3 s mid-send",
    "broker-stall-sync": 'confirms "sync", `publish_timeout` 1.5 s, broker stalled 3 s mid-send',
    "broker-reset-sync": 'confirms "sync", `publish_timeout` 1.5 s, broker reset 3 s mid-send',
    "group-sigkill": "the worker's whole process group SIGKILLed mid-run, default settings",
}


@dataclass
class Counts:
    """What one fault run came to."""

    fault: str
    notifications: int
    sent: int = 0  # distinct notifications the SMTP server received
    lost: int = 0  # receipts (or retried sends) never delivered, and not reported: silent
    doubled: int = 0  # notifications received more than once
    # Ended ambiguous (``failed``, AmbiguousDeliveryError: a worker died after
    # handing the message to the provider, or the connection dropped after the
    # dot), and of those how many the SMTP server did receive: delivered, not lost.
    # One it did not receive is a loss the status reports (``reported_lost``).
    ambiguous: int = 0
    ambiguous_received: int = 0
    raised: dict[str, int] = field(default_factory=dict)  # error type -> sends that raised
    recovery: float | None = None  # group-sigkill: s from the new worker's start to the last
    # group-sigkill: attempts in flight when the group died (status ``sending`` then), and
    # how many of the doubles were among them: the documented window (the provider had
    # accepted the message, its completion had not reached Redis).
    in_flight: int | None = None
    doubled_in_window: int = 0
    # group-sigkill: of the doubles, how many the SMTP server answered (wrote its 250
    # for the first copy) only after the kill: the worker cannot have read that reply,
    # so it is the provider-side window for certain. The others: how long before the
    # kill the server answered (ms): a reply that may still have been unread.
    answered_after_kill: int = 0
    answered_before_kill_ms: list[float] = field(default_factory=list)
    same_message_id: int = 0  # doubles whose copies all carry one Message-ID
    most_copies: int = 0  # the most copies of one notification the server received
    retry_ambiguous: bool = False  # the worker ran with [retry] retry_ambiguous = true
    seconds: float = 0.0

    @property
    def doubled_outside_window(self) -> int:
        return self.doubled - self.doubled_in_window

    @property
    def reported_lost(self) -> int:
        """Ended ambiguous and never received: reported as maybe sent, not silent."""
        return self.ambiguous - self.ambiguous_received

    def row(self) -> str:
        raised = ", ".join(f"{k} {v}" for k, v in sorted(self.raised.items())) or "none"
        recovery = "" if self.recovery is None else f"{self.recovery:.1f} s"
        doubled = str(self.doubled)
        if self.in_flight is not None:
            early = sorted(self.answered_before_kill_ms)
            before = (
                f", {len(early)} answered {', '.join(f'{ms:.1f}' for ms in early)} ms before it"
                if early
                else ""
            )
            doubled += (
                f" ({self.doubled_in_window} of the {self.in_flight} attempts in flight "
                f"at the kill; {self.answered_after_kill} answered by the SMTP server only "
                f"after the kill{before}; one Message-ID on both copies: "
                f"{self.same_message_id} of {self.doubled})"
            )
        ambiguous = (
            f"{self.ambiguous} ({self.ambiguous_received} received, "
            f"{self.reported_lost} not: reported lost)"
            if self.ambiguous
            else "0"
        )
        if self.doubled:
            doubled += f", at most {self.most_copies} copies of one"
        fault = FAULTS[self.fault]
        if self.retry_ambiguous:
            fault += ", but `retry_ambiguous = true`"
        return (
            f"| {fault} | {self.notifications} | {self.sent} | {self.lost} | "
            f"{doubled} | {ambiguous} | {raised} | {recovery} |"
        )


TABLE_HEAD = (
    "| Fault | Notifications | Sent | Lost (silent) | Doubled | Ended ambiguous "
    "| Sends that raised (retried) | Recovery after a new worker starts |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _order(notify: Any, run_id: str, i: int) -> Any:
    tenants = sorted(TENANTS)
    return notify.send_order_confirmation(
        order_id=f"{run_id}-{i}",
        customer_email=f"customer{i}@example.com",
        order_total="19.99",
        currency="EUR",
        tenant_id=tenants[i % len(tenants)],
    )


def _send_all(
    notify: Any, run_id: str, count: int, *, during: Callable[[int], None] | None = None
) -> tuple[set[str], dict[str, int]]:
    """Send ``count`` orders; a send that raises is retried, as the contract says
    (same call, same key), until it returns. Returns the ids and what was raised."""
    from tenant_notify import EnqueueError

    ids: set[str] = set()
    raised: collections.Counter[str] = collections.Counter()
    for i in range(count):
        if during is not None:
            during(i)
        while True:
            try:
                ids.add(_order(notify, run_id, i).id)
                break
            except EnqueueError as err:
                raised[type(err).__name__] += 1
                time.sleep(0.2)
    return ids, dict(raised)


def _settle(
    smtp: Any, expected: set[str], timeout: float, settings: dict[str, Any]
) -> collections.Counter[str]:
    """Wait until every expected id arrived or ended ambiguous (or ``timeout``), then
    a little more for late doubles; return the count per id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ended(smtp, expected, settings):
            break
        time.sleep(0.2)
    time.sleep(3.0)
    return _ids(smtp)


def _ended(smtp: Any, expected: set[str], settings: dict[str, Any]) -> bool:
    """Every expected id arrived, or ended ambiguous (the status says it may be lost)."""
    missing = expected - _ids(smtp).keys()
    return not missing or missing <= _ambiguous(settings, missing)


def _ids(smtp: Any) -> collections.Counter[str]:
    return collections.Counter(str(m.message["X-Tenant-Notify-Id"]) for m in smtp.messages)


def _count(
    fault: str, expected: set[str], received: collections.Counter[str], settings: dict[str, Any]
) -> Counts:
    ambiguous = _ambiguous(settings, expected)
    missing = expected - received.keys()
    return Counts(
        fault,
        len(expected),
        sent=len(expected & received.keys()),
        lost=len(missing - ambiguous),
        doubled=sum(1 for n in received.values() if n > 1),
        most_copies=max(received.values(), default=0),
        ambiguous=len(ambiguous),
        ambiguous_received=len(ambiguous - missing),
    )


@contextlib.contextmanager
def _running(settings: dict[str, Any], folder: Path) -> Iterator[FaultWorker]:
    worker = FaultWorker(settings, folder)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def _later(delay: float, fn: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.start()
    return timer


def run_fault(
    fault: str, count: int, smtp: Any, folder: Path, *, retry_ambiguous: bool = False
) -> Counts:
    """Run ``fault`` against ``count`` order confirmations; count the outcome.

    ``smtp`` is a started :class:`tests.smtp_server.LoopbackSMTPServer` (cleared
    here); ``folder`` takes the worker's config and logs. ``retry_ambiguous``: the
    worker's ``[retry] retry_ambiguous`` (an attempt caught after its hand-over is
    then sent once more instead of ending ambiguous).
    """
    from tenant_notify import Notifier

    run_id = uuid.uuid4().hex[:10]
    smtp.clear()
    started = time.monotonic()
    plain = settings_for(run_id, smtp.port)
    plain["retry"]["retry_ambiguous"] = retry_ambiguous
    try:
        if fault == "worker-redis-reset":
            with FaultProxy(REDIS) as proxy:
                worker_settings = settings_for(run_id, smtp.port, redis_port=proxy.port)
                worker_settings["retry"]["retry_ambiguous"] = retry_ambiguous
                with _running(worker_settings, folder), Notifier.from_settings(plain) as notify:
                    ids, raised = _send_all(notify, run_id, count)
                    _wait_for(lambda: len(_ids(smtp)) >= count // 3, 60)
                    proxy.reset()
                    time.sleep(5.0)
                    proxy.restore()
                    received = _settle(smtp, ids, 120, plain)
        elif fault == "caller-redis-stall":
            with FaultProxy(REDIS) as proxy:
                caller = settings_for(run_id, smtp.port, redis_port=proxy.port)
                with _running(plain, folder), Notifier.from_settings(caller) as notify:

                    def stall(i: int) -> None:
                        if i == count // 3:
                            proxy.stall()
                            _later(3.0, proxy.restore)

                    ids, raised = _send_all(notify, run_id, count, during=stall)
                    received = _settle(smtp, ids, 120, plain)
        elif fault in ("broker-stall-sync", "broker-reset-sync"):
            with FaultProxy(RABBITMQ) as proxy:
                # A publish_timeout under the fault's length, so sends do raise.
                caller = settings_for(
                    run_id,
                    smtp.port,
                    amqp_port=proxy.port,
                    publisher_confirms="sync",
                    publish_timeout=1.5,
                    connect_timeout=0.5,
                )
                with _running(plain, folder), Notifier.from_settings(caller) as notify:

                    def hit(i: int) -> None:
                        if i == count // 3:
                            proxy.stall() if fault == "broker-stall-sync" else proxy.reset()
                            _later(3.0, proxy.restore)

                    ids, raised = _send_all(notify, run_id, count, during=hit)
                    received = _settle(smtp, ids, 120, plain)
        elif fault == "group-sigkill":
            return _group_sigkill(run_id, count, smtp, folder, plain, started)
        else:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        counts = _count(fault, ids, received, plain)  # (the statuses go with cleanup)
    finally:
        cleanup(plain)
    counts.raised = raised
    counts.retry_ambiguous = retry_ambiguous
    counts.seconds = time.monotonic() - started
    return counts


def _group_sigkill(
    run_id: str, count: int, smtp: Any, folder: Path, settings: dict[str, Any], started: float
) -> Counts:
    from tenant_notify import Notifier

    with Notifier.from_settings(settings) as notify:
        # Everything is queued before the worker runs, so it is surely mid-run.
        ids, raised = _send_all(notify, run_id, count)
        assert notify.transport.flush(30)
    worker = FaultWorker(settings, folder)
    worker.start()
    try:
        _wait_for(lambda: len(_ids(smtp)) >= max(1, count // 5), 120)
        killed = time.monotonic()
        worker.kill_group()
        before = set(_ids(smtp))
        in_flight = _sending(settings, ids)
        restarted = worker.start()
        deadline = time.monotonic() + 120
        while not _ended(smtp, ids, settings) and time.monotonic() < deadline:
            time.sleep(0.05)
        recovery = time.monotonic() - restarted
        received = _settle(smtp, ids, 0, settings)
    finally:
        worker.stop()
    counts = _count("group-sigkill", ids, received, settings)
    counts.raised = raised
    counts.retry_ambiguous = settings["retry"].get("retry_ambiguous", False)
    counts.recovery = recovery if ids - before else 0.0
    counts.in_flight = len(in_flight)
    counts.doubled_in_window = sum(1 for i in in_flight if received[i] > 1)
    first_answer: dict[str, float | None] = {}
    message_ids: dict[str, set[str]] = collections.defaultdict(set)
    for message, answered in zip(smtp.messages, smtp.answer_times(), strict=False):
        notification_id = str(message.message["X-Tenant-Notify-Id"])
        first_answer.setdefault(notification_id, answered)
        message_ids[notification_id].add(str(message.message["Message-ID"]))
    counts.same_message_id = sum(
        1 for i, n in received.items() if n > 1 and len(message_ids[i]) == 1
    )
    for notification_id, n in received.items():
        if n > 1:
            answered = first_answer.get(notification_id)
            if answered is None or answered > killed:
                counts.answered_after_kill += 1
            else:
                counts.answered_before_kill_ms.append((killed - answered) * 1000)
    counts.seconds = time.monotonic() - started
    return counts


def _statuses(settings: dict[str, Any], ids: set[str]) -> dict[str, dict[str, Any]]:
    """The stored status of each of ``ids`` that has one (read from Redis directly)."""
    import json

    import redis

    if not ids:
        return {}
    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=REDIS_DB)
    try:
        prefix = settings["redis"]["key_prefix"] + "status:"
        order = sorted(ids)
        raw = client.mget([prefix + i for i in order])
    finally:
        client.close()
    return {i: json.loads(r) for i, r in zip(order, raw, strict=True) if r}


def _sending(settings: dict[str, Any], ids: set[str]) -> set[str]:
    """The ids whose status is ``sending``."""
    return {i for i, s in _statuses(settings, ids).items() if s["state"] == "sending"}


def _ambiguous(settings: dict[str, Any], ids: set[str]) -> set[str]:
    """The ids that ended ``failed`` with AmbiguousDeliveryError (perhaps sent)."""
    return {
        i
        for i, s in _statuses(settings, ids).items()
        if s["state"] == "failed" and s.get("error_type") == "AmbiguousDeliveryError"
    }


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition was not met in time")
        time.sleep(0.05)
