"""The tenant-notify command and the quickstart example, run as a user would."""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenant_notify.cli import main

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


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "notify.toml"
    path.write_text(CONFIG.format(out=tmp_path / "out"), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("TENANT_NOTIFY_CONFIG_FILE", None)
    return subprocess.run(
        [sys.executable, "-m", "tenant_notify.cli", *args],
        cwd=cwd,
        env=env,
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
    assert "12,50 €" in capsys.readouterr().out
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
