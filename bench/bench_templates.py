"""Rendering: a warm render against the renderer before the hardening, and memory per tenant.

Run: ``python bench/bench_templates.py`` (or ``nox -s bench``). Writes the
``templates`` section of docs/benchmarks.md (``--no-write``: print only).

1. **Warm render.** Every variant renders the built-in order confirmation (subject,
   text and HTML with the layout, three order lines; English and German tenants
   in turn) again and again after a warm-up, in a process of its own per round,
   and is timed per email:

   * **tenant-notify, this checkout**: ``TemplateRenderer.render_email`` with the
     sandbox and every limit;
   * **tenant-notify at <rev>** (``--against``, default the commit before the
     limits of issue 11 landed): the same call on that revision's code, exported
     with ``git archive`` and put first on ``sys.path``;
   * **plain Jinja2**: the same templates under a plain ``jinja2.Environment``,
     no sandbox, no limits (bench/handwritten.py), compiled once and held.

2. **Memory with many tenants.** ``tests/templates/tenant_memory.py``: 10,000
   tenants (``--tenants``) each with their own subject, text and HTML, rendered in
   turn twice with one renderer; the resident memory it grew by, for this checkout
   and for ``--against``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from _harness import ROOT, Comparison, Sample, Target, Variant, arguments, publish, run_json

BEFORE = "4939bdb"  # main just before the limits of issue 11 landed
WINDOW = 1.0  # seconds measured per round
WARM_UP = 300


def context(tenant_id: str) -> dict[str, Any]:
    locale = "de" if tenant_id == "globex" else "en"
    return {
        "order_id": "A-1001",
        "customer_email": "ann@example.test",
        "order_total": Decimal("99.99"),
        "currency": "USD",
        "customer_name": "Ann",
        "items": [
            {"name": f"Item {i}", "quantity": 2, "unit_price": Decimal("10.50")} for i in range(3)
        ],
        "order_url": "https://acme.test/orders/A-1001",
        "tenant": {"id": tenant_id, "name": tenant_id.title(), "locale": locale, "branding": {}},
        "locale": locale,
    }


def worker(kind: str) -> Sample:
    """One round, in this process: warm up, then render for WINDOW seconds."""
    contexts = [context("acme"), context("globex")]
    if kind == "jinja":
        sys.path.insert(0, str(ROOT / "bench"))
        from handwritten import Renderer

        plain = Renderer()

        def render(ctx: dict[str, Any]) -> object:
            return plain.render(ctx["tenant"]["id"], ctx)
    else:
        from tenant_notify.templates import TemplateRenderer

        renderer = TemplateRenderer(auto_reload=False)

        def render(ctx: dict[str, Any]) -> object:
            return renderer.render_email("order_confirmation", ctx, locale=ctx["locale"])

    for i in range(WARM_UP):
        render(contexts[i % 2])
    done = 0
    cpu0 = time.process_time()
    started = time.perf_counter()
    while (wall := time.perf_counter() - started) < WINDOW:
        for _ in range(50):
            render(contexts[done % 2])
            done += 1
    return Sample(ops=done, wall=wall, cpu={"process": time.process_time() - cpu0})


def export(rev: str, into: Path) -> Path:
    """The ``src`` folder of ``rev``, exported from git into ``into``."""
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def runner(kind: str, src: Path | None) -> Any:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    return lambda round_no: run_json(command, env=env)


def tenant_memory(src: Path | None, tenants: int) -> dict[str, Any]:
    env = dict(os.environ)
    path = ([str(src)] if src is not None else []) + [str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path)
    done = subprocess.run(
        [sys.executable, "-m", "tests.templates.tenant_memory", str(tenants), "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["library", "jinja"], help=argparse_hidden())
    parser.add_argument("--against", default=BEFORE, help="the git revision to compare with")
    parser.add_argument("--tenants", type=int, default=10_000, help="tenants for the memory run")
    args = parser.parse_args()
    if args.worker:
        print(worker(args.worker).to_json())
        return
    with tempfile.TemporaryDirectory() as folder:
        before_src = export(args.against, Path(folder))
        this = "tenant-notify, this checkout"
        before = f"tenant-notify at {args.against}"
        plain = "plain Jinja2, no sandbox"
        result = Comparison(
            "Warm render of the built-in order confirmation",
            [
                Variant(this, runner("library", ROOT / "src"), guarantee="every limit"),
                Variant(
                    before,
                    runner("library", before_src),
                    guarantee="limits before issue 11",
                    baseline=True,
                    short=args.against,
                ),
                Variant(plain, runner("jinja", None), guarantee="no limits", baseline=True),
            ],
            rounds=args.rounds,
            metric="time",
            unit="email",
            cpu_scopes={"process": "the rendering process (system under test)"},
        ).run()
        table = result.markdown(
            targets=[
                Target("a warm render is no slower than before", this, before, at_most=1.0),
            ]
        )
        now = tenant_memory(None, args.tenants)
        then = tenant_memory(before_src, args.tenants)
    lines = [
        table,
        "",
        f"Memory: {args.tenants:,} tenants, each with its own subject, text and HTML, rendered in"
        " turn twice by one renderer (`python -m tests.templates.tenant_memory"
        f" {args.tenants} 3`), resident memory growth:",
        "",
        "| code | growth | seconds | compiled templates kept |",
        "|---|---:|---:|---:|",
        f"| this checkout | {now['growth_mib']} MiB | {now['seconds']} |"
        f" {now['caches'].get('templates', {}).get('size', '-')} |",
        f"| {args.against} | {then['growth_mib']} MiB | {then['seconds']} | unbounded |",
    ]
    publish("templates", "\n".join(lines), write=args.write)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
