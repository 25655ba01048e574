"""How much 10,000 tenants with their own templates, rendered in turn twice, grow a process.

Run as ``python -m tests.templates.tenant_memory [TENANTS] [PARTS]``: makes TENANTS
tenant folders, each overriding the first PARTS of the welcome kind's parts
(``subject.txt``, ``body.txt``, ``body.html``), renders the welcome email of every
tenant in turn, twice, with one renderer (default settings), and prints JSON:
resident memory before and after (MiB), the growth, the seconds taken and the
renderer's cache statistics.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path

from tenant_notify.templates import TemplateRenderer

PARTS = {
    "subject.txt": "Welcome to tenant {n}, {{{{ user_name }}}}!",
    "body.txt": "Hello {{{{ user_name }}}},\n"
    "{{% for x in range(3) %}}line {{{{ x }}}} of {n}\n{{% endfor %}}",
    "body.html": '{{% extends "_layout.html" %}}{{% block content %}}'
    "<p>{n} says hi {{{{ user_name }}}}</p>{{% endblock %}}",
}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("VmRSS")


def main(tenants: int = 10_000, parts: int = 3) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="tenants-") as folder:
        return measure(Path(folder), tenants, parts)


def measure(root: Path, tenants: int, parts: int) -> dict[str, object]:
    folders = []
    for n in range(tenants):
        folder = root / f"t{n}"
        (folder / "welcome").mkdir(parents=True)
        for name, source in list(PARTS.items())[:parts]:
            (folder / "welcome" / name).write_text(source.format(n=n), encoding="utf-8")
        folders.append(folder)
    # Default settings, but a time limit a loaded machine cannot hit: memory is measured here.
    renderer = TemplateRenderer(render_timeout=120)
    context = {
        "user_email": "ann@example.test",
        "user_name": "Ann",
        "tenant": {"id": "t", "name": "T", "locale": "en", "branding": {}},
    }
    renderer.render_email("welcome", context)  # the built-in templates, compiled
    gc.collect()
    before = rss_mib()
    started = time.perf_counter()
    for _ in range(2):
        for folder in folders:
            renderer.render_email("welcome", context, templates_dir=folder)
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_mib()
    return {
        "tenants": tenants,
        "parts": parts,
        "renders": 2 * tenants,
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "growth_mib": round(after - before, 1),
        "seconds": round(seconds, 1),
        # Renderers before the bounded caches have no cache_stats().
        "caches": {
            name: vars_of(stats) for name, stats in getattr(renderer, "cache_stats", dict)().items()
        },
    }


def vars_of(stats: object) -> dict[str, object]:
    return {key: getattr(stats, key) for key in ("hits", "misses", "size", "max_size")}


if __name__ == "__main__":
    args = [int(arg) for arg in sys.argv[1:]]
    print(json.dumps(main(*args)))
