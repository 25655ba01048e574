"""A million sends on the in-process transport: memory growth and cost per send over time.

Run: ``python bench/bench_million.py`` (or ``nox -s bench``). Writes the
``million`` section of docs/benchmarks.md (``--no-write``: print only).

One process sends ``--sends`` (default 1,000,000) order confirmations with
``send_order_confirmation`` (a distinct order, so a distinct idempotency key, and
a distinct customer each; two tenants, one of them German) on the in-process
transport with **default settings** (``[stores]`` bounds included) and a counting
provider (bench/_counting_sink.py): everything a real send does in this process
(checks, idempotency key, ``queued``/``sending``/``sent`` statuses, the delivery
claim, rendering, building the message) except the network. It is the case where
the stores' cost and size show most: nothing else takes time.

The run is cut into stretches of ``--stretch`` (50,000) sends. For each it
records the caller's rate (the queue is bounded, so past the first few thousand
sends the caller goes at the delivery rate), the process's resident memory (RSS)
at its end and the entries the stores hold. Growth is RSS at the end minus RSS
after the warm-up (the first stretch's first 10,000 sends, which compile the
templates and fill the caches). Each stretch's rate is set against the first
stretch's in the same run: "the millionth send costs what the first did" is the
slowest stretch's rate over the first's. ``--rounds`` repeats the whole run in a
fresh process and gives ranges over the rounds.

Nothing may be lost on the way: every receipt's id is set against the ids the
provider was given (the first 64 bits of each, in arrays allocated before the
warm-up, so their memory is not counted as growth), and the run counts the ids
never delivered (*lost*) and delivered more than once (*doubled*), and the final
statuses by state. A run with any lost, doubled or not-``sent`` notification
fails (exit status 1), names the first of them with their latest status, and
writes nothing to docs/benchmarks.md.

Targets (issue 9): growth at most 64 MiB, and no stretch slower than half the first.
With ``--tracemalloc`` one more run traces Python allocations and prints the top
growing lines (slow: a diagnosis, not a figure). ``--max-statuses`` and
``--max-keys`` shrink the stores' bounds (a diagnosis: eviction within a short
run); the published figures are taken with the defaults.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _harness import arguments, command_line, git_commit, publish

HERE = Path(__file__).resolve().parent
WARM_UP = 10_000
TENANT_IDS = ("acme", "globex")
MIB = 1024 * 1024


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _size(store: object) -> int:
    """Entries a memory store holds (-1 for a store that cannot tell)."""
    return len(store) if hasattr(store, "__len__") else -1


class _Tally:
    """An observer in front of the Notifier's own: counts final statuses by state."""

    def __init__(self, inner: Any) -> None:
        import collections
        import threading

        self.inner = inner
        self.final: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def status_changed(self, status: Any) -> None:
        if status.is_final:
            with self._lock:
                self.final[status.state.value] += 1
                if status.error_type:
                    self.errors[f"{status.error_type}: {status.error}"] += 1
        self.inner.status_changed(status)

    def close(self, timeout: float | None = None) -> None:
        self.inner.close(timeout)


def _settle(notify: Any, sends: int, timeout: float) -> None:
    """Wait until the transport has nothing pending and the provider count is still."""
    from _counting_sink import delivered

    deadline = time.monotonic() + timeout
    last, still = -1, 0
    while time.monotonic() < deadline:
        count = delivered()
        if notify.transport.pending == 0 and count == last:
            still += 1
            if still >= 4 and count >= sends:
                return
            if still >= 40:  # two seconds idle short of the count: something is lost
                return
        else:
            still = 0
        last = count
        time.sleep(0.05)


def _accounting(
    notify: Any, tally: _Tally, receipts: Any, sends: int, duplicates: int
) -> dict[str, Any]:
    """Lost and doubled ids (receipts against the provider's record) and final states."""
    import collections

    from _counting_sink import delivered, recorded

    given = collections.Counter(recorded())
    expected = collections.Counter(receipts[:sends])
    lost = [bits for bits in expected if given[bits] < expected[bits]]
    doubled = [bits for bits in given if given[bits] > expected.get(bits, 0)]
    examples = []
    if lost or doubled:
        from _counting_sink import id_bits

        from tenant_notify.models import new_notification_id

        # Which orders they were, and what the status store says of them now.
        wanted = set(lost[:10]) | set(doubled[:10])
        for n in range(sends):
            if receipts[n] not in wanted:
                continue
            wanted.discard(receipts[n])
            # The id again, from the order (send_order_confirmation's default key).
            nid = new_notification_id(
                TENANT_IDS[n % 2], "order_confirmation", f"order_confirmation:m-{n}"
            )
            status = notify.status_store.get(nid) if id_bits(nid) == receipts[n] else None
            examples.append(
                {
                    "order": n,
                    "id": nid,
                    "lost": receipts[n] in lost,
                    "status": None if status is None else status.state.value,
                    "attempts": None if status is None else status.attempts,
                    "error": None if status is None else status.error,
                }
            )
    return {
        "delivered": delivered(),
        "lost": len(lost),
        "doubled": len(doubled),
        "duplicates": duplicates,
        "final": dict(tally.final),
        "errors": dict(tally.errors.most_common(10)),
        "examples": examples,
    }


def run_once(
    sends: int,
    stretch: int,
    trace: bool,
    max_statuses: int | None = None,
    max_keys: int | None = None,
) -> dict[str, Any]:
    """One run in this process; returns the figures as a dict."""
    import array
    import logging

    import structlog
    from _counting_sink import id_bits, record
    from handwritten import TENANTS, order

    from tenant_notify import Notifier

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings: dict[str, Any] = {
        "transport": "inprocess",
        "email": {"provider": "_counting_sink:CountingProvider"},
        "tenants": TENANTS,
    }
    stores = {"memory_max_statuses": max_statuses, "memory_max_keys": max_keys}
    if any(stores.values()):
        settings["stores"] = {key: value for key, value in stores.items() if value}
    notify = Notifier.from_settings(settings)
    tally = _Tally(notify.dispatcher.observer)
    notify.dispatcher.observer = tally
    notify.reputation.observer = tally
    # Allocated (and touched) before the warm-up: not part of the growth.
    receipts = array.array("Q", bytes(8 * sends))
    record(sends + 1000)
    duplicates = 0
    if trace:
        import tracemalloc

        tracemalloc.start(5)

    def send(i: int) -> None:
        nonlocal duplicates
        tenant = TENANT_IDS[i % 2]
        o = order(i, "m", tenant)
        receipt = notify.send_order_confirmation(
            order_id=o["order_id"],
            customer_email=o["customer_email"],
            order_total=o["order_total"],
            currency=o["currency"],
            tenant_id=tenant,
        )
        receipts[i] = id_bits(receipt.id)
        if receipt.duplicate:
            duplicates += 1

    stretches: list[dict[str, Any]] = []
    base_rss = 0
    snapshot = None
    started = time.perf_counter()
    i = 0
    while i < sends:
        begin = time.perf_counter()
        end = min(i + stretch, sends)
        for n in range(i, end):
            send(n)
            if n + 1 == WARM_UP:
                gc.collect()
                base_rss = _rss()
                if trace:
                    snapshot = tracemalloc.take_snapshot()
        wall = time.perf_counter() - begin
        stretches.append(
            {
                "sends": end - i,
                "wall": wall,
                "rate": (end - i) / wall,
                "rss": _rss(),
                "statuses": _size(notify.status_store),
                "keys": _size(notify.idempotency_store),
                "load": os.getloadavg()[0],
            }
        )
        print(
            f"  {end:>9,} sent: {stretches[-1]['rate']:,.0f}/s, RSS "
            f"{stretches[-1]['rss'] / MIB:,.1f} MiB, statuses {stretches[-1]['statuses']:,}, "
            f"keys {stretches[-1]['keys']:,}",
            file=sys.stderr,
            flush=True,
        )
        i = end
    _settle(notify, sends, timeout=600)
    total = time.perf_counter() - started
    accounting = _accounting(notify, tally, receipts, sends, duplicates)
    notify.close()
    gc.collect()
    figures: dict[str, Any] = {
        "sends": sends,
        **accounting,
        "total_wall": total,
        "base_rss": base_rss,
        "end_rss": stretches[-1]["rss"],
        "stretches": stretches,
    }
    if trace and snapshot is not None:
        top = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")[:15]
        figures["tracemalloc"] = [str(stat) for stat in top]
    return figures


def _round(args: Any, trace: bool = False) -> dict[str, Any]:
    import subprocess

    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--sends",
        str(args.sends),
        "--stretch",
        str(args.stretch),
    ]
    if trace:
        command.append("--tracemalloc")
    for option in ("max_statuses", "max_keys"):
        if getattr(args, option):
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the run exited with {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _clean(run: dict[str, Any]) -> bool:
    """Every send delivered once and recorded ``sent``."""
    return (
        run["lost"] == 0
        and run["doubled"] == 0
        and run["duplicates"] == 0
        and run["final"] == {"sent": run["sends"]}
    )


def _verdict(run: dict[str, Any]) -> str:
    return (
        f"{run['sends']:,} sent, {run['delivered']:,} given to the provider, "
        f"{run['lost']} lost, {run['doubled']} doubled, {run['duplicates']} receipts "
        f"marked duplicate; final statuses {run['final']}"
    )


def _range(values: list[float], fmt: str) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, fmt)
    return f"{format(median, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def markdown(runs: list[dict[str, Any]], args: Any) -> str:
    growth = [(r["end_rss"] - r["base_rss"]) / MIB for r in runs]
    ratios = [min(s["rate"] for s in r["stretches"]) / r["stretches"][0]["rate"] for r in runs]
    last = [r["stretches"][-1]["rate"] / r["stretches"][0]["rate"] for r in runs]
    loads = [s["load"] for r in runs for s in r["stretches"]]
    growth_ok = max(growth) <= 64
    ratio_ok = min(ratios) >= 0.5
    lines = [
        f"{args.sends:,} `send_order_confirmation` calls on the in-process transport, default "
        f"settings, counting provider; {len(runs)} run(s), each in a fresh process; stretches of "
        f"{args.stretch:,} sends. Median (range) over the runs.",
        "",
        "| Figure | Result | Target | Met |",
        "|---|---|---|---|",
        f"| RSS growth, after {WARM_UP:,} warm-up sends to the last send | "
        f"{_range(growth, '.1f')} MiB | ≤ 64 MiB | {'yes' if growth_ok else 'NO'} |",
        f"| slowest stretch / first stretch (rate) | {_range(ratios, '.2f')} | ≥ 0.5 | "
        f"{'yes' if ratio_ok else 'NO'} |",
        f"| last stretch / first stretch (rate) | {_range(last, '.2f')} | | |",
        "",
        "| Sends so far | Rate of the stretch (sends/s) | RSS (MiB) | Statuses kept | Keys kept |",
        "|---|---|---|---|---|",
    ]
    for index in range(len(runs[0]["stretches"])):
        rows = [r["stretches"][index] for r in runs]
        sent = sum(s["sends"] for s in runs[0]["stretches"][: index + 1])
        lines.append(
            f"| {sent:,} | {_range([s['rate'] for s in rows], ',.0f')} | "
            f"{_range([s['rss'] / MIB for s in rows], '.1f')} | "
            f"{_range([float(s['statuses']) for s in rows], ',.0f')} | "
            f"{_range([float(s['keys']) for s in rows], ',.0f')} |"
        )
    lines += [
        "",
        f"Load average (1 min) during the runs: {min(loads):.2f}-{max(loads):.2f} on "
        f"{os.cpu_count()} CPUs. Every run delivered each of the {args.sends:,} exactly once "
        f"(0 lost, 0 doubled: every receipt's id set against the ids the provider was "
        f"given) and recorded it `sent`. Command: `{command_line()}`, commit {git_commit()}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], rounds=1)
    parser.add_argument("--sends", type=int, default=1_000_000)
    parser.add_argument("--stretch", type=int, default=50_000)
    parser.add_argument("--tracemalloc", action="store_true", help="one more, traced run")
    parser.add_argument(
        "--max-statuses", type=int, help="[stores] memory_max_statuses (a diagnosis)"
    )
    parser.add_argument("--max-keys", type=int, help="[stores] memory_max_keys (a diagnosis)")
    parser.add_argument("--child", action="store_true", help=argparse_suppress())
    args = parser.parse_args()
    if args.child:
        figures = run_once(
            args.sends, args.stretch, args.tracemalloc, args.max_statuses, args.max_keys
        )
        print(json.dumps(figures))
        return
    runs = []
    for number in range(args.rounds):
        print(f"run {number + 1}/{args.rounds}", file=sys.stderr, flush=True)
        runs.append(_round(args))
        print(f"  {_verdict(runs[-1])}", file=sys.stderr, flush=True)
    bad = [r for r in runs if not _clean(r)]
    if bad:
        for run in bad:
            print(f"FAILED: {_verdict(run)}", file=sys.stderr)
            for example in run["examples"]:
                print(f"  {example}", file=sys.stderr)
            if run["errors"]:
                print(f"  errors: {run['errors']}", file=sys.stderr)
        raise SystemExit(1)
    custom = args.max_statuses or args.max_keys
    publish("million", markdown(runs, args), write=args.write and not custom)
    if args.tracemalloc:
        traced = _round(args, trace=True)
        print("\nTop growth by line (tracemalloc):")
        print("\n".join(traced.get("tracemalloc", [])))


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
