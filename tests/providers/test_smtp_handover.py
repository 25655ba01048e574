"""Over PIPELINING the next message's envelope follows the final dot (aiosmtpd on loopback).

Once a message's final dot has gone out on a connection that has carried a
message, its sender gives the connection back and reads the final reply while the
next send writes MAIL, RCPT and DATA behind the dot (RFC 2920 3.1). Each message
still gets its own reply and its own error; nothing is sent twice; a connection
whose reply is still coming is neither evicted nor QUIT under it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tenant_notify.errors import (
    AmbiguousDeliveryError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tenant_notify.models import DeliveryResult
from tenant_notify.providers.smtp import SmtpProvider
from tests.providers.test_smtp import make_email
from tests.smtp_server import LoopbackSMTPServer

HOLD = 0.6  # seconds the server sits on a final dot before it answers


@pytest.fixture
def server() -> Iterator[LoopbackSMTPServer]:
    with LoopbackSMTPServer(pipelining=True) as smtp:
        yield smtp


@pytest.fixture
def provider(server: LoopbackSMTPServer) -> Iterator[SmtpProvider]:
    with SmtpProvider(host=server.host, port=server.port, timeout=5, max_connections=1) as smtp:
        smtp.send(make_email(1))  # the connection has carried a message
        yield smtp


class Background:
    """A send on another thread; ``result()`` returns what it returned or raised."""

    def __init__(self, provider: SmtpProvider, n: int) -> None:
        self.outcome: DeliveryResult | DeliveryError | None = None
        self._thread = threading.Thread(target=self._run, args=(provider, n))
        self._thread.start()

    def _run(self, provider: SmtpProvider, n: int) -> None:
        try:
            self.outcome = provider.send(make_email(n))
        except DeliveryError as err:
            self.outcome = err

    def result(self) -> DeliveryResult | DeliveryError | None:
        self._thread.join(10)
        assert not self._thread.is_alive()
        return self.outcome


def held_dot(server: LoopbackSMTPServer, dots: int) -> None:
    """Wait until the server has read ``dots`` final dots."""
    server.wait_until(lambda: server.received_bytes().count(b"\r\n.\r\n") >= dots)


def message_3_behind_message_2(
    server: LoopbackSMTPServer, provider: SmtpProvider
) -> DeliveryResult | DeliveryError | None:
    """Send message 2 (its final reply held, after whatever fault the test set up),
    then message 3 behind its dot; return what message 2's send came to."""
    first = Background(provider, 2)
    held_dot(server, 2)
    provider.send(make_email(3))  # max_connections=1: on the connection message 2 is on
    return first.result()


def marks(server: LoopbackSMTPServer) -> list[str]:
    """The transcript in short: "MAIL" for each MAIL command read, "OK" for each
    final 250 written, in the order the server saw them."""
    out: list[str] = []
    for _, way, data in server.transcript:
        if way == "in":
            out += ["MAIL"] * data.count(b"MAIL FROM")
        elif data.startswith(b"250 2.0.0"):
            out.append("OK")
    return out


def test_the_next_envelope_goes_out_before_the_reply_to_the_dot(
    server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    server.hold_final_reply(HOLD)
    first = Background(provider, 2)
    held_dot(server, 2)
    started = time.monotonic()
    provider.send(make_email(3))  # max_connections=1: on the connection message 2 is on
    took = time.monotonic() - started
    assert isinstance(first.result(), DeliveryResult)
    # Message 3's MAIL reached the server while it still sat on message 2's dot.
    # Message 3's MAIL reached the server while it still sat on message 2's dot.
    assert marks(server) == ["MAIL", "OK", "MAIL", "MAIL", "OK", "OK"]
    assert took < 2 * HOLD  # it did not wait for a free connection and then the hold
    received = server.wait_for(3)
    assert [m.message["Subject"] for m in received] == ["Order 1", "Order 2", "Order 3"]
    assert len({m.connection for m in received}) == 1


@pytest.mark.parametrize(
    ("reply", "error", "connections"),
    [
        ("554 5.6.0 message content rejected", PermanentDeliveryError, 1),
        # The server is closing: the next message finds out and reconnects.
        ("421 4.3.2 shutting down", TransientDeliveryError, 2),
    ],
)
def test_a_refused_dot_fails_its_message_alone_and_sends_no_rset(
    server: LoopbackSMTPServer,
    provider: SmtpProvider,
    reply: str,
    error: type[DeliveryError],
    connections: int,
) -> None:
    server.hold_final_reply(HOLD)
    server.fail_next("DATA", reply)
    refused = message_3_behind_message_2(server, provider)
    assert type(refused) is error
    assert refused.provider_response == reply
    assert refused.notification_id == "n-2"
    # The transaction ended with the dot: an RSET then would have gone into
    # message 3's data.
    assert b"RSET" not in server.received_bytes()
    received = server.wait_for(2)
    assert [m.message["Subject"] for m in received] == ["Order 1", "Order 3"]
    assert received[1].raw.count(b"Subject:") == 1
    assert server.connections == connections


def test_a_drop_after_the_dot_is_ambiguous_and_the_envelope_behind_it_is_resent(
    server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    server.hold_final_reply(HOLD)
    server.drop_after_data()
    # Message 3's data never went out: it is sent again on a new connection.
    dropped = message_3_behind_message_2(server, provider)
    assert isinstance(dropped, AmbiguousDeliveryError)
    assert dropped.notification_id == "n-2"
    received = server.wait_for(3)
    assert sorted(str(m.message["Subject"]) for m in received) == ["Order 1", "Order 2", "Order 3"]
    assert server.connections == 2


def test_a_connection_awaiting_its_reply_is_not_evicted_by_another_identity(
    server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    other = SmtpProvider(
        host=server.host, port=server.port, local_hostname="b.test", max_connections=1, timeout=0.3
    )
    try:
        server.hold_final_reply(HOLD)
        first = Background(provider, 2)
        held_dot(server, 2)
        # The only slot holds a connection whose reply is coming: not idle, not evicted.
        with pytest.raises(TransientDeliveryError, match="no free connection"):
            other.send(make_email(3))
        assert isinstance(first.result(), DeliveryResult)
        other.send(make_email(4))  # settled now: evicted (QUIT) to make room
        assert server.peak_open_connections == 1
        assert [m.message["Subject"] for m in server.wait_for(3)] == [
            "Order 1",
            "Order 2",
            "Order 4",
        ]
    finally:
        other.close()


def test_close_waits_for_the_reply_before_quit(
    server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    server.hold_final_reply(HOLD)
    first = Background(provider, 2)
    held_dot(server, 2)
    provider.close()  # QUIT only after message 2's reply has been read
    assert isinstance(first.result(), DeliveryResult)
    server.wait_until(lambda: server.quits == 1 and server.open_connections == 0)


def test_a_fresh_connection_is_not_handed_on(server: LoopbackSMTPServer) -> None:
    # Until a connection has carried a message, the dot's reply is read before the
    # connection is given back: a reset after the dot then still means "not taken".
    with SmtpProvider(host=server.host, port=server.port, timeout=5, max_connections=1) as smtp:
        server.hold_final_reply(HOLD)
        first = Background(smtp, 1)
        held_dot(server, 1)
        smtp.send(make_email(2))
        assert isinstance(first.result(), DeliveryResult)
    assert marks(server) == ["MAIL", "OK", "MAIL", "OK"]


def test_closed_between_the_dot_and_the_hand_over_the_reply_is_still_read(
    server: LoopbackSMTPServer, provider: SmtpProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smtplib

    send = smtplib.SMTP.send

    def close_after_the_dot(self: smtplib.SMTP, data: str | bytes) -> None:
        send(self, data)
        if data == b".\r\n":
            provider.close()  # as notify.close() on another thread, at the worst moment

    monkeypatch.setattr(smtplib.SMTP, "send", close_after_the_dot)
    result = provider.send(make_email(2))  # its connection is not kept, nor closed under it
    assert isinstance(result, DeliveryResult)
    server.wait_until(lambda: server.open_connections == 0)
    monkeypatch.setattr(smtplib.SMTP, "send", send)
    provider.send(make_email(3))
    assert server.connections == 2
    assert [m.message["Subject"] for m in server.wait_for(3)] == ["Order 1", "Order 2", "Order 3"]
