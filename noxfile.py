"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typing``, ``nox -s bench``,
``nox -s timing``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (integration tests included where the services run)."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def timing(session: nox.Session) -> None:
    """The timing tests (wall-clock figures; run them on a quiet machine)."""
    session.install(".[test]")
    session.run("pytest", "-m", "timing", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(RUFF)
    session.run("ruff", "check", "src", "tests", "examples", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "bench", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install(".[test]", MYPY, "types-PyYAML")
    session.run("mypy", "--strict", "src/tenant_notify")


@nox.session(name="docs-examples")
def docs_examples(session: nox.Session) -> None:
    """Run the examples the docs show."""
    session.install(".")
    session.run("python", "examples/quickstart.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark; each writes its own section of docs/benchmarks.md.

    ``nox -s bench -- --no-write`` prints the tables only; other options after
    ``--`` go to every benchmark (``--rounds 7``).
    """
    session.install(".[test,bench]")
    session.run("python", "bench/bench_inprocess.py", *session.posargs)
    session.run("python", "bench/bench_submit.py", *session.posargs)
    session.run("python", "bench/bench_providers.py", *session.posargs)
    # Needs RabbitMQ and Redis on loopback, like the integration tests.
    session.run("python", "bench/bench_celery.py", *session.posargs)
    session.run("python", "bench/bench_events.py", *session.posargs)
    session.run("python", "bench/bench_task_sent.py", *session.posargs)
    session.run("python", "bench/bench_async.py", *session.posargs)
