"""Fixtures for provider tests: real SMTP servers, fake HTTP APIs and moto on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.http_fakes import FakeProviderAPI
from tests.moto_server import MotoServer
from tests.smtp_server import LoopbackSMTPServer, openssl_available


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[LoopbackSMTPServer]:
    """A started plain SMTP server on 127.0.0.1; stopped after the test.

    Every test runs against a server without and with PIPELINING, so the
    provider's pipelined exchange is held to the same behaviour as smtplib's.
    """
    with LoopbackSMTPServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
def smtp_server_factory() -> Iterator[Callable[..., LoopbackSMTPServer]]:
    """Start servers with options (``auth=``, ``starttls=``, ...); all stopped after.

    Skips the test when TLS is asked for and the ``openssl`` command is missing.
    """
    servers: list[LoopbackSMTPServer] = []

    def start(**options: Any) -> LoopbackSMTPServer:
        if (options.get("starttls") or options.get("implicit_tls")) and not openssl_available():
            pytest.skip("the openssl command is needed to make a test certificate")
        server = LoopbackSMTPServer(**options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_api() -> Iterator[FakeProviderAPI]:
    """The SendGrid and Twilio fakes on loopback, checking requests against the specs.

    The schemas are vendored in ``tests/specs/``. After the test, every request must
    have passed schema validation unless the test emptied ``schema_errors`` itself
    by calling ``fake_api.clear()``.
    """
    with FakeProviderAPI() as api:
        yield api
        assert api.schema_errors == []


@pytest.fixture(scope="session")
def moto_session() -> Iterator[MotoServer]:
    """One moto server (``python -m moto.server``) on loopback for the session."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def aws(moto_session: MotoServer) -> Iterator[MotoServer]:
    """The moto server, emptied before the test."""
    moto_session.reset()
    return moto_session
