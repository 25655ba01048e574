"""The HTTP providers and the dispatcher's per-call gate (tenant_notify._call_gate):
the pause checked right before a request is written, a throttling told the moment
the reply is read. Against loopback servers: the SendGrid/Twilio fake that checks
the requests against the published schemas, and a server answering as SES does
when it throttles."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tenant_notify import _call_gate
from tenant_notify.errors import TransientDeliveryError
from tenant_notify.models import Address, EmailMessage, SmsMessage
from tenant_notify.providers.sendgrid import SendGridProvider
from tenant_notify.providers.ses import SesProvider
from tenant_notify.providers.twilio import TwilioProvider
from tests.http_fakes import FakeProviderAPI, sendgrid_error, twilio_error

KEY = "SG.gate-test.Zm9vYmFy"
SID = "AC" + "2" * 32


class Stop(Exception):
    """What the test's gate raises to stop a request (the dispatcher's is private)."""


class RecordingGate:
    """A gate that records what the provider told it, and stops when told to."""

    def __init__(self, *, stop: bool = False, on_throttled: Any = None) -> None:
        self.stop = stop
        self.on_throttled = on_throttled
        self.checks = 0
        self.handed = 0
        self.throttlings: list[float | None] = []

    def before_request(self) -> None:
        self.checks += 1
        if self.stop:
            raise Stop

    def handing(self) -> None:
        self.handed += 1

    def throttled(self, retry_after: float | None) -> None:
        self.throttlings.append(retry_after)
        if self.on_throttled is not None:
            self.on_throttled()


def email() -> EmailMessage:
    return EmailMessage(
        from_addr=Address("orders@acme.test"),
        to=(Address("user@example.com"),),
        subject="Order 1",
        text="Thank you.",
        notification_id="n-1",
        tenant_id="acme",
    )


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.sendgrid_keys.add(KEY)
    fake_api.twilio_credentials[(SID, "token-gate")] = SID
    return fake_api


@pytest.fixture
def sendgrid(api: FakeProviderAPI) -> Iterator[SendGridProvider]:
    provider = SendGridProvider(api_key=KEY, base_url=api.url)
    yield provider
    provider.close()


def test_a_request_the_gate_stops_never_reaches_the_api(
    api: FakeProviderAPI, sendgrid: SendGridProvider
) -> None:
    assert sendgrid.send(email()).provider_message_id  # a warm keep-alive connection
    gate = RecordingGate(stop=True)
    with _call_gate.gated(gate), pytest.raises(Stop):
        sendgrid.send(email())
    assert gate.checks == 1
    assert gate.handed == 0  # stopped: nothing handed over
    assert len(api.requests) == 1
    # The provider is fine afterwards (the stopped call's connection was closed).
    assert sendgrid.send(email()).provider_message_id
    assert len(api.requests) == 2
    assert api.schema_errors == []


def test_a_pause_recorded_while_the_hand_over_is_written_stops_the_request(
    api: FakeProviderAPI, sendgrid: SendGridProvider
) -> None:
    class PausedWhileHanding(RecordingGate):
        def handing(self) -> None:
            super().handing()
            # Recording the hand-over writes to Redis: meanwhile another thread of
            # the process reads a 429 and pauses the account.
            self.stop = True

    gate = PausedWhileHanding()
    with _call_gate.gated(gate), pytest.raises(Stop):
        sendgrid.send(email())
    assert (gate.checks, gate.handed) == (2, 1)
    assert api.requests == []  # the last look, after the hand-over, stopped it


def test_outside_a_dispatcher_call_nothing_is_checked(
    api: FakeProviderAPI, sendgrid: SendGridProvider
) -> None:
    assert _call_gate.current() is None
    assert sendgrid.send(email()).provider_message_id
    assert len(api.requests) == 1


def test_a_sendgrid_429_is_told_once_with_its_reset_before_the_connection_is_free(
    api: FakeProviderAPI,
) -> None:
    import time

    reset = time.time() + 30
    api.script(sendgrid_error(429, "too many", headers={"X-RateLimit-Reset": f"{reset:.3f}"}))
    # One connection: another thread's request could go only once this reply is
    # read; the gate must have heard of the 429 by then.
    provider = SendGridProvider(api_key=KEY, base_url=api.url, max_connections=1)
    pool_busy: list[bool] = []

    def when_told() -> None:
        client = provider._http()
        pool = client._transport._pool  # type: ignore[attr-defined]
        pool_busy.append(any(not c.is_idle() for c in pool.connections))

    gate = RecordingGate(on_throttled=when_told)
    try:
        with _call_gate.gated(gate), pytest.raises(TransientDeliveryError) as caught:
            provider.send(email())
    finally:
        provider.close()
    assert caught.value.throttled
    assert gate.checks == 2  # before the hand-over is recorded, and once more after it
    assert gate.handed == 1  # the request went: handed over, once
    [told] = gate.throttlings  # once: at the headers, not again after classifying
    assert told is not None and 29 <= told <= 30
    assert pool_busy == [True]  # told while the reply still held the connection


def test_twilio_20429_is_told_to_the_gate(api: FakeProviderAPI) -> None:
    api.script(twilio_error(429, 20429, "Too Many Requests", headers={"Retry-After": "3"}))
    provider = TwilioProvider(account_sid=SID, auth_token="token-gate", base_url=api.url)
    gate = RecordingGate()
    sms = SmsMessage(from_number="+14155550123", to="+14155550100", body="hi")
    try:
        with _call_gate.gated(gate), pytest.raises(TransientDeliveryError) as caught:
            provider.send(sms)
    finally:
        provider.close()
    assert caught.value.throttled
    assert gate.throttlings == [3.0]
    assert api.schema_errors == []


class _ThrottlingSes:
    """Loopback stand-in for SES's v2 API answering as it does when the account's
    sending rate is exceeded: 400 with ``x-amzn-ErrorType: Throttling`` (the code in
    the body's headers only, not in the status)."""

    def __init__(self) -> None:
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests += 1
                payload = json.dumps({"message": "Maximum sending rate exceeded."}).encode()
                self.send_response(400)
                self.send_header("x-amzn-ErrorType", "Throttling:http://internal.amazon.com/")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_ses_throttling_in_a_400_is_told_to_the_gate_too() -> None:
    ses = _ThrottlingSes()
    provider = SesProvider(
        region="eu-west-1",
        access_key_id="AKIDGATETEST00000",
        secret_access_key="gate-secret",
        endpoint_url=ses.url,
    )
    gate = RecordingGate()
    try:
        with _call_gate.gated(gate), pytest.raises(TransientDeliveryError) as caught:
            provider.send(email())
    finally:
        provider.close()
        ses.close()
    assert caught.value.throttled
    assert ses.requests == 1
    assert gate.checks == 2
    assert gate.throttlings == [None]  # no time named: the dispatcher's default pause
