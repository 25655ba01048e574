"""What the per-call gate costs an HTTP provider's send (tenant_notify._call_gate).

Run: ``python bench/bench_call_gate.py [--rounds 7] [-n 3000] [--redis URL]`` (prints only).

``SendGridProvider.send`` from one thread into bench_providers.py's asyncio HTTP
server (a process of its own), in interleaved rounds: plain, as a caller outside
the dispatcher sends, against gated, as the dispatcher sends (a ``_CallGate``
over an in-memory ``Pacing`` set around the call: the httpcore ``trace`` callback
on every step of the request, the pause checked before the request is written).
With Redis reachable (``--redis``, default the bench database 14), two more, as a
worker sends: ``gated-redis``, the gate over a ``Pacing`` listening to Redis's
announcements (its last check also polls the subscription's socket for an
announcement not read yet), and ``gated-redis-memory``, the same gate checking
memory only (the check before that poll was added), to price the poll.
Figures: wall and CPU (this thread's) per send, and the CPU ratio per round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import bench_providers as bp

from tenant_notify import _call_gate
from tenant_notify.dispatcher import _CallGate
from tenant_notify.limiting import Account, Pacing
from tenant_notify.providers.sendgrid import SendGridProvider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-n", type=int, default=3000, help="sends per variant and round")
    parser.add_argument(
        "--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    args = parser.parse_args()
    server = bp.Server(bp._http_server)
    provider = SendGridProvider(api_key="SG.bench-gate", base_url=f"http://127.0.0.1:{server.port}")
    account = Account("bench-account", "sendgrid")
    pacings = {"gated": Pacing()}
    shared = _listening(args.redis, account)
    if shared is not None:
        pacings["gated-redis"] = pacings["gated-redis-memory"] = shared
    messages = [bp.message(i) for i in range(args.n)]
    for message in messages[:200]:  # the client and its connection, made before timing
        provider.send(message)
    variants = ["plain", *pacings]
    figures: dict[str, list[tuple[float, float]]] = {variant: [] for variant in variants}
    load = [os.getloadavg()[0]]
    try:
        for r in range(args.rounds):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                pacing = pacings.get(variant)
                gate_class = _MemoryOnlyGate if variant == "gated-redis-memory" else _CallGate
                wall, cpu = time.perf_counter(), time.thread_time()
                for message in messages:
                    if pacing is not None:
                        gate = gate_class(pacing, account, "sendgrid", first=True)
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
        if shared is not None:
            shared.close()
    print(f"{args.rounds} rounds of {args.n} sends; 1-minute load {min(load):.1f}-{max(load):.1f}")
    for variant, rows in figures.items():
        wall_us = [w for w, _ in rows]
        cpu_us = [c for _, c in rows]
        print(
            f"{variant}: wall/send {statistics.median(wall_us):.0f} us "
            f"[{min(wall_us):.0f}-{max(wall_us):.0f}], cpu/send {statistics.median(cpu_us):.0f} us "
            f"[{min(cpu_us):.0f}-{max(cpu_us):.0f}]"
        )
    pairs = [("gated", "plain")]
    if shared is not None:
        pairs += [("gated-redis", "plain"), ("gated-redis", "gated-redis-memory")]
    for over, under in pairs:
        ratios = [g[1] / p[1] for p, g in zip(figures[under], figures[over], strict=True)]
        print(
            f"CPU per send, {over} / {under}, per round: median {statistics.median(ratios):.2f}x "
            f"[{min(ratios):.2f}-{max(ratios):.2f}]"
        )


class _MemoryOnlyGate(_CallGate):
    """The gate whose last check reads memory only (no poll of the subscription)."""

    __slots__ = ()

    def before_request(self) -> None:
        seconds = self._pacing.paused(self.account)
        if seconds is not None:
            self.stop(seconds)


def _listening(url: str, account: Account) -> Pacing | None:
    """A Pacing on Redis whose listener has caught up, or None without Redis."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        return None
    pacing = Pacing(client=client, key_prefix=f"bench_gate:{uuid.uuid4().hex[:8]}:")
    pacing.paused(account)  # starts the listener
    deadline = time.monotonic() + 10
    while not pacing.listening:
        if time.monotonic() > deadline:
            raise RuntimeError("the pause listener did not start")
        time.sleep(0.01)
    return pacing


if __name__ == "__main__":
    main()
