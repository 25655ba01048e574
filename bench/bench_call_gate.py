"""What the per-call gate costs an HTTP provider's send (tenant_notify._call_gate).

Run: ``python bench/bench_call_gate.py [--rounds 7] [-n 3000]`` (prints only).

``SendGridProvider.send`` from one thread into bench_providers.py's asyncio HTTP
server (a process of its own), in interleaved rounds: plain, as a caller outside
the dispatcher sends, against gated, as the dispatcher sends (a ``_CallGate``
over an in-memory ``Pacing`` set around the call: the httpcore ``trace`` callback
on every step of the request, the pause checked before the request is written).
Figures: wall and CPU (this thread's) per send, and the CPU ratio per round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import bench_providers as bp

from tenant_notify import _call_gate
from tenant_notify.dispatcher import _CallGate
from tenant_notify.limiting import Account, Pacing
from tenant_notify.providers.sendgrid import SendGridProvider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-n", type=int, default=3000, help="sends per variant and round")
    args = parser.parse_args()
    server = bp.Server(bp._http_server)
    provider = SendGridProvider(api_key="SG.bench-gate", base_url=f"http://127.0.0.1:{server.port}")
    pacing = Pacing()
    account = Account("bench-account", "sendgrid")
    messages = [bp.message(i) for i in range(args.n)]
    for message in messages[:200]:  # the client and its connection, made before timing
        provider.send(message)
    figures: dict[str, list[tuple[float, float]]] = {"plain": [], "gated": []}
    load = [os.getloadavg()[0]]
    try:
        for r in range(args.rounds):
            for variant in ("plain", "gated") if r % 2 == 0 else ("gated", "plain"):
                wall, cpu = time.perf_counter(), time.thread_time()
                for message in messages:
                    if variant == "gated":
                        gate = _CallGate(pacing, account, "sendgrid", first=True)
                        with _call_gate.gated(gate):
                            provider.send(message)
                    else:
                        provider.send(message)
                figures[variant].append(
                    (
                        (time.perf_counter() - wall) / args.n * 1e6,
                        (time.thread_time() - cpu) / args.n * 1e6,
                    )
                )
            load.append(os.getloadavg()[0])
    finally:
        provider.close()
        server.close()
    print(f"{args.rounds} rounds of {args.n} sends; 1-minute load {min(load):.1f}-{max(load):.1f}")
    for variant, rows in figures.items():
        wall_us = [w for w, _ in rows]
        cpu_us = [c for _, c in rows]
        print(
            f"{variant}: wall/send {statistics.median(wall_us):.0f} us "
            f"[{min(wall_us):.0f}-{max(wall_us):.0f}], cpu/send {statistics.median(cpu_us):.0f} us "
            f"[{min(cpu_us):.0f}-{max(cpu_us):.0f}]"
        )
    ratios = [g[1] / p[1] for p, g in zip(figures["plain"], figures["gated"], strict=True)]
    print(
        f"CPU per send, gated / plain, per round: median {statistics.median(ratios):.2f}x "
        f"[{min(ratios):.2f}-{max(ratios):.2f}]"
    )


if __name__ == "__main__":
    main()
