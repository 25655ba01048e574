"""``tenant-notify suppress list|add|remove`` and ``resume`` on the shared Redis state."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tenant_notify import Notifier
from tenant_notify.cli import main
from tenant_notify.models import Channel
from tenant_notify.reputation import Pause


@pytest.fixture
def config(tmp_path: Path, redis_prefix: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("TENANT_NOTIFY_CONFIG_FILE", raising=False)
    _, prefix = redis_prefix
    file = tmp_path / "tenant-notify.toml"
    file.write_text(
        f"""
transport = "celery"
[redis]
url = "redis://127.0.0.1:6379/15"
key_prefix = "{prefix}"
[tenants.acme]
name = "Acme"
email_from = "orders@acme.test"
""",
        encoding="utf-8",
    )
    return str(file)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_add_list_remove(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "suppress", "add", "acme", "jane@example.com", "--config", config)
    assert code == 0 and "suppressed j" in out and "jane@example.com" not in out
    run(
        capsys,
        "suppress", "add", "acme", "+15551234567", "--channel", "sms",
        "--reason", "unsubscribe", "--config", config,
    )  # fmt: skip
    run(
        capsys,
        "suppress", "add", "acme", "jane@example.com", "--category", "marketing",
        "--reason", "unsubscribe", "--config", config,
    )  # fmt: skip

    code, out, _ = run(capsys, "suppress", "list", "acme", "--config", config)
    assert code == 0 and "3 suppressed recipient(s) for acme" in out
    assert "jane@example.com" not in out and "+15551234567" not in out
    assert "marketing" in out and "(all)" in out and "cli" in out
    _, out, _ = run(capsys, "suppress", "list", "acme", "--unmasked", "--channel", "sms",
                    "--config", config)  # fmt: skip
    assert "+15551234567" in out and "jane" not in out

    # Another process (a host's notifier on the same settings) sees the CLI's entries.
    with Notifier.from_env() as notify:
        assert notify.suppressions.check("acme", "jane@example.com") is not None

    code, out, _ = run(
        capsys, "suppress", "remove", "acme", "jane@example.com", "--category", "marketing",
        "--config", config,
    )  # fmt: skip
    assert code == 0 and "lifted 1" in out
    code, _, _ = run(capsys, "suppress", "remove", "acme", "jane@example.com", "--config", config)
    assert code == 0
    code, out, _ = run(capsys, "suppress", "remove", "acme", "jane@example.com", "--config", config)
    assert code == 1 and "lifted 0" in out
    _, out, _ = run(capsys, "suppress", "list", "acme", "--channel", "email", "--config", config)
    assert "0 suppressed recipient(s)" in out


def test_bad_input_is_refused(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "suppress", "add", "acme", "not-an-address", "--config", config)
    assert code == 2 and "InvalidRecipientError" in err
    code, _, err = run(capsys, "suppress", "add", "nobody", "jane@example.com", "--config", config)
    assert code == 2 and "UnknownTenantError" in err


def test_resume(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "resume", "acme", "--config", config)
    assert code == 1 and "nothing was paused" in out
    now = dt.datetime.now(dt.UTC)
    with Notifier.from_env() as notify:
        notify.reputation.store.pause(
            Pause("acme", Channel.EMAIL, "550 5.7.26", 5, now, now + dt.timedelta(minutes=5))
        )
    code, out, _ = run(capsys, "resume", "acme", "--config", config)
    assert code == 0 and "acme: resumed email" in out
    with Notifier.from_env() as notify:
        assert notify.breaker.pauses() == []


def test_in_process_lists_cannot_be_edited_from_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TENANT_NOTIFY_CONFIG_FILE", raising=False)
    file = tmp_path / "local.toml"
    file.write_text('[tenants.acme]\nname = "Acme"\nemail_from = "o@acme.test"\n')
    with pytest.raises(SystemExit) as info:
        main(["suppress", "list", "acme", "--config", str(file)])
    assert "kept in memory" in str(info.value)
