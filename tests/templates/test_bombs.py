"""Every template bomb ends ``failed`` with ``TemplateLimitError``, quickly and in bounded memory.

The corpus (``tests/templates/bombs.py``) goes through a real Notifier on the
eager and the in-process transport, each bomb in a forked child whose address
space is capped (``tests/templates/bomb_runner.py``); the Celery transport is
``tests/integration/test_template_bombs_celery.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tenant_notify.templates._limits import WALL_FACTOR
from tests.templates.bombs import BOMBS

ROOT = Path(__file__).resolve().parents[2]
RENDER_TIMEOUT = 1.0
#: The render's limit is CPU time: a bomb stops within twice it, however busy the machine.
MAX_CPU_SECONDS = 2 * RENDER_TIMEOUT
#: And the wall-clock backstop ends it even when the machine starves it (with room for
#: the send and the status around the render).
MAX_SECONDS = 2 * WALL_FACTOR * RENDER_TIMEOUT
MAX_GROWTH_MB = 300


def run_corpus(transport: str) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.templates.bomb_runner", transport, str(RENDER_TIMEOUT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    # The figures for the record (pytest -s shows them).
    print(
        f"\n{len(results)} bombs on {transport}: slowest"
        f" {max(r.get('seconds', 0) for r in results)} s,"
        f" most CPU {max(r.get('cpu_seconds', 0) for r in results)} s, largest growth"
        f" {max(r.get('growth_mb', 0) for r in results)} MB"
    )
    return {result["name"]: result for result in results}


@pytest.fixture(scope="module", params=["eager", "inprocess"])
def outcomes(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return run_corpus(request.param)


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_fails_with_a_limit_error_in_time_and_memory(
    outcomes: dict[str, dict[str, Any]], name: str
) -> None:
    outcome = outcomes[name]
    assert (outcome["state"], outcome.get("error_type")) == ("failed", "TemplateLimitError"), (
        outcome
    )
    assert outcome["cpu_seconds"] < MAX_CPU_SECONDS, outcome
    assert outcome["seconds"] < MAX_SECONDS, outcome
    assert outcome["growth_mb"] < MAX_GROWTH_MB, outcome
