"""``tenant-notify events schemas ...`` and the help of ``events consume``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tenant_notify.cli import build_parser, main
from tenant_notify.events import SchemaRegistry
from tests.events.conftest import ORDER_CREATED, RULES, SCHEMAS, cloudevent, order_data


@pytest.fixture
def config(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "notify.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tenants": {"acme": {"name": "Acme", "email_from": "a@acme.test"}},
                "events": {"schemas_dir": str(SCHEMAS), "rules": RULES},
            }
        )
    )
    return path


def test_list_shows_every_version_and_the_rules_using_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["events", "schemas", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    assert [ORDER_CREATED, "v2", f"{ORDER_CREATED}.v2.json", "order_confirmation/email"] in rows
    assert [
        "com.example.user.signed_up",
        "v1",
        "com.example.user.signed_up.v1.json",
        "welcome/email",
    ] in rows
    assert "3 schema(s) of 2 type(s)" in out


def test_export_writes_one_document_of_all_versions(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle.json"
    assert (
        main(
            [
                "events",
                "schemas",
                "export",
                ORDER_CREATED,
                "--out",
                str(out),
                "--config",
                str(config),
            ]
        )
        == 0
    )
    bundle = json.loads(out.read_text())
    assert sorted(bundle) == [ORDER_CREATED]
    assert sorted(bundle[ORDER_CREATED]) == ["v1", "v2"]
    assert bundle[ORDER_CREATED]["v1"]["title"] == "OrderCreated"


def test_validate_reports_each_file_and_fails_on_an_invalid_one(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(cloudevent()))
    bad.write_text(json.dumps(cloudevent(data=order_data(currency="euro"))))
    assert main(["events", "schemas", "validate", str(good), "--config", str(config)]) == 0
    assert main(["events", "schemas", "validate", str(good), str(bad), "--dir", str(SCHEMAS)]) == 1
    out = capsys.readouterr().out
    assert f"good.json: ok ({ORDER_CREATED} v2)" in out
    assert "bad.json: invalid (schema): data.currency: fails" in out


def test_generate_writes_the_next_version_from_a_pydantic_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, folder)
    (tmp_path / "shop_events.py").write_text(
        "import pydantic\n"
        "class OrderCreated(pydantic.BaseModel):\n"
        "    order_id: str\n"
        "    customer_email: str\n"
        "    total: float\n"
        "    currency: str\n"
        "    gift: bool = False\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    code = main(
        [
            "events",
            "schemas",
            "generate",
            "shop_events:OrderCreated",
            "--type",
            ORDER_CREATED,
            "--dir",
            str(folder),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().endswith(f"{ORDER_CREATED}.v3.json")
    assert SchemaRegistry(folder).latest(ORDER_CREATED).version == 3  # type: ignore[union-attr]


def test_every_events_option_has_help() -> None:
    parser = build_parser()
    events = next(
        a
        for a in parser._subparsers._group_actions[0].choices.items()  # type: ignore[union-attr]
        if a[0] == "events"
    )[1]
    seen = 0
    stack = [events]
    while stack:
        sub = stack.pop()
        for action in sub._actions:
            if action.dest == "help":
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
                continue
            assert action.help, f"{sub.prog} {action.dest} has no help"
            seen += 1
    assert seen >= 10
