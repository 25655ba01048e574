"""The one harness every benchmark under bench/ uses.

A benchmark names its *variants* (the library, and baselines named for what they
are and what guarantee they give), says which are baselines, and lets
:class:`Comparison` run them in **interleaved rounds**: round *r* runs every
variant once, in an order rotated by *r*, so load that drifts during a run falls on
every variant alike. From at least five rounds it reports, per variant, the
median and the range (min-max) of

* the wall-clock figure: a rate (messages/s) or a time per call (µs);
* CPU time per message, for each *scope* the variant measured (the benchmark
  process with all its threads, a worker's whole process tree, the SMTP sink,
  ...; every table says which scopes are part of the system under test);
* ratios to each baseline, **paired per round** (variant in round r divided by
  the baseline in round r, then the median and range of those ratios), for the
  wall-clock figure and for CPU per message;

and the 1-minute load average during the run. :meth:`Result.markdown` renders the
one table format every benchmark uses, and :func:`write_section` puts it into a
marked section of docs/benchmarks.md, replacing that section's previous contents,
so a rerun replaces its own figures and no figure is edited by hand.

Usage (the whole API; see bench/bench_inprocess.py for a full example)::

    from _harness import Comparison, Sample, Target, Variant, cpu_seconds, write_section

    def run_library(round_no: int) -> Sample:
        ...  # warm up, then measure a window
        return Sample(ops=n, wall=seconds, cpu={"process": cpu_seconds()})

    result = Comparison(
        "In-process end to end",
        [
            Variant("tenant-notify, inprocess", run_library, guarantee="..."),
            Variant("fair hand-written queue", run_queue, guarantee="...", baseline=True),
        ],
        rounds=5,
        metric="rate",            # or "time": µs per call, lower is better
        unit="email",
        cpu_scopes={"process": "the benchmark process, every thread (system under test)"},
    ).run()
    print(result.markdown())
    write_section("inprocess", result.markdown(targets=[Target(...)]))

A variant measures itself: it returns a :class:`Sample` of how many messages
(or calls) it completed in its measured window, the wall seconds and the CPU
seconds per scope over that window. :func:`cpu_seconds` and :class:`TreeCpu`
(psutil, for other processes and their children) are the two ways to take the
CPU figures. Variants that run in a process of their own (another interpreter, an
older install of the library) print their Sample as JSON: :func:`run_json`
starts such a process and reads the Sample back.

Every benchmark is one command (``python bench/<name>.py``) and ``nox -s bench``
runs them all; ``--rounds`` and ``--no-write`` (print only) are common to all.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
MIN_ROUNDS = 5


# --- samples and CPU ---------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    """What one variant measured in one round.

    Attributes:
        ops: Messages (or calls) completed in the measured window.
        wall: Wall-clock seconds of the window.
        cpu: CPU seconds (user + system) per scope over the same window.
        extra: Anything else worth keeping (counts, checks); not tabulated.
    """

    ops: int
    wall: float
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Sample:
        data = json.loads(text)
        return cls(
            int(data["ops"]), float(data["wall"]), data.get("cpu", {}), data.get("extra", {})
        )


def cpu_seconds() -> float:
    """CPU seconds this process has used so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TreeCpu:
    """CPU seconds of other processes and (by default) all their descendants.

    ``TreeCpu([pid]).seconds()`` sums user and system time of each process and
    every child alive at the time of the call (a prefork worker's pool
    processes, say). Take it before and after a window and subtract. A child
    that exits inside the window takes its time with it: benchmarks keep their
    processes alive across the window.
    """

    def __init__(self, pids: Iterable[int], *, children: bool = True) -> None:
        import psutil

        self._psutil = psutil
        self.processes = [psutil.Process(pid) for pid in pids]
        self.children = children

    def seconds(self) -> float:
        total = 0.0
        for process in self.processes:
            members = [process]
            if self.children:
                members += process.children(recursive=True)
            for member in members:
                try:
                    times = member.cpu_times()
                except self._psutil.NoSuchProcess:
                    continue
                total += times.user + times.system
        return total


def run_json(
    command: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 900
) -> Sample:
    """Run ``command`` (a process that measures one round) and read its Sample.

    The command prints the Sample as JSON on its last line of stdout; anything it
    prints before is ignored, and stderr is shown only when it fails.
    """
    done = subprocess.run(
        list(command),
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} exited with {done.returncode}:\n{done.stderr[-4000:]}"
        )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{shlex.join(command)} printed no sample:\n{done.stderr[-4000:]}")
    return Sample.from_json(lines[-1])


# --- variants, rounds, results ---------------------------------------------------------------


@dataclasses.dataclass
class Variant:
    """One thing being measured.

    Attributes:
        name: Says what it is (``"fair hand-written queue: plain Jinja2, held
            smtplib connections"``), shown in the table.
        run: Measures one round; gets the round number.
        guarantee: What the caller has when a call returns, or what delivery
            promises (``"queued in memory; lost if the process dies"``).
        baseline: Ratios are computed against this variant.
        short: A short label for ratio column headers (defaults to ``name``).
    """

    name: str
    run: Callable[[int], Sample]
    guarantee: str = ""
    baseline: bool = False
    short: str = ""

    @property
    def label(self) -> str:
        return self.short or self.name


@dataclasses.dataclass
class Target:
    """A "Done when" figure the command checks and reports, met or not.

    ``ratio`` of ``variant`` to ``baseline`` (paired median) must be at least
    ``at_least`` and/or at most ``at_most``. ``of`` is ``"wall"`` (the rate or
    time per call) or a CPU scope name (CPU per message).
    """

    description: str
    variant: str
    baseline: str
    at_least: float | None = None
    at_most: float | None = None
    of: str = "wall"


@dataclasses.dataclass
class Stats:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values))


class Result:
    """The samples of a :class:`Comparison` run and everything derived from them."""

    def __init__(
        self, comparison: Comparison, samples: dict[str, list[Sample]], loads: list[float]
    ) -> None:
        self.comparison = comparison
        self.samples = samples
        self.loads = loads

    # -- figures

    def wall(self, name: str) -> list[float]:
        """Per-round rate (ops/s) or time per op (s), by the comparison's metric."""
        if self.comparison.metric == "rate":
            return [s.ops / s.wall for s in self.samples[name]]
        return [s.wall / s.ops for s in self.samples[name]]

    def cpu(self, name: str, scope: str) -> list[float] | None:
        """Per-round CPU seconds per op in ``scope``, or None if not measured."""
        values = [s.cpu[scope] / s.ops for s in self.samples[name] if scope in s.cpu]
        return values if len(values) == len(self.samples[name]) else None

    def ratios(self, name: str, baseline: str, of: str = "wall") -> list[float] | None:
        """Per-round paired ratios of ``name`` to ``baseline``."""
        if of == "wall":
            mine, theirs = self.wall(name), self.wall(baseline)
        else:
            mine_cpu, theirs_cpu = self.cpu(name, of), self.cpu(baseline, of)
            if mine_cpu is None or theirs_cpu is None:
                return None
            mine, theirs = mine_cpu, theirs_cpu
        return [a / b for a, b in zip(mine, theirs, strict=True)]

    def check(self, target: Target) -> tuple[bool, Stats]:
        ratios = self.ratios(target.variant, target.baseline, target.of)
        if ratios is None:
            raise KeyError(f"no {target.of!r} figures for {target.variant!r} / {target.baseline!r}")
        stats = Stats.of(ratios)
        met = (target.at_least is None or stats.median >= target.at_least) and (
            target.at_most is None or stats.median <= target.at_most
        )
        return met, stats

    # -- the table

    def markdown(
        self,
        *,
        targets: Sequence[Target] = (),
        notes: Sequence[str] = (),
        ratios_to: Sequence[str] | None = None,
        cpu_ratios_to: Sequence[str] | None = None,
    ) -> str:
        """The one table format: figures, paired ratios, CPU per message, load.

        ``ratios_to`` and ``cpu_ratios_to`` pick the baselines that get a ratio
        column (by name; default: every baseline).
        """
        c = self.comparison
        baselines = [
            v for v in c.variants if v.baseline and (ratios_to is None or v.name in ratios_to)
        ]
        cpu_baselines = [
            v
            for v in c.variants
            if v.baseline and (cpu_ratios_to is None or v.name in cpu_ratios_to)
        ]
        rate = c.metric == "rate"
        main_scope = next(iter(c.cpu_scopes), None)
        head = ["variant", "guarantee"]
        head.append(f"{c.unit}s/s" if rate else f"µs per {c.unit}")
        head += [f"vs {b.label}" for b in baselines]
        head += [f"CPU µs/{c.unit}: {scope}" for scope in c.cpu_scopes]
        if main_scope is not None:
            head += [f"CPU vs {b.label}" for b in cpu_baselines]
        rows = []
        for variant in c.variants:
            wall = Stats.of(self.wall(variant.name))
            cells = [
                f"**{variant.name}**" if variant.baseline else variant.name,
                variant.guarantee,
                _fmt(wall, 1 if rate else 1e6),
            ]
            for base in baselines:
                ratios = self.ratios(variant.name, base.name)
                cells.append("1.00x" if base is variant else _fmt_ratio(ratios))
            for scope in c.cpu_scopes:
                cpu = self.cpu(variant.name, scope)
                cells.append(_fmt(Stats.of(cpu), 1e6) if cpu else "-")
            if main_scope is not None:
                for base in cpu_baselines:
                    ratios = self.ratios(variant.name, base.name, main_scope)
                    cells.append("1.00x" if base is variant else _fmt_ratio(ratios))
            rows.append(cells)
        load = Stats.of(self.loads)
        lines = [
            f"Command: `{c.command}`  ",
            f"Run: {c.started:%Y-%m-%d %H:%M} UTC, commit {c.commit}, Python "
            f"{platform.python_version()}, {os.cpu_count()} cores; {c.rounds} interleaved "
            f"rounds; 1-minute load average {load.median:.2f} "
            f"(range {load.low:.2f}-{load.high:.2f}).  ",
            "Each cell: median over the rounds, range (min-max) in brackets; ratios are "
            f"paired per round ({'higher is faster' if rate else 'lower is cheaper'}; "
            "CPU ratios: lower is cheaper).",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
        ]
        if c.cpu_scopes:
            lines.append("CPU scopes:")
            lines += [f"- *{scope}*: {meaning}" for scope, meaning in c.cpu_scopes.items()]
            lines.append("")
        if targets:
            lines.append("Targets (paired median over the rounds, range in brackets):")
            for target in targets:
                met, stats = self.check(target)
                bound = " and ".join(
                    part
                    for part in (
                        f"≥ {target.at_least:g}x" if target.at_least is not None else "",
                        f"≤ {target.at_most:g}x" if target.at_most is not None else "",
                    )
                    if part
                )
                what = "" if target.of == "wall" else f" (CPU per {c.unit}, {target.of})"
                lines.append(
                    f"- {target.description}{what}: {bound}: **{stats.median:.2f}x** "
                    f"[{stats.low:.2f}-{stats.high:.2f}]: {'met' if met else '**not met**'}"
                )
            lines.append("")
        lines += list(notes)
        return "\n".join(lines).rstrip() + "\n"


def _fmt(stats: Stats, scale: float) -> str:
    digits = 0 if (stats.median * scale >= 100) else 1
    fmt = f"{{:,.{digits}f}}"
    return (
        f"{fmt.format(stats.median * scale)} "
        f"[{fmt.format(stats.low * scale)}-{fmt.format(stats.high * scale)}]"
    )


def _fmt_ratio(ratios: Sequence[float] | None) -> str:
    if not ratios:
        return "-"
    stats = Stats.of(ratios)
    return f"{stats.median:.2f}x [{stats.low:.2f}-{stats.high:.2f}]"


class Comparison:
    """Runs variants in interleaved rounds and collects their samples.

    Args:
        title: What is compared (for the printed progress).
        variants: The variants; at least one with ``baseline=True``.
        rounds: Rounds; at least five.
        metric: ``"rate"`` (ops per second; higher is better) or ``"time"``
            (µs per op; lower is better).
        unit: What one op is (``"email"``, ``"call"``).
        cpu_scopes: The CPU scopes the variants report, each with what it covers
            and whether it is part of the system under test.
        warmup: Run every variant once, unrecorded, before the first round.
    """

    def __init__(
        self,
        title: str,
        variants: Sequence[Variant],
        *,
        rounds: int = MIN_ROUNDS,
        metric: Literal["rate", "time"] = "rate",
        unit: str = "email",
        cpu_scopes: Mapping[str, str] | None = None,
        warmup: bool = False,
    ) -> None:
        if rounds < MIN_ROUNDS:
            raise ValueError(f"at least {MIN_ROUNDS} rounds, not {rounds}")
        if not any(v.baseline for v in variants):
            raise ValueError("name a baseline")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must differ")
        self.title = title
        self.variants = list(variants)
        self.rounds = rounds
        self.metric = metric
        self.unit = unit
        self.cpu_scopes = dict(cpu_scopes or {})
        self.warmup = warmup
        self.command = command_line()
        self.commit = git_commit()
        self.started = dt.datetime.now(dt.UTC)

    def run(self) -> Result:
        samples: dict[str, list[Sample]] = {v.name: [] for v in self.variants}
        loads: list[float] = []
        if self.warmup:
            for variant in self.variants:
                variant.run(-1)
        count = len(self.variants)
        for round_no in range(self.rounds):
            order = self.variants[round_no % count :] + self.variants[: round_no % count]
            for variant in order:
                loads.append(os.getloadavg()[0])
                sample = variant.run(round_no)
                if sample.ops <= 0 or sample.wall <= 0:
                    raise RuntimeError(f"{variant.name}: empty sample {sample}")
                samples[variant.name].append(sample)
                _progress(
                    f"{self.title} | round {round_no + 1}/{self.rounds} | {variant.name}", sample
                )
        loads.append(os.getloadavg()[0])
        return Result(self, samples, loads)


def _progress(what: str, sample: Sample) -> None:
    cpu = ", ".join(f"{k} {v / sample.ops * 1e6:.0f} µs" for k, v in sample.cpu.items())
    print(
        f"  {what}: {sample.ops} in {sample.wall:.3f}s ({sample.ops / sample.wall:,.0f}/s"
        f"{'; CPU/op ' + cpu if cpu else ''})",
        file=sys.stderr,
        flush=True,
    )


# --- the docs ------------------------------------------------------------------------------


def _markers(key: str) -> tuple[str, str]:
    return (
        f"<!-- bench:{key} begin: written by the command below; rerun it, do not edit -->",
        f"<!-- bench:{key} end -->",
    )


def write_section(key: str, markdown: str, path: Path = DOCS) -> None:
    """Replace the marked section ``key`` of ``path`` with ``markdown``.

    A section that is not there yet is appended at the end of the file; move
    its markers (with the prose around them) where they belong once.
    """
    begin, end = _markers(key)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(
        re.escape(begin.split(":", 2)[0] + ":" + key + " begin") + r"[^\n]*\n.*?" + re.escape(end),
        re.DOTALL,
    )
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def command_line() -> str:
    script = Path(sys.argv[0])
    with_root = script.resolve().is_relative_to(ROOT) if script.name else False
    shown = str(script.resolve().relative_to(ROOT)) if with_root else sys.argv[0]
    return shlex.join(["python", shown, *sys.argv[1:]])


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (src modified)" if dirty else "")


def arguments(description: str, *, rounds: int = MIN_ROUNDS) -> argparse.ArgumentParser:
    """The options every benchmark command takes; add your own to the parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"interleaved rounds (at least {MIN_ROUNDS})"
    )
    parser.add_argument(
        "--no-write",
        dest="write",
        action="store_false",
        help="print the tables only; leave docs/benchmarks.md alone",
    )
    return parser


def publish(key: str, markdown: str, *, write: bool) -> None:
    """Print a section and (unless ``write`` is false) put it into docs/benchmarks.md."""
    print(markdown, flush=True)
    if write:
        write_section(key, markdown)
