"""A canary secret and a canary recipient, through every failure path the tests know,
appear nowhere: log records and events, statuses, errors and their chains, CLI output.

Each scenario fails a delivery (or a call, or a configuration) the way a provider,
a template, a bug or a bad setting would, with both canaries in whatever text the
failure produces: a server echoing the password, a reply quoting the recipient,
an exception holding both. Celery's broker headers and worker logs are
tests/integration/test_canary_celery.py.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenant_notify import DeliveryState, Notifier, load_settings
from tenant_notify.errors import NotifyError, PermanentDeliveryError, TransientDeliveryError
from tenant_notify.models import Address, Channel, DeliveryResult, EmailMessage, SmsMessage
from tenant_notify.providers.base import EVERYTHING, Provider
from tenant_notify.testing import ScriptedProvider, make_notifier
from tenant_notify.webhooks import DeliveryEvent, apply_event
from tests.canary import CANARY_NUMBER, CANARY_PHONE, CANARY_SECRET, CANARY_TO, Exits
from tests.http_fakes import FakeProviderAPI, postmark_error, sendgrid_error, twilio_error
from tests.smtp_server import LoopbackSMTPServer

ROOT = Path(__file__).resolve().parents[1]
TENANT = {"name": "Acme", "email_from": "orders@acme.test", "sms_from": "+15551230000"}
NO_WAIT = {"initial_delay": 0, "jitter": 0, "max_attempts": 2}


@pytest.fixture
def exits() -> Iterator[Exits]:
    collected = Exits()
    with collected.watching_logs():
        yield collected
    collected.assert_clean()


def welcome(notify: Notifier, exits: Exits) -> None:
    receipt = notify.send_welcome_email(user_email=CANARY_TO, user_name="Can", tenant_id="acme")
    status = receipt.wait(30)
    assert status.state in {DeliveryState.FAILED, DeliveryState.RETRYING}, status
    exits.add_status(status)
    exits.add_status(notify.status(receipt.id))


def sms(notify: Notifier, exits: Exits) -> None:
    receipt = notify.send_sms(to_phone=CANARY_PHONE, body="hi", tenant_id="acme")
    status = receipt.wait(30)
    assert status.state is DeliveryState.FAILED, status
    exits.add_status(status)


def smtp_settings(server: LoopbackSMTPServer, tmp_path: Path) -> Path:
    # YAML, as a host writes it: the password is a number.
    config = tmp_path / "notify.yaml"
    config.write_text(
        f"""
transport: eager
retry: {{initial_delay: 0, jitter: 0, max_attempts: 2}}
email:
  provider: smtp
  host: 127.0.0.1
  port: {server.port}
  username: app
  password: {CANARY_NUMBER}
tenants:
  acme: {{name: Acme, email_from: orders@acme.test}}
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer(auth=("app", "the-right-one")) as server:
        yield server


# --- SMTP ---------------------------------------------------------------------------------


def test_smtp_server_echoing_the_password(smtp, tmp_path, exits) -> None:
    smtp.auth_failure_reply = "535 5.7.8 password {password} of {login} is wrong"
    with Notifier.from_settings(smtp_settings(smtp, tmp_path)) as notify:
        welcome(notify, exits)


def test_smtp_server_echoing_the_auth_plain_blob(smtp, tmp_path, exits) -> None:
    blob = base64.b64encode(f"\0app\0{CANARY_NUMBER}".encode()).decode()
    smtp.auth_failure_reply = f"535 5.7.8 {blob} refused"
    with Notifier.from_settings(smtp_settings(smtp, tmp_path)) as notify:
        welcome(notify, exits)
    assert all(blob not in text for _, text in exits.texts)


def test_smtp_refusing_the_recipient_and_quoting_it(exits) -> None:
    with LoopbackSMTPServer() as server:
        server.reject_recipient(CANARY_TO, f"550 5.1.1 <{CANARY_TO}>: no mailbox {CANARY_TO}")
        email = {"provider": "smtp", "host": "127.0.0.1", "port": server.port}
        with make_notifier(tenants={"acme": TENANT}, email=email, retry=NO_WAIT) as notify:
            welcome(notify, exits)


def test_smtp_refusing_the_data_quoting_the_recipient(tmp_path, exits) -> None:
    with LoopbackSMTPServer() as server:
        server.fail_next("DATA", f"554 5.7.1 message for {CANARY_TO} refused", times=5)
        tenants = {"acme": TENANT}
        email = {"provider": "smtp", "host": "127.0.0.1", "port": server.port}
        with make_notifier(tenants=tenants, email=email, retry=NO_WAIT) as notify:
            welcome(notify, exits)


@pytest.mark.parametrize("fault", ["during", "after"])
def test_smtp_dropping_during_or_after_data_with_a_non_ascii_password(fault, exits) -> None:
    password = f"{CANARY_SECRET}-\u00e9\u2603"
    with LoopbackSMTPServer(auth=("app", password)) as server:
        for _ in range(2):  # each attempt
            if fault == "during":
                server.drop_during_data(after_bytes=0)
            else:
                server.drop_after_data()
        email = {
            "provider": "smtp",
            "host": "127.0.0.1",
            "port": server.port,
            "username": "app",
            "password": password,
        }
        with make_notifier(tenants={"acme": TENANT}, email=email, retry=NO_WAIT) as notify:
            receipt = notify.send_welcome_email(
                user_email=CANARY_TO, user_name="Can", tenant_id="acme"
            )
            status = receipt.wait(30)
            exits.add_status(status)
    # Dropped before the dot: retried, and the retry is dropped too; after it: ambiguous.
    expected = "TransientDeliveryError" if fault == "during" else "AmbiguousDeliveryError"
    assert (status.state, status.error_type) == (DeliveryState.FAILED, expected), status
    assert all(password not in text for _, text in exits.texts)


def test_malformed_webhook_bodies_quoting_the_recipient(exits) -> None:
    from tenant_notify.errors import WebhookError
    from tenant_notify.webhooks import parse_postmark_event, parse_ses_event
    from tenant_notify.webhooks.base import load_json

    bodies = [
        (parse_postmark_event, f'{{"RecordType": "Bounce", "Type": ["{CANARY_TO}"]}}'),
        (parse_postmark_event, f'{{"RecordType": "{CANARY_TO}", "Email": {{"x": 1}}}}x'),
        (parse_ses_event, f'{{"eventType": "Bounce", "mail": {{}}, "bounce": "{CANARY_TO}"}}'),
        (lambda body: load_json(body, "sendgrid"), f'[{{"email": "{CANARY_TO}"' + "[" * 40),
    ]
    for parse, body in bodies:
        with pytest.raises(WebhookError) as info:
            parse(body)
        exits.add_error(info.value)


# --- HTTP providers --------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeProviderAPI]:
    with FakeProviderAPI() as fake:
        yield fake


def test_sendgrid_reply_quoting_the_recipient_and_the_key(api, exits) -> None:
    api.script(
        sendgrid_error(400, f"{CANARY_TO} is not allowed with key {CANARY_SECRET}", "to"),
        sendgrid_error(401, f"bad key {CANARY_SECRET}"),
    )
    email = {"provider": "sendgrid", "api_key": CANARY_SECRET, "base_url": api.url}
    with make_notifier(tenants={"acme": TENANT}, email=email, retry=NO_WAIT) as notify:
        welcome(notify, exits)
        welcome(notify, exits)


def test_twilio_reply_quoting_the_number_and_the_token(api, exits) -> None:
    api.script(twilio_error(400, 21211, f"The 'To' number {CANARY_PHONE} ({CANARY_SECRET})"))
    sms_table = {
        "provider": "twilio",
        "account_sid": "AC" + "0" * 32,
        "auth_token": CANARY_SECRET,
        "base_url": api.url,
    }
    with make_notifier(tenants={"acme": TENANT}, sms=sms_table, retry=NO_WAIT) as notify:
        sms(notify, exits)


def test_postmark_reply_quoting_the_recipient(api, exits) -> None:
    api.script(postmark_error(422, 300, f"Invalid 'To' address: '{CANARY_TO}' ({CANARY_SECRET})."))
    email = {"provider": "postmark", "server_token": CANARY_SECRET, "base_url": api.url}
    with make_notifier(tenants={"acme": TENANT}, email=email, retry=NO_WAIT) as notify:
        welcome(notify, exits)


# --- templates, bugs, failover, retries ---------------------------------------------------


def test_a_template_error_quoting_a_context_value(tmp_path, exits) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "subject.txt").write_text("s")
    (tmp_path / "k" / "body.txt").write_text("{{ who|money('USD') }} {{ who|int + nope }}")
    tenants = {"acme": {**TENANT, "templates_dir": str(tmp_path)}}
    with make_notifier(tenants=tenants) as notify:
        receipt = notify.send("k", tenant_id="acme", to=CANARY_TO, context={"who": CANARY_TO})
        status = receipt.wait(5)
        assert status.error_type == "TemplateRenderError"
        exits.add_status(status)


class Buggy(Provider):
    """A provider with a bug whose exception holds both canaries, twice chained."""

    name = "buggy"
    channels = frozenset({Channel.EMAIL, Channel.SMS})
    capabilities = EVERYTHING

    def __init__(self, delivery_error: bool) -> None:
        self.delivery_error = delivery_error

    def _fail(self) -> DeliveryResult:
        try:
            try:
                raise KeyError(CANARY_SECRET)
            except KeyError as inner:
                raise ValueError(f"no route to {CANARY_TO} with {CANARY_SECRET}") from inner
        except ValueError as err:
            if self.delivery_error:
                raise PermanentDeliveryError(f"refused {CANARY_TO}") from err
            raise RuntimeError(f"bug: {CANARY_SECRET} {CANARY_TO}")  # noqa: B904 - context kept

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        return self._fail()

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        return self._fail()


@pytest.mark.parametrize("delivery_error", [True, False], ids=["delivery-error", "crash"])
def test_a_provider_raising_with_both_canaries_in_its_chain(delivery_error, exits) -> None:
    provider = Buggy(delivery_error)
    with make_notifier(tenants={"acme": TENANT}, provider=provider) as notify:
        welcome(notify, exits)
    # Called directly, as a host may: what it raises is clean, chain and all.
    message = EmailMessage(
        from_addr=Address("orders@acme.test"), to=(Address(CANARY_TO),), subject="s", text="t"
    )
    with pytest.raises(Exception) as caught:
        provider.send(message)
    if delivery_error:
        exits.add_error(caught.value, "raised by Provider.send")


def test_failover_and_retries_with_errors_quoting_both(exits) -> None:
    quoting = f"{CANARY_TO} refused ({CANARY_SECRET})"
    first = ScriptedProvider(
        [TransientDeliveryError(quoting, provider_response=f"451 {CANARY_TO} {CANARY_SECRET}")] * 3
    )
    second = ScriptedProvider(
        [TransientDeliveryError(quoting, provider_response=f"421 {CANARY_SECRET}")] * 3
    )
    table = {"provider": first, "fallback": [{"provider": second}]}
    with make_notifier(tenants={"acme": TENANT}, email=table, retry=NO_WAIT) as notify:
        welcome(notify, exits)


def test_a_bounce_event_quoting_the_recipient(exits) -> None:
    with make_notifier(tenants={"acme": TENANT}) as notify:
        receipt = notify.send_welcome_email(user_email=CANARY_TO, user_name="C", tenant_id="acme")
        assert receipt.wait(5).state is DeliveryState.SENT
        event = DeliveryEvent(
            provider="memory",
            event="bounce",
            state=DeliveryState.BOUNCED,
            notification_id=receipt.id,
            reason=f"550 5.1.1 <{CANARY_TO}>: Recipient address rejected",
            recipients=(CANARY_TO,),
        )
        apply_event(notify, event)
        status = notify.status(receipt.id)
        assert status.state is DeliveryState.BOUNCED
        exits.add_status(status)


# --- calls and settings -----------------------------------------------------------------


def test_refused_calls_quoting_the_recipient(exits) -> None:
    with make_notifier(tenants={"acme": TENANT}) as notify:
        for call in (
            lambda: notify.send_sms(to_phone=CANARY_TO, body="x", tenant_id="acme"),
            lambda: notify.send("nope", tenant_id="acme", to=CANARY_TO),
            lambda: notify.send_email(
                to_email=CANARY_TO, subject="a\nb", body="b", tenant_id="acme"
            ),
        ):
            with pytest.raises(NotifyError) as caught:
                call()
            exits.add_error(caught.value, "raised to the caller")


@pytest.mark.parametrize(
    "table",
    [
        {"provider": "smtp", "host": "h", "port": "no", "username": "u", "password": CANARY_NUMBER},
        {"provider": "smtp", "host": "h", "ssl": True, "starttls": True, "password": CANARY_SECRET},
        {"provider": "sendgrid", "api_key": CANARY_SECRET, "nope": 1},
        {"provider": "twilio", "account_sid": "AC1", "auth_token": CANARY_SECRET},
    ],
    ids=["smtp-port", "smtp-tls", "sendgrid-extra-key", "twilio-sid"],
)
def test_bad_settings_holding_a_secret(table: dict[str, Any], exits) -> None:
    channel = "sms" if table["provider"] == "twilio" else "email"
    with pytest.raises(NotifyError) as caught:
        Notifier.from_settings({channel: table, "tenants": {"acme": TENANT}, "transport": "eager"})
    exits.add_error(caught.value, "raised building the notifier")
    try:
        settings = load_settings({channel: table, "tenants": {"acme": TENANT}})
    except NotifyError as err:
        exits.add_error(err, "raised loading the settings")
    else:
        exits.add("settings repr", repr(settings))
        exits.add("settings str", str(settings))


# --- the command line ---------------------------------------------------------------------


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tenant_notify.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    return done.stdout + done.stderr


def test_the_command_line_sending_and_checking(smtp, tmp_path, exits) -> None:
    smtp.auth_failure_reply = "535 5.7.8 password {password} of {login} is wrong"
    config = smtp_settings(smtp, tmp_path)
    output = run_cli(
        "send", "welcome", "--tenant", "acme", "--to", CANARY_TO, "--config", str(config),
        "--context", '{"user_email": "' + CANARY_TO + '", "user_name": "C"}',
    )  # fmt: skip
    assert "failed" in output
    exits.add("tenant-notify send", output)
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace(f"port: {smtp.port}", "port: nope"))
    output = run_cli("check-config", "--config", str(bad))
    assert "problem" in output
    exits.add("tenant-notify check-config", output)
