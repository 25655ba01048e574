"""The delivery ledger under infrastructure faults: sent, lost, doubled per fault.

Run: ``python bench/bench_faults.py`` (or ``nox -s bench``) with RabbitMQ and Redis on
loopback (127.0.0.1:5672 guest/guest, 127.0.0.1:6379). Writes the ``faults`` section
of docs/benchmarks.md (``--no-write``: print only); ``-n`` order confirmations per
fault (default 300), ``--fault NAME`` (repeatable) to run some of them, ``--runs``
to repeat each; ``--retry-ambiguous`` runs the worker with ``[retry] retry_ambiguous = true``.

Each fault of issue 9's "Why" (tests/faults.py, the same code the integration
tests in tests/integration/test_faults.py run) is applied to a real
``tenant-notify worker`` and a caller in this process, with the shared Redis or
RabbitMQ reached through a TCP proxy started here that resets or stalls its
connections (the services themselves are never touched). A send that raises is
retried with the same call, as the caller's contract says; the loopback SMTP
server's count of each notification id is the evidence. Target: 0 lost, 0
doubled; the group SIGKILL: every notification delivered within 30 s of a new
worker starting.

A notification that ended ambiguous (``failed`` with ``AmbiguousDeliveryError``:
its worker died after handing it to the provider, or the connection dropped after
the dot) is counted apart, with whether the SMTP server received it: received, it
is delivered, not lost; not received, it is a loss its status reports (perhaps
sent), not a silent one. "Lost" counts only silent losses.

This measures correctness, not speed: there are no baselines, and the counts do
not depend on the machine's load (the run's load average is given all the same).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import arguments, command_line, git_commit, publish
from tests.faults import FAULTS, TABLE_HEAD, Counts, run_fault
from tests.smtp_server import LoopbackSMTPServer


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], rounds=1)
    parser.add_argument("-n", type=int, default=300, help="order confirmations per fault")
    parser.add_argument("--fault", action="append", choices=sorted(FAULTS), help="run only these")
    parser.add_argument("--runs", type=int, default=1, help="runs of each fault")
    parser.add_argument(
        "--retry-ambiguous",
        action="store_true",
        help="the worker's [retry] retry_ambiguous = true (caught attempts sent once more)",
    )
    args = parser.parse_args()
    faults = args.fault or list(FAULTS)
    rows: list[Counts] = []
    loads = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with LoopbackSMTPServer() as smtp, tempfile.TemporaryDirectory(prefix="faults-") as folder:
        for fault in faults:
            for _ in range(args.runs):
                counts = run_fault(
                    fault, args.n, smtp, Path(folder), retry_ambiguous=args.retry_ambiguous
                )
                loads.append(os.getloadavg()[0])
                print(counts.row(), f"({counts.seconds:.0f} s)", flush=True)
                rows.append(counts)
    lost = sum(c.lost for c in rows)
    doubled = sum(c.doubled for c in rows)
    ambiguous = sum(c.ambiguous for c in rows)
    reported = sum(c.reported_lost for c in rows)
    recoveries = [c.recovery for c in rows if c.recovery is not None]
    worst = f"; slowest recovery {max(recoveries):.1f} s (target ≤ 30 s)" if recoveries else ""
    lines = [
        f"Command: `{command_line()}`  ",
        f"Run: {started}, commit {git_commit()}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores; 1-minute load average {sorted(loads)[len(loads) // 2]:.2f} "
        f"(range {min(loads):.2f}-{max(loads):.2f}).  ",
        f"Totals: {lost} lost in silence, {doubled} doubled (target 0 and 0){worst}; "
        f"{ambiguous} ended ambiguous, {ambiguous - reported} of them received, "
        f"{reported} not (reported lost).",
        "",
        TABLE_HEAD,
        *(c.row() for c in rows),
    ]
    publish("faults", "\n".join(lines), write=args.write)


if __name__ == "__main__":
    main()
