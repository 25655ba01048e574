"""SMTP faults around DATA, and credentials beyond ASCII, against aiosmtpd on loopback.

A connection that ends before the final dot of DATA cannot have delivered the
message: that is a transient error, retried (and, on a reused connection, sent
again at once on a fresh one). Only a failure after the final dot went out, while
waiting for the server's reply, is ambiguous.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tenant_notify import DeliveryState, Notifier
from tenant_notify.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tenant_notify.providers.smtp import SmtpProvider
from tests.providers.test_smtp import make_email
from tests.smtp_server import LoopbackSMTPServer

ServerFactory = Callable[..., LoopbackSMTPServer]


@pytest.fixture
def fresh(smtp_server: LoopbackSMTPServer) -> Iterator[SmtpProvider]:
    with SmtpProvider(host=smtp_server.host, port=smtp_server.port, timeout=5) as provider:
        yield provider


def big_email(n: int = 1) -> object:
    # Far more than the kernel's socket buffers hold: the client is still writing
    # when the server goes.
    return make_email(n, text="x" * 76 + "\n" * 1 + ("y" * 76 + "\n") * 60_000)


def test_a_drop_right_after_354_is_transient_and_nothing_arrives(
    smtp_server: LoopbackSMTPServer, fresh: SmtpProvider
) -> None:
    smtp_server.drop_during_data(after_bytes=0)
    with pytest.raises(TransientDeliveryError) as info:
        fresh.send(make_email(1))
    assert not isinstance(info.value, AmbiguousDeliveryError)
    assert info.value.notification_id == "n-1"
    assert smtp_server.messages == []
    # The retry goes out on a new connection and arrives once.
    fresh.send(make_email(1))
    [received] = smtp_server.wait_for(1)
    assert received.message["Subject"] == "Order 1"


def test_a_drop_in_the_middle_of_a_large_message_is_transient(
    smtp_server: LoopbackSMTPServer, fresh: SmtpProvider
) -> None:
    smtp_server.drop_during_data(after_bytes=64 * 1024)
    with pytest.raises(TransientDeliveryError) as info:
        fresh.send(big_email(1))  # type: ignore[arg-type]
    assert not isinstance(info.value, AmbiguousDeliveryError)
    assert smtp_server.messages == []


def test_on_a_reused_connection_a_drop_before_the_dot_is_resent_at_once(
    smtp_server: LoopbackSMTPServer, fresh: SmtpProvider
) -> None:
    fresh.send(make_email(1))
    smtp_server.drop_during_data(after_bytes=0)
    fresh.send(make_email(2))  # reconnects once: nothing had been delivered
    received = smtp_server.wait_for(2)
    assert [m.message["Subject"] for m in received] == ["Order 1", "Order 2"]


def test_an_early_refusal_during_data_is_that_refusal(
    smtp_server: LoopbackSMTPServer, fresh: SmtpProvider
) -> None:
    smtp_server.reply_during_data("552 5.3.4 message too big")
    with pytest.raises(PermanentDeliveryError, match="refused the message") as info:
        fresh.send(make_email(1))
    assert info.value.provider_response == "552 5.3.4 message too big"
    smtp_server.reply_during_data("452 4.3.1 insufficient storage")
    with pytest.raises(TransientDeliveryError):
        fresh.send(make_email(2))
    assert smtp_server.messages == []


def test_a_drop_after_the_final_dot_is_ambiguous(
    smtp_server: LoopbackSMTPServer, fresh: SmtpProvider
) -> None:
    smtp_server.drop_after_data()
    with pytest.raises(AmbiguousDeliveryError, match="may have been delivered"):
        fresh.send(make_email(1))
    # It was taken: that is why it must not be retried blindly.
    assert len(smtp_server.wait_for(1)) == 1


@pytest.mark.integration
def test_eighty_emails_through_drops_before_the_dot_all_arrive_once(
    smtp_server: LoopbackSMTPServer, tenants: dict[str, object]
) -> None:
    # The review's fault: every connection dropped once during DATA lost 80 of 80.
    smtp_server.drop_during_data(after_bytes=0, times=80)
    settings = {
        "transport": {"backend": "inprocess", "workers": 2},
        "email": {"provider": "smtp", "host": smtp_server.host, "port": smtp_server.port},
        "tenants": tenants,
        "retry": {"initial_delay": 0.01, "jitter": 0, "max_attempts": 20, "multiplier": 1},
    }
    with Notifier.from_settings(settings) as notify:
        receipts = [
            notify.send_email(
                to_email=f"c{i}@example.com", subject=f"S{i}", body="b", tenant_id="acme"
            )
            for i in range(80)
        ]
        statuses = [notify.wait(r.id, timeout=120) for r in receipts]
    assert [s.state for s in statuses] == [DeliveryState.SENT] * 80
    received = smtp_server.wait_for(80, timeout=30)
    assert sorted(str(m.message["Subject"]) for m in received) == sorted(f"S{i}" for i in range(80))


# --- credentials beyond ASCII ------------------------------------------------------

USER = "m\u00e4iler@\u00e9xample.test"
PASSWORD = "p\u00e4ss-w\u00f6rd-\u2603-\u00df"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_non_ascii_credentials_authenticate_in_utf8(
    smtp_server_factory: ServerFactory, mechanism: str
) -> None:
    server = smtp_server_factory(auth=(USER, PASSWORD), auth_mechanisms=[mechanism])
    with SmtpProvider(
        host=server.host, port=server.port, username=USER, password=PASSWORD, timeout=5
    ) as provider:
        provider.send(make_email(1))
    assert len(server.wait_for(1)) == 1
    assert server.auth_failures == 0


def test_a_wrong_non_ascii_password_is_an_authentication_failure_without_the_password(
    smtp_server_factory: ServerFactory,
) -> None:
    server = smtp_server_factory(auth=(USER, PASSWORD), auth_mechanisms=["PLAIN"])
    server.auth_failure_reply = "535 5.7.8 bad credentials for {login} / {password}"
    wrong = PASSWORD + "-\u00e9"
    with (
        SmtpProvider(
            host=server.host, port=server.port, username=USER, password=wrong, timeout=5
        ) as provider,
        pytest.raises(PermanentDeliveryError, match="authentication failed") as info,
    ):
        provider.send(make_email(1))
    assert info.value.sender_fault
    seen = [str(info.value), repr(info.value), str(info.value.provider_response)]
    cause = info.value.__cause__
    while cause is not None:
        seen.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    assert not any(wrong in text for text in seen), seen


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("password", "pass\x00word"),
        ("password", "pass\nword"),
        ("password", "pass\ud800word"),
        ("username", "user\x00name"),
        ("username", "user\x85name"),
    ],
)
def test_credentials_no_auth_can_carry_are_refused_at_build_time(field: str, value: str) -> None:
    credentials = {"username": "mailer", "password": "secret", field: value}
    with pytest.raises(ConfigurationError, match=field) as info:
        SmtpProvider(host="127.0.0.1", port=2525, **credentials)
    assert value not in str(info.value)
    assert info.value.__cause__ is None
