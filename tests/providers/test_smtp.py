"""SmtpProvider against a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator

import pytest

from tenant_notify.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnsupportedChannelError,
)
from tenant_notify.models import Address, EmailMessage, SmsMessage
from tenant_notify.providers.smtp import SmtpConfig, SmtpProvider
from tests.smtp_server import LoopbackSMTPServer

ServerFactory = Callable[..., LoopbackSMTPServer]
PASSWORD = "s3cr3t-Pa55word!"


def make_email(n: int = 1, **changes: object) -> EmailMessage:
    fields: dict[str, object] = {
        "from_addr": Address("orders@acme.test", "Acme Shop"),
        "to": (Address("jane@example.com", "Jane Doe"),),
        "subject": f"Order {n}",
        "text": f"Thanks for order {n}.\n",
        "notification_id": f"n-{n}",
        "tenant_id": "acme",
        "kind": "order_confirmation",
    }
    fields.update(changes)
    return EmailMessage(**fields)  # type: ignore[arg-type]


@pytest.fixture
def provider(smtp_server: LoopbackSMTPServer) -> Iterator[SmtpProvider]:
    with SmtpProvider(host=smtp_server.host, port=smtp_server.port, timeout=5) as p:
        yield p


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- delivery ----------------------------------------------------------------------


def test_plain_send_arrives_with_envelope_and_headers(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    message = make_email(
        to=(Address("jane@example.com", "Jane Doe"), Address("joe@example.com")),
        reply_to=Address("help@acme.test"),
        headers={"X-Campaign": "spring"},
    )
    result = provider.send(message)

    [received] = smtp_server.wait_for(1)
    assert received.mail_from == "orders@acme.test"
    assert received.rcpt_tos == ("jane@example.com", "joe@example.com")
    parsed = received.message
    assert parsed["Subject"] == "Order 1"
    assert parsed["From"].addresses[0].display_name == "Acme Shop"
    assert [a.addr_spec for a in parsed["To"].addresses] == ["jane@example.com", "joe@example.com"]
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@acme.test"
    assert parsed["X-Campaign"] == "spring"
    assert parsed["X-Tenant-Notify-Id"] == "n-1"
    assert parsed.get_content_type() == "text/plain"

    assert result.provider == "smtp"
    assert f"<{result.provider_message_id}>" == parsed["Message-ID"]
    assert result.detail["smtp_reply"].startswith("250 ")
    assert "refused" not in result.detail


def test_text_and_html_parts_arrive_in_order(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    provider.send(make_email(html="<p>Thanks!</p>"))
    [received] = smtp_server.wait_for(1)
    parts = list(received.message.iter_parts())
    assert received.message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert "<p>Thanks!</p>" in parts[1].get_content()


def test_non_ascii_arrives_7bit_and_decodes(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    provider.send(
        make_email(
            from_addr=Address("hallo@globex.test", "Globex Café"),
            subject="Grüße aus Zürich ☕",
            text="Schöne Grüße,\n.eine Zeile mit Punkt\nJörg ☕\n",
        )
    )
    [received] = smtp_server.wait_for(1)
    assert all(byte < 128 for byte in received.raw)
    assert received.message["Subject"] == "Grüße aus Zürich ☕"
    assert received.message["From"].addresses[0].display_name == "Globex Café"
    body = received.message.get_content().replace("\r\n", "\n")
    assert body == "Schöne Grüße,\n.eine Zeile mit Punkt\nJörg ☕\n"


def test_sms_is_not_an_smtp_channel(provider: SmtpProvider) -> None:
    with pytest.raises(UnsupportedChannelError):
        provider.send(SmsMessage(from_number="+15005550006", to="+15551234567", body="hi"))


# --- connections -------------------------------------------------------------------


def test_one_connection_is_reused_for_many_messages(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    for n in range(5):
        provider.send(make_email(n))
    received = smtp_server.wait_for(5)
    assert smtp_server.connections == 1
    assert {m.connection for m in received} == {1}
    assert [m.message["Subject"] for m in received] == [f"Order {n}" for n in range(5)]


@pytest.mark.parametrize("notice", [None, "421 4.4.2 idle timeout, closing"])
def test_reconnects_once_after_the_server_dropped_the_connection(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider, notice: str | None
) -> None:
    provider.send(make_email(1))
    smtp_server.wait_for(1)
    assert smtp_server.drop_connections(notice) >= 1

    provider.send(make_email(2))

    received = smtp_server.wait_for(2)
    assert [m.message["Subject"] for m in received] == ["Order 1", "Order 2"]  # exactly once
    assert smtp_server.connections == 2
    assert received[1].connection == 2


def test_a_fresh_connection_that_fails_is_not_retried(smtp_server: LoopbackSMTPServer) -> None:
    # 421 on the first connection is the server's answer, not a stale connection.
    smtp_server.fail_next("MAIL", "421 4.3.2 service shutting down")
    with (
        SmtpProvider(host=smtp_server.host, port=smtp_server.port) as provider,
        pytest.raises(TransientDeliveryError) as info,
    ):
        provider.send(make_email())
    assert info.value.provider_response == "421 4.3.2 service shutting down"
    assert smtp_server.connections == 1
    assert smtp_server.messages == []


def test_close_quits_and_the_provider_can_send_again(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    provider.send(make_email(1))
    smtp_server.wait_for(1)
    provider.close()
    smtp_server.wait_until(lambda: smtp_server.quits == 1)
    smtp_server.wait_until(lambda: smtp_server.open_connections == 0)
    provider.close()  # twice is fine
    assert smtp_server.quits == 1

    provider.send(make_email(2))
    smtp_server.wait_for(2)
    assert smtp_server.connections == 2


def test_threads_share_a_provider_and_its_pooled_connections(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    threads, per_thread = 4, 5
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait(timeout=5)
            for i in range(per_thread):
                provider.send(make_email(subject=f"thread {t} message {i}"))
        except BaseException as err:  # reported below
            errors.append(err)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert errors == []

    received = smtp_server.wait_for(threads * per_thread)
    assert len(received) == threads * per_thread
    # The threads share the pool's connections: never more than one per thread,
    # and each was reused for several messages.
    opened = smtp_server.connections
    assert 1 <= opened <= threads
    assert len({message.connection for message in received}) == opened
    assert smtp_server.peak_open_connections <= threads

    provider.close()  # the threads have ended; their idle connections get a QUIT
    smtp_server.wait_until(lambda: smtp_server.quits == opened)
    smtp_server.wait_until(lambda: smtp_server.open_connections == 0)


def test_after_a_fork_the_child_opens_its_own_connection(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    provider.send(make_email(1))
    smtp_server.wait_for(1)
    with warnings.catch_warnings():
        # Python 3.12 warns about forking a process with threads (the server's).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: only the provider, then out without cleanup
        code = 1
        try:
            provider.send(make_email(2))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    smtp_server.wait_for(2)
    assert smtp_server.connections == 2
    # The inherited connection was closed without QUIT (it is the parent's session),
    # which goes on: the parent's next message takes it again.
    assert smtp_server.quits == 0
    provider.send(make_email(3))
    received = smtp_server.wait_for(3)
    assert smtp_server.connections == 2
    assert received[0].connection == received[2].connection


# --- refusals ----------------------------------------------------------------------


def test_451_on_data_is_transient_and_the_connection_stays_usable(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    smtp_server.fail_next("DATA", "451 4.3.0 try later")
    with pytest.raises(TransientDeliveryError) as info:
        provider.send(make_email(1))
    err = info.value
    assert err.provider_response == "451 4.3.0 try later"
    assert (err.provider, err.notification_id, err.tenant_id) == ("smtp", "n-1", "acme")
    assert "451" in str(err)

    provider.send(make_email(2))
    [received] = smtp_server.wait_for(1)
    assert received.message["Subject"] == "Order 2"
    assert smtp_server.connections == 1


def test_550_recipient_is_permanent(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    smtp_server.fail_next("RCPT", "550 5.1.1 no such user")
    with pytest.raises(PermanentDeliveryError) as info:
        provider.send(make_email())
    assert info.value.provider_response == "550 5.1.1 no such user"
    assert smtp_server.messages == []


def test_451_recipient_is_transient(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    smtp_server.fail_next("RCPT", "451 4.3.0 greylisted")
    with pytest.raises(TransientDeliveryError) as info:
        provider.send(make_email())
    assert "451" in (info.value.provider_response or "")


def test_550_on_data_and_553_on_mail_are_permanent(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    smtp_server.fail_next("DATA", "554 5.6.0 message refused")
    with pytest.raises(PermanentDeliveryError, match="refused the message"):
        provider.send(make_email())
    smtp_server.fail_next("MAIL", "553 5.7.1 sender not allowed")
    with pytest.raises(PermanentDeliveryError, match="refused the sender") as info:
        provider.send(make_email())
    assert info.value.provider_response == "553 5.7.1 sender not allowed"


def test_one_refused_recipient_of_two_is_reported_in_the_result(
    smtp_server: LoopbackSMTPServer, provider: SmtpProvider
) -> None:
    smtp_server.reject_recipient("gone@example.com", "550 5.1.1 no such user")
    result = provider.send(
        make_email(to=(Address("jane@example.com"), Address("gone@example.com")))
    )
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ("jane@example.com",)
    assert result.detail["refused"] == {"gone@example.com": "550 5.1.1 no such user"}


# --- failures around the connection ------------------------------------------------


def test_pipelining_sends_the_envelope_and_data_in_one_write(
    smtp_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smtplib

    server = smtp_server_factory(pipelining=True)
    writes: list[str | bytes] = []
    send = smtplib.SMTP.send

    def recording_send(self: smtplib.SMTP, data: str | bytes) -> None:
        writes.append(data)
        send(self, data)

    monkeypatch.setattr(smtplib.SMTP, "send", recording_send)
    with SmtpProvider(host=server.host, port=server.port, timeout=5) as provider:
        provider.send(make_email(1))  # connects and says EHLO
        writes.clear()
        provider.send(make_email(2, to=(Address("jane@example.com"), Address("joe@example.com"))))
    commands, message, end = writes[:3]
    # Bytes, written as they are.
    assert isinstance(commands, bytes)
    assert commands.startswith(b"MAIL FROM:<orders@acme.test> SIZE=")
    assert commands.endswith(
        b"\r\nRCPT TO:<jane@example.com>\r\nRCPT TO:<joe@example.com>\r\nDATA\r\n"
    )
    # The final dot in a write of its own, once the server is known to be there.
    assert isinstance(message, bytes) and message.endswith(b"\r\n")
    assert end == b".\r\n"
    received = server.wait_for(2)
    assert received[1].rcpt_tos == ("jane@example.com", "joe@example.com")


def test_without_pipelining_each_command_waits_for_its_reply(
    smtp_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smtplib

    server = smtp_server_factory()
    writes: list[str | bytes] = []
    send = smtplib.SMTP.send

    def recording_send(self: smtplib.SMTP, data: str | bytes) -> None:
        writes.append(data)
        send(self, data)

    monkeypatch.setattr(smtplib.SMTP, "send", recording_send)
    with SmtpProvider(host=server.host, port=server.port, timeout=5) as provider:
        provider.send(make_email(1))  # connects and says EHLO
        writes.clear()
        provider.send(make_email(2, to=(Address("jane@example.com"), Address("joe@example.com"))))
    mail, *rest = writes[:6]
    assert isinstance(mail, bytes) and mail.startswith(b"MAIL FROM:<orders@acme.test> SIZE=")
    assert rest[:3] == [
        b"RCPT TO:<jane@example.com>\r\n",
        b"RCPT TO:<joe@example.com>\r\n",
        b"DATA\r\n",
    ]
    assert isinstance(rest[3], bytes) and rest[3].endswith(b"\r\n")
    assert rest[4] == b".\r\n"
    assert server.wait_for(2)[1].rcpt_tos == ("jane@example.com", "joe@example.com")


@pytest.mark.parametrize(
    "raw",
    [
        b"a\r\nb\r\n",
        b".starts\r\n.\r\n..\r\nend",
        b"no newline at the end",
        b"\r\n.\r\n",
        b"bare\n.lf\n",
        b"",
    ],
)
def test_dot_stuffing_matches_smtplib(raw: bytes) -> None:
    import smtplib

    from tenant_notify.providers.smtp import _END_OF_DATA, _smtp_data

    expected = smtplib._quote_periods(raw)  # type: ignore[attr-defined]
    if expected[-2:] != b"\r\n":
        expected += b"\r\n"
    assert _smtp_data(raw) + _END_OF_DATA == expected + b".\r\n"


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_leading_dot_survives_a_send(
    smtp_server_factory: ServerFactory, pipelining: bool
) -> None:
    server = smtp_server_factory(pipelining=pipelining)
    with SmtpProvider(host=server.host, port=server.port, timeout=5) as provider:
        provider.send(make_email(1, text=".hidden?\n..two dots\n.\nend\n"))
    [received] = server.wait_for(1)
    assert received.message.get_payload(decode=True).decode().splitlines() == [
        ".hidden?",
        "..two dots",
        ".",
        "end",
    ]


def test_connection_refused_is_transient() -> None:
    port = closed_port()
    with (
        SmtpProvider(host="127.0.0.1", port=port, timeout=2) as provider,
        pytest.raises(TransientDeliveryError, match="cannot connect") as info,
    ):
        provider.send(make_email())
    assert info.value.notification_id == "n-1"
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_unknown_host_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with (
        SmtpProvider(host="smtp.nowhere.invalid", port=25) as provider,
        pytest.raises(TransientDeliveryError, match="cannot resolve"),
    ):
        provider.send(make_email())


def test_a_server_that_never_greets_times_out_transiently() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # connections complete in the kernel; nobody answers
        port = listener.getsockname()[1]
        with (
            SmtpProvider(host="127.0.0.1", port=port, timeout=0.3) as provider,
            pytest.raises(TransientDeliveryError),
        ):
            provider.send(make_email())


def test_timeout_waiting_for_the_final_reply_is_ambiguous(
    smtp_server: LoopbackSMTPServer,
) -> None:
    smtp_server.delay_data_reply(3.0)
    with SmtpProvider(host=smtp_server.host, port=smtp_server.port, timeout=0.5) as provider:
        with pytest.raises(AmbiguousDeliveryError) as info:
            provider.send(make_email(1))
        assert info.value.notification_id == "n-1"
        # The server did take it: that is the ambiguity.
        [received] = smtp_server.wait_for(1)
        assert received.message["Subject"] == "Order 1"

        # The broken connection is dropped; the next message goes on a new one.
        provider.send(make_email(2))
        smtp_server.wait_for(2)
        assert smtp_server.connections == 2


# --- authentication and TLS --------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_success(smtp_server_factory: ServerFactory, mechanism: str) -> None:
    server = smtp_server_factory(auth=("mailer", PASSWORD), auth_mechanisms=[mechanism])
    with SmtpProvider(
        host=server.host, port=server.port, username="mailer", password=PASSWORD
    ) as provider:
        provider.send(make_email())
    [received] = server.wait_for(1)
    assert received.auth_login == "mailer"


def test_auth_is_really_required_by_the_test_server(smtp_server_factory: ServerFactory) -> None:
    server = smtp_server_factory(auth=("mailer", PASSWORD))
    with (
        SmtpProvider(host=server.host, port=server.port) as provider,
        pytest.raises(PermanentDeliveryError) as info,
    ):
        provider.send(make_email())
    assert (info.value.provider_response or "").startswith("530")


def test_auth_failure_is_permanent_and_never_shows_the_password(
    smtp_server_factory: ServerFactory,
) -> None:
    server = smtp_server_factory(auth=("mailer", "the-right-one"))
    with SmtpProvider(
        host=server.host, port=server.port, username="mailer", password=PASSWORD
    ) as provider:
        with pytest.raises(PermanentDeliveryError, match="authentication failed") as info:
            provider.send(make_email())
        assert PASSWORD not in repr(provider)
        assert PASSWORD not in str(provider.config)
    err = info.value
    assert err.provider_response is not None
    assert err.provider_response.startswith("535")
    for text in (str(err), repr(err), err.provider_response, str(err.__cause__)):
        assert PASSWORD not in text
    assert server.auth_failures >= 1  # smtplib tries each offered mechanism
    assert server.messages == []


def test_starttls_with_an_unverified_self_signed_certificate(
    smtp_server_factory: ServerFactory,
) -> None:
    server = smtp_server_factory(starttls=True, auth=("mailer", PASSWORD))
    with SmtpProvider(
        host=server.host,
        port=server.port,
        starttls=True,
        verify_tls=False,
        username="mailer",
        password=PASSWORD,
    ) as provider:
        provider.send(make_email(1))
        provider.send(make_email(2))
    received = server.wait_for(2)
    assert all(m.tls for m in received)
    assert server.connections == 1


def test_starttls_verifying_against_a_ca_file(smtp_server_factory: ServerFactory) -> None:
    server = smtp_server_factory(starttls=True)
    assert server.cert_file is not None
    with SmtpProvider(
        host=server.host, port=server.port, starttls=True, ca_file=str(server.cert_file)
    ) as provider:
        provider.send(make_email())
    [received] = server.wait_for(1)
    assert received.tls


def test_starttls_with_an_untrusted_certificate_is_permanent(
    smtp_server_factory: ServerFactory,
) -> None:
    server = smtp_server_factory(starttls=True)
    with (
        SmtpProvider(host=server.host, port=server.port, starttls=True) as provider,
        pytest.raises(PermanentDeliveryError, match="certificate verification failed"),
    ):
        provider.send(make_email())
    assert server.messages == []


def test_starttls_asked_of_a_server_without_it_is_permanent(
    smtp_server: LoopbackSMTPServer,
) -> None:
    with (
        SmtpProvider(host=smtp_server.host, port=smtp_server.port, starttls=True) as provider,
        pytest.raises(PermanentDeliveryError, match="does not support"),
    ):
        provider.send(make_email())


def test_implicit_tls(smtp_server_factory: ServerFactory) -> None:
    server = smtp_server_factory(implicit_tls=True)
    with SmtpProvider(host=server.host, port=server.port, ssl=True, verify_tls=False) as provider:
        provider.send(make_email())
    [received] = server.wait_for(1)
    assert received.tls


# --- settings ----------------------------------------------------------------------


def test_config_defaults_and_from_config(smtp_server: LoopbackSMTPServer) -> None:
    defaults = SmtpConfig()
    assert (defaults.host, defaults.port, defaults.timeout) == ("localhost", 25, 10.0)
    assert not defaults.starttls
    assert not defaults.ssl
    assert defaults.verify_tls
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, local_hostname="client.test")
    assert SmtpProvider.Config is SmtpConfig
    with SmtpProvider.from_config(config) as provider:
        provider.send(make_email())
    smtp_server.wait_for(1)


@pytest.mark.parametrize(
    "settings",
    [
        {"starttls": True, "ssl": True},
        {"port": 0},
        {"port": 70000},
        {"timeout": 0},
        {"username": "mailer"},
        {"ca_file": "/nonexistent/ca.pem", "starttls": True},
    ],
)
def test_invalid_settings_are_configuration_errors(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError) as info:
        SmtpProvider(**settings)  # type: ignore[arg-type]
    assert PASSWORD not in str(info.value)
    assert info.value.provider == "smtp"


def test_invalid_setting_names_its_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        SmtpProvider(port=0)
    assert info.value.key == "port"


def test_invalid_config_model_is_refused() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        SmtpConfig(starttls=True, ssl=True)
    with pytest.raises(ValueError, match="hostname"):
        SmtpConfig(hostname="typo")  # type: ignore[call-arg]


def test_repr_shows_host_port_and_user_only() -> None:
    provider = SmtpProvider(host="smtp.acme.test", port=587, username="mailer", password=PASSWORD)
    assert repr(provider) == "<SmtpProvider 'smtp' smtp.acme.test:587 user='mailer'>"
    assert PASSWORD not in repr(provider.config)
    provider.close()
