"""Bounded template caches: LRU order, statistics, sharing, and memory with 10,000 tenants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tenant_notify.templates import TemplateRenderer
from tenant_notify.templates._cache import LRUCache

from .test_renderer import write

ROOT = Path(__file__).resolve().parents[2]


def test_lru_forgets_the_least_recently_used_and_counts() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache["a"] = 1
    cache["b"] = 2
    assert cache.get("a") == 1  # a is now the most recent
    cache["c"] = 3
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size, stats.max_size) == (3, 1, 2, 2)
    assert stats.hit_rate == 0.75
    with pytest.raises(ValueError):
        LRUCache(0)


@pytest.fixture
def welcome() -> dict[str, Any]:
    return {"user_email": "a@b.test", "user_name": "Ann", "tenant": {"id": "t", "name": "T"}}


def test_built_in_templates_are_compiled_once_for_all_tenants(
    tmp_path: Path, welcome: dict[str, Any]
) -> None:
    renderer = TemplateRenderer()
    for n in range(20):
        write(tmp_path, f"t{n}/welcome/subject.txt", f"Hi from {n}")
        email = renderer.render_email("welcome", welcome, templates_dir=tmp_path / f"t{n}")
        assert email.subject == f"Hi from {n}"
    # 20 tenant subjects, and the built-in body.txt, body.html and layout once.
    assert renderer.cache_stats()["templates"].size == 20 + 3


def test_caches_stay_within_their_bound(tmp_path: Path, welcome: dict[str, Any]) -> None:
    renderer = TemplateRenderer(cache_size=5)
    for n in range(30):
        write(tmp_path, f"t{n}/welcome/subject.txt", f"Hi from {n}")
        renderer.render_email("welcome", welcome, templates_dir=tmp_path / f"t{n}")
        renderer.check_kind("welcome", "email", templates_dir=tmp_path / f"t{n}")
    stats = renderer.cache_stats()
    assert stats["templates"].size == 5
    assert stats["lookups"].size == stats["kinds"].size == 20
    # What was dropped is compiled again, and still right.
    assert renderer.render_email("welcome", welcome, templates_dir=tmp_path / "t0").subject == (
        "Hi from 0"
    )


def test_ten_thousand_tenants_rendered_twice_grow_the_process_by_under_150_mib() -> None:
    # One own part per tenant keeps this under a minute; bench/bench_templates.py
    # measures three. In a process of its own, so the figure is this test's.
    done = subprocess.run(
        [sys.executable, "-m", "tests.templates.tenant_memory", "10000", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["growth_mib"] < 150, result
    assert result["caches"]["templates"]["size"] <= result["caches"]["templates"]["max_size"]
