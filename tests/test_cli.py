"""The tenant-notify command and the quickstart example, run as a user would."""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenant_notify.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
transport = "eager"
[email]
provider = "file"
directory = "{out}"
[sms]
provider = "file"
directory = "{out}"
[tenants.acme]
name = "Acme Shop"
email_from = "Acme Shop <orders@acme.test>"
sms_from = "+15005550006"
branding = {{ primary_color = "#b91c1c" }}
[tenants.globex]
name = "Globex Café"
email_from = "hello@globex.test"
locale = "de"
"""


@pytest.fixture(autouse=True)
def _own_environment(monkeypatch):
    # --config sets TENANT_NOTIFY_CONFIG_FILE in the process (main() runs in it here).
    # setenv remembers it as unset, so it is removed again after each test.
    monkeypatch.setenv("TENANT_NOTIFY_CONFIG_FILE", "")
    for name in list(os.environ):
        if name.upper().startswith("TENANT_NOTIFY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "notify.toml"
    path.write_text(CONFIG.format(out=tmp_path / "out"), encoding="utf-8")
    return path


# Runs the command with celery and kombu unimportable, as where the extra is not installed.
_WITHOUT_CELERY = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"celery", "kombu"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Absent())
from tenant_notify.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, without_celery: bool = False
) -> subprocess.CompletedProcess[str]:
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith("TENANT_NOTIFY_")
    }
    environ.update(env or {}, PYTHONPATH=str(ROOT / "src"))
    command = ["-c", _WITHOUT_CELERY] if without_celery else ["-m", "tenant_notify.cli"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_from_an_empty_folder(tmp_path):
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Acme Shop <orders@acme.test>" in out and "Globex Café <hello@globex.test>" in out
    assert out.count(" sent ") == 4
    emails = sorted((tmp_path / "tenant-notify-demo").glob("*/*.eml"))
    sms = sorted((tmp_path / "tenant-notify-demo").glob("*/*.json"))
    assert len(emails) == 3 and len(sms) == 1
    senders = {
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["From"]
        for p in emails
    }
    assert senders == {"Acme Shop <orders@acme.test>", "Globex Café <hello@globex.test>"}
    assert json.loads(sms[0].read_text())["from"] == "+15005550006"


def test_render_each_part(config, capsys):
    context = json.dumps(
        {
            "order_id": "A-1",
            "customer_email": "j@example.com",
            "order_total": 12.5,
            "currency": "EUR",
        }
    )
    args = [
        "render",
        "order_confirmation",
        "--tenant",
        "globex",
        "--context",
        context,
        "--config",
        str(config),
    ]
    assert main([*args, "--part", "subject"]) == 0
    assert "A-1" in capsys.readouterr().out
    assert main([*args, "--part", "text"]) == 0
    assert "12,50\u00a0€" in capsys.readouterr().out
    assert main([*args, "--part", "html", "--locale", "en"]) == 0
    html = capsys.readouterr().out
    assert html.lstrip().startswith("<!DOCTYPE html>") and "€12.50" in html


def test_render_reports_a_missing_field(config, capsys):
    code = main(["render", "welcome", "--tenant", "acme", "--config", str(config)])
    assert code == 2
    assert "user_name" in capsys.readouterr().err


def test_send_and_check_config(config, tmp_path, capsys):
    assert (
        main(
            [
                "send",
                "sms",
                "--tenant",
                "acme",
                "--to",
                "+15551234567",
                "--channel",
                "sms",
                "--context",
                '{"body": "hello"}',
                "--config",
                str(config),
            ]
        )
        == 0
    )
    assert " sent provider=file" in capsys.readouterr().out
    [sms] = (tmp_path / "out").glob("*.json")
    assert json.loads(sms.read_text())["body"] == "hello"

    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "acme: 'Acme Shop'" in out and "configuration OK" in out
    assert "transport: eager" in out


def test_check_config_names_the_bad_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[email]\nprovider = "smtp"\nport = "lots"\n', encoding="utf-8")
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "email.port" in capsys.readouterr().err


def test_send_rejects_bad_input_with_a_clear_message(config, capsys):
    code = main(
        ["send", "email", "--tenant", "acme", "--to", "not-an-address", "--config", str(config)]
    )
    assert code == 2
    assert "InvalidRecipientError" in capsys.readouterr().err


def test_quickstart_example_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for line in (
        "order_confirmation: sent via console",
        "welcome: sent via console",
        "sms: sent via console",
    ):
        assert line in result.stdout
    assert "Willkommen" in result.stdout  # globex is German


# --- help text -------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_and_command_has_help_text():
    parsers = list(_parsers(build_parser()))
    missing = [
        f"{prog} {action.dest}"
        for prog, parser in parsers
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    # Every subcommand at every level (events schemas list, suppress add, ...) has a
    # line of its own in its parent's --help.
    silent = [
        f"{prog} {name}"
        for prog, parser in parsers
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
        if not any(c.dest == name and c.help for c in action._choices_actions)
    ]
    assert (missing, silent) == ([], [])
    assert len(parsers) > 15  # the walk reached the nested commands


# --- --config means the same for every command -----------------------------------------


def test_every_command_that_reads_settings_takes_the_same_config_option():
    # demo makes up its own settings; every other command reads them through --config.
    options = {
        prog: [a for a in parser._actions if "--config" in a.option_strings]
        for prog, parser in _parsers(build_parser())
        if parser.get_default("func") is not None
    }
    assert [prog for prog, found in options.items() if not found] == ["tenant-notify demo"]
    helps = {found[0].help for found in options.values() if found}
    assert len(helps) == 1 and "TENANT_NOTIFY_CONFIG_FILE" in helps.pop()


def test_config_file_has_the_environment_laid_over_it_for_every_command(
    config, capsys, monkeypatch
):
    monkeypatch.setenv("TENANT_NOTIFY_TENANTS__ACME__NAME", "Acme From Env")
    monkeypatch.setenv("TENANT_NOTIFY_TENANTS__ACME__EMAIL_FROM", "Env <env@acme.test>")
    subject = ["render", "welcome", "--tenant", "acme", "--part", "subject"]
    assert main([*subject, "--context", '{"user_name": "Jo"}', "--config", str(config)]) == 0
    assert "Acme From Env" in capsys.readouterr().out

    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "acme: 'Acme From Env'" in out
    assert f"TENANT_NOTIFY_CONFIG_FILE={config}" in out
    assert (
        "2 TENANT_NOTIFY_* variable(s) over it: TENANT_NOTIFY_TENANTS__ACME__EMAIL_FROM, "
        "TENANT_NOTIFY_TENANTS__ACME__NAME" in out
    )

    send = ["send", "email", "--tenant", "acme", "--to", "jo@example.com"]
    context = '{"subject": "Hi", "body": "Hello"}'
    assert main([*send, "--context", context, "--config", str(config)]) == 0
    [sent] = (config.parent / "out").glob("*.eml")
    assert "From: Env <env@acme.test>" in sent.read_text()


def test_worker_reads_config_like_the_other_commands(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "worker.toml"
    empty.write_text('transport = "celery"\n', encoding="utf-8")
    # The file has no tenants: the worker refuses to start, naming the file it read.
    assert main(["worker", "--config", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"tenants: no tenants are configured: TENANT_NOTIFY_CONFIG_FILE={empty} has no" in err
    # A tenant from the environment counts (it lies over the file), and so does a bad
    # setting there: the worker now stops at that instead, before Celery starts.
    monkeypatch.setenv("TENANT_NOTIFY_TENANTS__ACME__NAME", "Acme")
    monkeypatch.setenv("TENANT_NOTIFY_IDEMPOTENCY__LEASE", "1")
    assert main(["worker", "--config", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "idempotency.lease: must be at least 3 seconds" in err


def test_worker_without_any_configuration_refuses_to_start(tmp_path):
    result = run_cli("worker", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "no tenants are configured: TENANT_NOTIFY_CONFIG_FILE is not set and no "
        "TENANT_NOTIFY_TENANTS__<ID>__<KEY> variable is set" in result.stderr
    )


def test_the_ready_celery_app_refuses_settings_without_tenants(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import tenant_notify.celery_app"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "ConfigurationError: tenants: no tenants are configured" in result.stderr


# --- check-config tells the truth --------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


TENANT = '[tenants.acme]\nname = "Acme"\nemail_from = "orders@acme.test"\n'


def test_check_config_refuses_an_unknown_transport(tmp_path, capsys):
    path = _write(tmp_path / "rq.toml", 'transport = "rq"\n' + TENANT)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "transport.backend: unknown transport 'rq'" in err
    assert "configuration OK" not in capsys.readouterr().out


def test_check_config_refuses_a_lease_too_short_to_renew(tmp_path, capsys):
    path = _write(
        tmp_path / "lease.toml",
        'transport = "celery"\n[idempotency]\nlease = 2\n' + TENANT,
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "idempotency.lease: must be at least 3 seconds" in err
    assert err.strip().endswith("1 problem(s) in the configuration")


def test_check_config_refuses_celery_when_it_is_not_installed(tmp_path):
    path = _write(tmp_path / "celery.toml", 'transport = "celery"\n' + TENANT)
    result = run_cli("check-config", "--config", str(path), cwd=tmp_path, without_celery=True)
    assert result.returncode == 2
    assert (
        "MissingDependencyError: transport.backend: 'celery' is not installed; install it "
        "with: pip install 'tenant-notify[celery]'" in result.stderr
    )
    assert "configuration OK" not in result.stdout
    # The same settings are fine where Celery is installed.
    assert run_cli("check-config", "--config", str(path), cwd=tmp_path).returncode == 0


def test_check_config_lists_every_problem_with_its_key(tmp_path, capsys):
    path = _write(
        tmp_path / "bad.toml",
        'transport = "celery"\n'
        "[idempotency]\nlease = 1\n"
        '[email]\nprovider = "smtp"\nhost = "mail.test"\nstarttls = true\n'
        f'ca_file = "{tmp_path / "missing.pem"}"\n'
        '[tenants.acme]\nname = "Acme"\nemail_from = "orders@acme.test"\n'
        '[tenants.acme.sms]\nprovider = "smtp"\n'
        '[tenants.globex]\nname = "Globex"\nemail_from = "hi@globex.test"\n'
        '[tenants.globex.email]\nprovider = "sendgird"\n',
    )
    assert main(["check-config", "--config", str(path)]) == 2
    problems = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert [line.split(": ")[2] for line in problems] == [
        "idempotency.lease",
        "email.ca_file",
        "tenants.acme.sms.provider",
        "tenants.globex.email.provider",
    ]
    assert "did you mean 'sendgrid'?" in problems[3]


def test_check_config_lists_every_bad_key_of_the_settings(tmp_path, capsys):
    path = _write(
        tmp_path / "bad.toml",
        'nonsense = 1\n[transport]\nworkers = 0\n[retry]\nmax_attempts = "many"\n',
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    for key in ("transport.workers", "retry.max_attempts", "nonsense"):
        assert f"error: ConfigurationError: {key}: " in err
    assert "3 problem(s) in the configuration" in err


def test_check_config_shows_the_celery_targets_with_secrets_masked(tmp_path, capsys):
    path = _write(
        tmp_path / "celery.toml",
        'transport = "celery"\n[celery]\nbroker_url = "amqp://app:s3cret@127.0.0.1:9//"\n'
        'queue = "orders"\n[redis]\nurl = "redis://:hunter2@127.0.0.1:9/3"\n' + TENANT,
    )
    # Port 9 answers nobody: nothing is connected to, the settings are fine.
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "broker: amqp://app:***@127.0.0.1:9//" in out
    assert "queue: orders (dead letters: tenant_notify.dead)" in out
    assert "redis: redis://:***@127.0.0.1:9/3" in out
    assert "s3cret" not in out and "hunter2" not in out
    assert out.strip().endswith("configuration OK")
