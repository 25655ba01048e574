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

Targets (issue 9): growth at most 64 MiB, and no stretch slower than half the first.
With ``--tracemalloc`` one more run traces Python allocations and prints the top
growing lines (slow: a diagnosis, not a figure).
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


def run_once(sends: int, stretch: int, trace: bool) -> dict[str, Any]:
    """One run in this process; returns the figures as a dict."""
    import logging

    import structlog
    from _counting_sink import delivered
    from handwritten import TENANTS, order

    from tenant_notify import Notifier

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    notify = Notifier.from_settings(
        {
            "transport": "inprocess",
            "email": {"provider": "_counting_sink:CountingProvider"},
            "tenants": TENANTS,
        }
    )
    if trace:
        import tracemalloc

        tracemalloc.start(5)

    def send(i: int) -> None:
        tenant = TENANT_IDS[i % 2]
        o = order(i, "m", tenant)
        notify.send_order_confirmation(
            order_id=o["order_id"],
            customer_email=o["customer_email"],
            order_total=o["order_total"],
            currency=o["currency"],
            tenant_id=tenant,
        )

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
    deadline = time.monotonic() + 600
    while delivered() < sends:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {delivered()} of {sends} delivered")
        time.sleep(0.05)
    total = time.perf_counter() - started
    notify.close()
    gc.collect()
    figures: dict[str, Any] = {
        "sends": sends,
        "delivered": delivered(),
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
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the run exited with {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
        f"{os.cpu_count()} CPUs. Every run delivered all {args.sends:,} "
        f"(counted by the provider). Command: `{command_line()}`, commit {git_commit()}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], rounds=1)
    parser.add_argument("--sends", type=int, default=1_000_000)
    parser.add_argument("--stretch", type=int, default=50_000)
    parser.add_argument("--tracemalloc", action="store_true", help="one more, traced run")
    parser.add_argument("--child", action="store_true", help=argparse_suppress())
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_once(args.sends, args.stretch, args.tracemalloc)))
        return
    runs = []
    for number in range(args.rounds):
        print(f"run {number + 1}/{args.rounds}", file=sys.stderr, flush=True)
        runs.append(_round(args))
    publish("million", markdown(runs, args), write=args.write)
    if args.tracemalloc:
        traced = _round(args, trace=True)
        print("\nTop growth by line (tracemalloc):")
        print("\n".join(traced.get("tracemalloc", [])))


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
