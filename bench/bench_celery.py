"""The Celery transport against hand-written Celery code, on the same broker, in one run.

Run: ``python bench/bench_celery.py`` (or ``nox -s bench``) with RabbitMQ and Redis on
loopback (127.0.0.1:5672 guest/guest, 127.0.0.1:6379). Prints Markdown tables for
docs/benchmarks.md; every ratio compares figures measured in this run.

Caller's cost (µs per call, median of runs; no worker consumes meanwhile):

* ``task.delay()`` of a hand-written task with the same arguments
  (bench/handwritten_app.py), on an app with Celery's defaults and on one with
  publisher confirms (``confirm_publish``, which the library always uses);
* a raw kombu ``Producer.publish`` of a ready JSON body on a held connection,
  without and with confirms;
* ``notify.send_order_confirmation(...)`` on the ``celery`` transport (Redis stores,
  confirms ``async`` and ``sync``): validation, idempotency reservation and
  ``queued`` status in Redis, the task message; and ``notify.send_email(...)``
  without an idempotency key, which has nothing to reserve.

Throughput (emails per second into a loopback SMTP server, plain and with
STARTTLS as real submission uses, a queue drained by a worker with two processes;
measured from the first message received to the last). The server is
bench/smtp_sink.py: aiosmtpd in a process of its own that only counts, so its
CPU does not weigh on what is measured:

* ``tenant-notify worker -c 2`` delivering ``order_confirmation`` notifications
  (rendering subject, text and HTML; statuses and claims in Redis);
* ``celery -A handwritten_app worker -c 2``: the hand-written task rendering the
  same kind of email (text and HTML) and opening an SMTP connection per message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "bench", ROOT, ROOT / "src"):
    sys.path.insert(0, str(path))

import kombu  # noqa: E402
from _timing import per_call  # noqa: E402
from smtp_sink import SmtpSink  # noqa: E402

from tenant_notify import Notifier  # noqa: E402

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/15"
TENANTS = {
    "acme": {"name": "Acme Shop", "email_from": "Acme Shop <orders@acme.test>"},
    "globex": {"name": "Globex Café", "email_from": "hello@globex.test", "locale": "de"},
}


# (STARTTLS, task events, server offers PIPELINING) of each throughput run.
COMBINATIONS = [
    (tls, events, pipelining)
    for pipelining in (False, True)
    for tls in (False, True)
    for events in (True, False)
]


def settings(run: str, smtp_port: int, **celery: Any) -> dict[str, Any]:
    return {
        "transport": "celery",
        "email": {"provider": "smtp", "host": "127.0.0.1", "port": smtp_port},
        "celery": {
            "broker_url": AMQP,
            "queue": f"bench_tn_{run}",
            "dead_letter_queue": f"bench_tn_{run}.dead",
            **celery,
        },
        "redis": {"url": REDIS, "key_prefix": f"bench:{run}:"},
        "idempotency": {"ttl": 600},
        "tenants": TENANTS,
    }


def order_args(i: int, run: str) -> dict[str, Any]:
    return {
        "order_id": f"{run}-{i}",
        "customer_email": "jane@example.com",
        "order_total": "99.99",
        "currency": "USD",
        "tenant_id": "acme",
    }


# --- caller's cost ----------------------------------------------------------------------


def caller_cost(run: str, n: int, repeats: int) -> dict[str, float]:
    results: dict[str, float] = {}
    for label, confirms in (("defaults", False), ("confirm_publish", True)):
        app = _handwritten_app(f"bench_hand_{run}", confirms=confirms)
        task = app.tasks["handwritten.send_order_confirmation"]
        results[f"hand-written `task.delay()`, Celery {label}"] = per_call(
            lambda i, task=task: task.delay(**order_args(i, run)), n, repeats
        )

    body = json.dumps([[], order_args(0, run), {}])
    for label, options in (("", {}), (", confirms", {"confirm_publish": True})):
        with kombu.Connection(AMQP, transport_options=options) as conn:
            producer = kombu.Producer(conn.channel())
            queue = f"bench_hand_{run}"

            def publish(i: int, producer: Any = producer, queue: str = queue) -> None:
                producer.publish(
                    body,
                    routing_key=queue,
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers={"id": str(i)},
                )

            results[f"raw kombu `Producer.publish`{label}"] = per_call(publish, n, repeats)

    for confirms in ("async", "sync"):
        with Notifier.from_settings(settings(run, 25, publisher_confirms=confirms)) as notify:
            prefix = f"{confirms}-"

            def send(i: int, notify: Notifier = notify, prefix: str = prefix) -> object:
                return notify.send_order_confirmation(
                    order_id=f"{prefix}{i}",
                    customer_email="jane@example.com",
                    order_total=Decimal("99.99"),
                    currency="USD",
                    tenant_id="acme",
                )

            results[f"`notify.send_order_confirmation()`, celery, confirms {confirms}"] = per_call(
                send, n, repeats
            )
            if confirms != "async":
                continue

            def send_unkeyed(i: int, notify: Notifier = notify) -> object:
                return notify.send_email(
                    to_email="jane@example.com",
                    subject=f"Your order {i}",
                    body="Thank you for your order.",
                    tenant_id="acme",
                )

            # No idempotency key: nothing to reserve, so no Redis round trip waited for.
            results["`notify.send_email()` without an idempotency key, confirms async"] = per_call(
                send_unkeyed, n, repeats
            )
    return results


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


def _worker_env(queue: str, smtp_port: int = 0, ca_file: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench"), str(ROOT)])
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


def _celery_worker(env: dict[str, str], events: bool, log: Path) -> subprocess.Popen[bytes]:
    return start(
        [
            *(sys.executable, "-m", "celery", "-A", "handwritten_app", "worker", "-c", "2"),
            *("-Q", env["BENCH_QUEUE"], "--loglevel", "WARNING"),
            *("--without-gossip", "--without-mingle", *(["-E"] if events else [])),
        ],
        env,
        log,
    )


def _tag(run: str, tls: bool, events: bool, pipelining: bool) -> str:
    return f"{run}_{'tls' if tls else 'plain'}_{'ev' if events else 'noev'}{'_pl' * pipelining}"


def throughput(
    run: str, count: int, folder: Path, *, tls: bool, events: bool, pipelining: bool
) -> dict[str, float]:
    """Emails per second, library and hand-written, each drained by ``-c 2``."""
    results = {}
    tag = _tag(run, tls, events, pipelining)
    with SmtpSink(cert_dir=folder if tls else None, pipelining=pipelining) as server:
        # The library: queue everything, then let a two-process worker drain it.
        table = settings(tag, server.port, send_events=events)
        if tls:
            table["email"].update(starttls=True, ca_file=str(server.cert_file))
        toml = folder / f"bench-{tag}.toml"
        toml.write_text(_toml(table))
        with Notifier.from_settings(table) as notify:
            tenants = sorted(TENANTS)
            for i in range(count):
                notify.send_order_confirmation(
                    order_id=f"tp-{i}",
                    customer_email=f"customer{i}@example.com",
                    order_total=Decimal("99.99"),
                    currency="USD",
                    tenant_id=tenants[i % 2],
                )
            notify.transport.flush(30)  # type: ignore[attr-defined]
        worker = start(
            [
                *(sys.executable, "-m", "tenant_notify.cli", "worker", "--config", str(toml)),
                *("-c", "2", "--loglevel", "WARNING", "--", "--without-gossip", "--without-mingle"),
            ],
            _worker_env(f"bench_tn_{tag}"),
            folder / f"tenant-notify-worker-{tag}.log",
        )
        try:
            results["library"] = server.rate(count)
        finally:
            stop(worker)
        server.reset()

        # The hand-written task: the same email, one SMTP connection per message.
        queue = f"bench_hand_{tag}"
        env = _worker_env(queue, server.port, server.cert_file if tls else None)
        task = _handwritten_app(queue).tasks["handwritten.send_order_confirmation"]
        for i in range(count):
            task.apply_async(kwargs=order_args(i, run), queue=queue)
        worker = _celery_worker(env, events, folder / f"handwritten-worker-{tag}.log")
        try:
            results["hand-written"] = server.rate(count)
        finally:
            stop(worker)
    return results


def _handwritten_app(queue: str, *, confirms: bool = False) -> Any:
    os.environ.update(BENCH_QUEUE=queue, BENCH_BROKER_URL=AMQP)
    import handwritten_app

    return handwritten_app.make_app(confirms=confirms)


def ceiling(run: str, count: int, folder: Path, *, events: bool) -> float:
    """Tasks per second of ``handwritten.empty`` drained by ``-c 2``: Celery's own limit."""
    import redis

    queue = f"bench_hand_{run}_empty_{'ev' if events else 'noev'}"
    task = _handwritten_app(queue).tasks["handwritten.empty"]
    for i in range(count):
        task.apply_async((i,), queue=queue)
    client = redis.Redis.from_url(REDIS)
    key = f"bench:empty:{queue}"
    worker = _celery_worker(_worker_env(queue), events, folder / f"empty-{queue}.log")
    try:
        deadline = time.monotonic() + 300
        while int(client.get(f"{key}:count") or 0) < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the empty tasks did not all run")
            time.sleep(0.05)
        first, last = (float(client.get(f"{key}:{end}") or 0) for end in ("first", "last"))
        return (count - 1) / (last - first)
    finally:
        stop(worker)
        client.delete(*(f"{key}:{end}" for end in ("first", "last", "count")))


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


def cleanup(run: str) -> None:
    import redis

    with kombu.Connection(AMQP) as conn:
        names = [f"bench_tn_{run}", f"bench_hand_{run}"]
        names += [f"bench_hand_{run}_empty_{ev}" for ev in ("ev", "noev")]
        for tls, events, pipelining in COMBINATIONS:
            tag = _tag(run, tls, events, pipelining)
            names += [f"bench_tn_{tag}", f"bench_hand_{tag}"]
        for name in names + [f"{name}.dead" for name in names]:
            channel = conn.channel()
            try:
                channel.queue_delete(name)
                channel.exchange_delete(name)
            except Exception:
                continue
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"bench:{run}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="calls per run (caller's cost)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--emails", type=int, default=1000, help="emails per throughput run")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    try:
        cost = caller_cost(run, args.n, args.repeats)
        with tempfile.TemporaryDirectory(prefix="bench-celery-") as folder:
            rates = {
                (tls, events, pipelining): throughput(
                    run, args.emails, Path(folder), tls=tls, events=events, pipelining=pipelining
                )
                for tls, events, pipelining in COMBINATIONS
            }
            limits = {
                events: ceiling(run, args.emails * 2, Path(folder), events=events)
                for events in (True, False)
            }
    finally:
        cleanup(run)

    base = cost["hand-written `task.delay()`, Celery defaults"]
    confirmed = cost["hand-written `task.delay()`, Celery confirm_publish"]
    print(f"Caller's cost, n={args.n} x {args.repeats} (median), same RabbitMQ\n")
    print("| what | µs per call | vs `delay()` defaults | vs `delay()` with confirms |")
    print("|---|---:|---:|---:|")
    for name, seconds in cost.items():
        ratios = f"{seconds / base:.2f}x | {seconds / confirmed:.2f}x"
        print(f"| {name} | {seconds * 1e6:.0f} | {ratios} |")
    print(f"\nThroughput, {args.emails} emails, worker with 2 processes, loopback SMTP\n")
    print(
        "| SMTP | server offers PIPELINING | task events "
        "| hand-written, connection per message | `tenant-notify worker` | ratio |"
    )
    print("|---|---|---|---:|---:|---:|")
    for (tls, events, pipelining), rate in rates.items():
        smtp, on = ("STARTTLS" if tls else "plain"), ("on" if events else "off")
        hand, ours = rate["hand-written"], rate["library"]
        print(
            f"| {smtp} | {'yes' if pipelining else 'no'} | {on} | {hand:.0f}/s | {ours:.0f}/s "
            f"| {ours / hand:.2f}x |"
        )
    print(f"\nCelery's ceiling: {args.emails * 2} empty tasks, same worker shape\n")
    print("| task events | tasks/s | vs hand-written, plain | vs `tenant-notify worker`, plain |")
    print("|---|---:|---:|---:|")
    for events, limit in limits.items():
        plain = rates[(False, events, False)]
        print(
            f"| {'on' if events else 'off'} | {limit:.0f}/s | "
            f"{limit / plain['hand-written']:.2f}x | {limit / plain['library']:.2f}x |"
        )


if __name__ == "__main__":
    main()
