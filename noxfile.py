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
def catalogs(session: nox.Session) -> None:
    """Extract the built-in templates' messages, update every catalog, compile the .mo.

    The compiled catalogs are committed (the wheel ships them as they are); a test
    checks that each .mo is its .po compiled and that every message is translated.
    Add a language with ``pybabel init -D tenant_notify -i <pot> -d <dir> -l xx``.
    """
    session.install("babel>=2.14", "jinja2>=3.1.4")
    locale = "src/tenant_notify/templates/locale"
    pot = f"{locale}/tenant_notify.pot"
    session.run(
        "pybabel", "extract", "-F", "babel.cfg", "--no-location", "--sort-output",
        "--omit-header", "-o", pot, "src/tenant_notify/templates/builtin",
    )  # fmt: skip
    session.run(
        "pybabel", "update", "-D", "tenant_notify", "-i", pot, "-d", locale,
        "--width", "100",
    )  # fmt: skip
    session.run("pybabel", "compile", "-D", "tenant_notify", "-d", locale, "--statistics")


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
    session.run("python", "bench/bench_templates.py", *session.posargs)
    session.run("python", "bench/bench_providers.py", *session.posargs)
    # Needs RabbitMQ and Redis on loopback, like the integration tests.
    session.run("python", "bench/bench_celery.py", *session.posargs)
    session.run("python", "bench/bench_worker_floor.py", *session.posargs)
    session.run("python", "bench/bench_events.py", *session.posargs)
    session.run("python", "bench/bench_task_sent.py", *session.posargs)
    session.run("python", "bench/bench_async.py", *session.posargs)
    session.run("python", "bench/bench_scheduler.py", *session.posargs)
