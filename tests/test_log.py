"""The library logs through the host's standard-library logging, and masks what it must."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog

from tenant_notify.log import LOGGER_NAME, get_logger, mask_url
from tenant_notify.testing import ScriptedProvider, capture_logs, make_notifier
from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parent.parent

HOST = """
import io, logging, sys
from tenant_notify.testing import ScriptedProvider, make_notifier

{configure}
tenants = {{"acme": {{"name": "Acme", "email_from": "orders@acme.test"}}}}
with make_notifier(tenants=tenants, transport="eager") as notify:
    notify.send_welcome_email(user_email="jane@example.com", user_name="Jane", tenant_id="acme")
with make_notifier(tenants=tenants, provider=ScriptedProvider(["permanent"])) as notify:
    notify.send_welcome_email(user_email="max@example.com", user_name="Max", tenant_id="acme")
{report}
"""


def run_host(configure: str, report: str = "") -> subprocess.CompletedProcess[str]:
    code = HOST.format(configure=textwrap.dedent(configure), report=textwrap.dedent(report))
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_host_with_basic_config_gets_the_records_and_nothing_on_stdout():
    result = run_host(
        """
        stream = io.StringIO()
        logging.basicConfig(level=logging.INFO, stream=stream,
                            format="%(levelname)s %(name)s %(message)s")
        """,
        "sys.stderr.write(stream.getvalue())",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    [sent] = [line for line in lines if " notification_sent " in line]
    assert sent.startswith("INFO tenant_notify notification_sent tenant_id=acme ")
    assert "to=j***@example.com" in sent and "jane@example.com" not in result.stderr
    [failed] = [line for line in lines if " delivery_failed " in line]
    assert failed.startswith("ERROR tenant_notify delivery_failed ")


def test_an_unconfigured_host_sees_nothing_at_all():
    result = run_host("")
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


def test_a_hosts_structlog_configuration_does_not_send_the_library_to_stdout():
    # structlog configured for the host's own lines (printing to stdout): the
    # library's events still go to logging, where the host's handlers take them.
    result = run_host(
        """
        import structlog
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout))
        stream = io.StringIO()
        logging.basicConfig(level=logging.WARNING, stream=stream, format="%(message)s")
        """,
        "sys.stderr.write(stream.getvalue())",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "notification_sent" not in result.stderr  # info, below the host's WARNING
    assert "delivery_failed tenant_id=acme" in result.stderr


def test_records_carry_every_key_as_an_attribute(caplog, tenants):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    with make_notifier(tenants=tenants) as notify:
        receipt = notify.send_welcome_email(
            user_email="jane@example.com", user_name="Jane", tenant_id="acme"
        )
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "notification_sent"]
    assert record.name == LOGGER_NAME and record.levelno == logging.INFO
    assert record.tenant_id == "acme"
    assert record.notification_id == receipt.id
    assert (record.kind, record.channel, record.attempt) == ("welcome", "email", 1)
    assert record.to == "j***@example.com"
    assert record.getMessage().startswith(
        f"notification_sent tenant_id=acme notification_id={receipt.id}"
    )


def test_the_hosts_level_for_the_library_logger_applies(caplog, tenants):
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    provider = ScriptedProvider(["permanent"])
    with make_notifier(tenants=tenants, provider=provider) as notify:
        notify.send_welcome_email(user_email="jane@example.com", user_name="J", tenant_id="acme")
    assert [r.event for r in caplog.records] == ["delivery_failed"]
    assert caplog.records[0].levelname == "ERROR"


def test_an_event_below_the_level_is_dropped_before_it_is_built(caplog, monkeypatch):
    from tenant_notify import log

    seen: list[str] = []

    def record(logger, method_name, event_dict):
        seen.append(event_dict["event"])
        return event_dict

    monkeypatch.setattr(log, "PROCESSORS", [record, *log.PROCESSORS])
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    logger = get_logger().bind(tenant_id="acme")
    logger.info("notification_sent", to="j***@example.com")
    logger.debug("smtp_connected")
    logger.warning("lease_lost", claims=1)
    # The wanted one went the whole way; the others never reached a processor.
    assert seen == ["lease_lost"]
    assert [r.event for r in caplog.records] == ["lease_lost"]
    with capture_logs() as logs:  # capture_logs still sees every level
        logger.info("notification_sent")
    assert [e["event"] for e in logs] == ["notification_sent"]


def test_a_delivery_binds_its_ids_in_the_context_variables_and_restores_them(tenants):
    seen: list[dict[str, object]] = []

    class Recording(ScriptedProvider):
        def _run(self, message):
            seen.append(structlog.contextvars.get_contextvars())
            return super()._run(message)

    with (
        make_notifier(tenants=tenants, provider=Recording(), transport="eager") as notify,
        structlog.contextvars.bound_contextvars(tenant_id="outer", request_id="r-1"),
    ):
        receipt = notify.send_welcome_email(
            user_email="jane@example.com", user_name="J", tenant_id="acme"
        )
        after = structlog.contextvars.get_contextvars()
    assert seen == [{"tenant_id": "acme", "request_id": "r-1", "notification_id": receipt.id}]
    assert after == {"tenant_id": "outer", "request_id": "r-1"}
    assert structlog.contextvars.get_contextvars() == {}


def test_context_variables_and_tracebacks_reach_the_record(caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    with structlog.contextvars.bound_contextvars(request_id="r-1"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            get_logger().exception("delivery_crashed", provider="smtp")
    [record] = caplog.records
    assert record.request_id == "r-1" and record.provider == "smtp"
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text


def test_keys_named_like_record_attributes_stay_in_the_message(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    get_logger().info("preview_request", name="x", module="y", path="/preview")
    [record] = caplog.records
    assert record.name == LOGGER_NAME and record.path == "/preview"
    assert record.getMessage() == "preview_request name=x module=y path=/preview"


def test_capture_logs_sees_every_level_whatever_the_loggers_level(caplog, tenants):
    caplog.set_level(logging.ERROR, logger=LOGGER_NAME)
    with capture_logs() as logs, make_notifier(tenants=tenants, transport="inprocess") as notify:
        notify.send_welcome_email(user_email="jane@example.com", user_name="J", tenant_id="acme")
    [sent] = [entry for entry in logs if entry["event"] == "notification_sent"]
    assert sent["log_level"] == "info" and sent["to"] == "j***@example.com"
    assert caplog.records == []  # captured, but not emitted below the host's level


def test_the_cli_logs_to_stderr_only(tmp_path):
    result = run_cli("-v", "demo", "--transport", "eager", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "notification_sent" not in result.stdout
    assert result.stderr.count(" INFO    notification_sent tenant_id=") == 4


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://app:s3cret@rabbit:5672//", "amqp://app:***@rabbit:5672//"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://redis:6379/0?password=s3cret&ssl_cert_reqs=none",
         "rediss://redis:6379/0?password=***&ssl_cert_reqs=none"),
        ("amqp://guest@rabbit//", "amqp://guest@rabbit//"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("sqla+postgresql://u:p%40ss@db/app", "sqla+postgresql://u:***@db/app"),
    ],
)  # fmt: skip
def test_mask_url_hides_passwords(url, shown):
    assert mask_url(url) == shown
    assert "s3cret" not in mask_url(url)


def test_mask_url_hides_what_kombu_hides():
    kombu_url = pytest.importorskip("kombu.utils.url")
    url = "amqp://app:s3cret@rabbit:5672/vhost"
    assert kombu_url.maybe_sanitize_url(url).replace("**", "***") == mask_url(url)


def test_a_lazily_bound_logger_binds_only_for_a_line_someone_wants(caplog):
    from tenant_notify.log import LazyBound

    library = logging.getLogger(LOGGER_NAME)
    before = library.level
    try:
        library.setLevel(logging.WARNING)
        log = LazyBound(get_logger(), notification_id="n1", attempt=2)
        log.info("notification_sent", provider="smtp")  # info off: nothing bound, nothing logged
        log.debug("smtp_connected")
        assert log._bound is None
        assert not caplog.records
        with capture_logs() as captured:  # a capture wants every level
            log.info("notification_sent", provider="smtp")
        assert captured[-1]["notification_id"] == "n1" and captured[-1]["attempt"] == 2
        log.warning("delivery_retry_scheduled", retry_in=1.0)  # every other method binds
        record = caplog.records[-1]
        assert record.event == "delivery_retry_scheduled"
        assert (record.notification_id, record.attempt, record.retry_in) == ("n1", 2, 1.0)
        library.setLevel(logging.INFO)
        log.info("notification_sent", provider="smtp")
        assert caplog.records[-1].event == "notification_sent"
        assert caplog.records[-1].notification_id == "n1"
    finally:
        library.setLevel(before)
