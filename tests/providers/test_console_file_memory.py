"""The providers that do not leave the machine: console, file and memory."""

from __future__ import annotations

import email
import email.message
import email.policy
import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tenant_notify.errors import (
    ConfigurationError,
    PermanentDeliveryError,
    TransientDeliveryError,
    WaitTimeoutError,
)
from tenant_notify.models import Address, Channel, EmailMessage, SmsMessage
from tenant_notify.providers.console import ConsoleConfig, ConsoleProvider
from tenant_notify.providers.file import FileConfig, FileProvider
from tenant_notify.providers.memory import (
    MemoryConfig,
    MemoryProvider,
    Outbox,
    clear_outboxes,
    get_outbox,
)


def make_email(n: int = 1, **changes: object) -> EmailMessage:
    fields: dict[str, object] = {
        "from_addr": Address("orders@acme.test", "Acme Shop"),
        "to": (Address("jane@example.com", "Jane Doe"),),
        "subject": f"Order {n} \N{EN DASH} Grüße",
        "text": f"Thanks for order {n}.\n",
        "html": f"<p>Thanks for order {n}.</p>",
        "notification_id": f"n-{n}",
        "tenant_id": "acme",
        "kind": "order_confirmation",
    }
    fields.update(changes)
    return EmailMessage(**fields)  # type: ignore[arg-type]


def make_sms(n: int = 1, **changes: object) -> SmsMessage:
    fields: dict[str, object] = {
        "from_number": "+15005550006",
        "to": "+15551234567",
        "body": f"Your code is {n}",
        "notification_id": f"s-{n}",
        "tenant_id": "acme",
        "kind": "verification",
    }
    fields.update(changes)
    return SmsMessage(**fields)  # type: ignore[arg-type]


# --- console -----------------------------------------------------------------------


def test_console_prints_an_email_block(capsys: pytest.CaptureFixture[str]) -> None:
    provider = ConsoleProvider()
    result = provider.send(make_email(reply_to=Address("help@acme.test")))
    out = capsys.readouterr().out
    assert "Channel:" in out
    assert "email" in out
    assert "Tenant:" in out
    assert "acme" in out
    assert "Acme Shop <orders@acme.test>" in out
    assert "Jane Doe <jane@example.com>" in out
    assert "Reply-To:" in out
    assert "help@acme.test" in out
    assert "Order 1 \N{EN DASH} Grüße" in out
    assert "Thanks for order 1." in out
    assert "<p>" not in out  # only the size of the HTML part is shown
    assert result.provider == "console"
    assert result.provider_message_id == "console-n-1"


def test_console_prints_sms_to_stderr_without_body(capsys: pytest.CaptureFixture[str]) -> None:
    provider = ConsoleProvider.from_config(ConsoleConfig(stream="stderr", show_body=False))
    provider.send(make_sms())
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "sms" in captured.err
    assert "+15551234567" in captured.err
    assert "Your code" not in captured.err


def test_console_escapes_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    ConsoleProvider().send(make_sms(body="red \x1b[31malert\x1b[0m\nline two"))
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\\x1b[31malert" in out
    assert "line two" in out


def test_console_blocks_do_not_interleave(capsys: pytest.CaptureFixture[str]) -> None:
    provider = ConsoleProvider()
    body = "\n".join(f"line {i}" for i in range(50))
    threads = [
        threading.Thread(target=provider.send, args=(make_sms(n, body=f"{n}:\n{body}"),))
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out = capsys.readouterr().out
    blocks = [b for b in out.split("-" * 72 + "\n") if b.strip()]
    assert len(blocks) == 8
    for block in blocks:
        number = block.split("Notification:")[1].split()[0].removeprefix("s-")
        assert f"\n{number}:\n" in block
        assert block.count("line 49") == 1


def test_console_rejects_an_unknown_stream() -> None:
    with pytest.raises(ConfigurationError):
        ConsoleProvider(stream="stdlog")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream"):
        ConsoleConfig(stream="stdlog")  # type: ignore[arg-type]


# --- file --------------------------------------------------------------------------


def test_file_writes_an_eml_that_parses_back(tmp_path: Path) -> None:
    directory = tmp_path / "out" / "mail"
    provider = FileProvider.from_config(FileConfig(directory=directory))
    assert directory.is_dir()  # created at once

    result = provider.send(make_email())

    path = Path(result.detail["path"])
    assert path.parent == directory
    assert path.suffix == ".eml"
    assert path.name.endswith("-n-1.eml")
    raw = path.read_bytes()
    assert all(byte < 128 for byte in raw)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    assert parsed["Subject"] == "Order 1 \N{EN DASH} Grüße"
    assert parsed["From"].addresses[0].display_name == "Acme Shop"
    assert parsed["Message-ID"] == f"<{result.provider_message_id}>"
    text, html = parsed.iter_parts()
    assert text.get_content().replace("\r\n", "\n") == "Thanks for order 1.\n"
    assert "<p>Thanks for order 1.</p>" in html.get_content()
    assert [p.name for p in directory.iterdir()] == [path.name]  # no temp file left


def test_file_writes_sms_as_json(tmp_path: Path) -> None:
    provider = FileProvider(directory=tmp_path)
    result = provider.send(make_sms(body="Grüße ☕"))
    path = Path(result.detail["path"])
    assert path.suffix == ".json"
    assert result.provider_message_id == path.stem
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["from"] == "+15005550006"
    assert record["to"] == "+15551234567"
    assert record["body"] == "Grüße ☕"
    assert (record["tenant_id"], record["notification_id"], record["kind"]) == (
        "acme",
        "s-1",
        "verification",
    )
    assert record["sent_at"].endswith("+00:00")


def test_file_names_sort_in_sending_order_and_do_not_collide(tmp_path: Path) -> None:
    provider = FileProvider(directory=tmp_path)
    paths = [Path(provider.send(make_sms(n=1)).detail["path"]) for _ in range(5)]
    assert len(set(paths)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]


def test_file_unsafe_notification_id_stays_in_the_directory(tmp_path: Path) -> None:
    provider = FileProvider(directory=tmp_path / "mail")
    result = provider.send(make_sms(notification_id="../../escape"))
    assert Path(result.detail["path"]).parent == tmp_path / "mail"


def test_file_directory_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError):
        FileProvider(directory=blocker)

    directory = tmp_path / "mail"
    provider = FileProvider(directory=directory)
    directory.rmdir()
    directory.write_text("now a file")
    with pytest.raises(PermanentDeliveryError) as info:
        provider.send(make_email())
    assert (info.value.provider, info.value.notification_id) == ("file", "n-1")


def test_file_recreates_a_removed_directory(tmp_path: Path) -> None:
    directory = tmp_path / "mail"
    provider = FileProvider(directory=directory)
    directory.rmdir()
    provider.send(make_sms())
    assert len(list(directory.iterdir())) == 1


def test_file_disk_full_is_transient_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = FileProvider(directory=tmp_path)

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(TransientDeliveryError, match="No space left"):
        provider.send(make_email())
    assert list(tmp_path.iterdir()) == []


# --- memory ------------------------------------------------------------------------


def test_memory_provider_delivers_into_a_named_outbox() -> None:
    provider = MemoryProvider.from_config(MemoryConfig(outbox="signup"))
    first = provider.send(make_email(1))
    second = provider.send(make_sms(2))
    outbox = get_outbox("signup")
    assert outbox is get_outbox("signup")
    assert outbox.messages == [make_email(1), make_sms(2)]
    assert outbox.emails == [make_email(1)]
    assert outbox.sms == [make_sms(2)]
    assert len(outbox) == 2
    assert get_outbox("default").messages == []
    assert (first.provider, first.provider_message_id) == ("memory", "mem-1")
    assert second.provider_message_id == "mem-2"


def test_outbox_messages_is_a_copy() -> None:
    outbox = Outbox("copy")
    outbox.append(make_sms())
    outbox.messages.clear()
    assert len(outbox) == 1


def test_outbox_find() -> None:
    outbox = Outbox("find")
    welcome = make_email(1, kind="welcome", to=(Address("A@Example.com"), Address("b@x.test")))
    order = make_email(2, tenant_id="globex")
    sms = make_sms(3)
    for message in (welcome, order, sms):
        outbox.append(message)
    assert outbox.find(to="a@example.com") == [welcome]
    assert outbox.find(to="jane@example.com") == [order]
    assert outbox.find(to="+15551234567") == [sms]
    assert outbox.find(tenant_id="acme") == [welcome, sms]
    assert outbox.find(kind="welcome") == [welcome]
    assert outbox.find(channel=Channel.SMS) == [sms]
    assert outbox.find(channel="email", tenant_id="acme") == [welcome]
    assert outbox.find(kind="nothing") == []


def test_outbox_wait_for_blocks_until_messages_arrive() -> None:
    outbox = Outbox("wait")

    def deliver_later() -> None:
        time.sleep(0.05)
        for n in range(3):
            outbox.append(make_sms(n))

    thread = threading.Thread(target=deliver_later)
    thread.start()
    messages = outbox.wait_for(3, timeout=5)
    thread.join()
    assert [m.notification_id for m in messages] == ["s-0", "s-1", "s-2"]


def test_outbox_wait_for_times_out() -> None:
    outbox = Outbox("timeout")
    outbox.append(make_sms())
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError, match="holds 1 message"):
        outbox.wait_for(2, timeout=0.1)
    assert time.monotonic() - started >= 0.1


def test_clear_outboxes_empties_every_outbox_but_keeps_them() -> None:
    provider = MemoryProvider(outbox="clearing")
    provider.send(make_sms())
    outbox = get_outbox("clearing")
    clear_outboxes()
    assert outbox.messages == []
    provider.send(make_sms())
    assert len(outbox) == 1  # the reference held before clearing still sees new mail
    outbox.clear()
    assert len(outbox) == 0
