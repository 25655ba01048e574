"""An HTTP provider's connections split among a few clients, each thread keeping to one
(loopback fake of Postmark's POST /email, tests/http_fakes.py).

``max_connections`` still bounds the instance as a whole: however many threads
send, no more connections are opened; as many threads as connections all have a
request in flight at once; close() closes every client's connections.
"""

from __future__ import annotations

import threading

import pytest

from tenant_notify.providers import http
from tenant_notify.providers.postmark import PostmarkProvider
from tests.http_fakes import FakeProviderAPI
from tests.providers.test_postmark import TOKEN, make_email


@pytest.fixture
def api(fake_api: FakeProviderAPI) -> FakeProviderAPI:
    fake_api.postmark_tokens.add(TOKEN)
    return fake_api


def in_threads(provider: PostmarkProvider, threads: int, each: int) -> None:
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for n in range(each):
                provider.send(make_email(notification_id=f"n-{t}-{n}"))
        except BaseException as err:  # reported below, on the test's thread
            errors.append(err)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert errors == []


@pytest.mark.parametrize("connections", [6, 9])  # split evenly, and not
def test_as_many_threads_as_connections_all_send_at_once(
    api: FakeProviderAPI, connections: int
) -> None:
    assert connections > http.CONNECTIONS_PER_CLIENT  # more than one client
    api.hold_until = connections  # no reply until that many requests are open at once
    api.hold_timeout = 5
    with PostmarkProvider(
        server_token=TOKEN, base_url=api.url, max_connections=connections
    ) as provider:
        in_threads(provider, connections, 3)
    assert api.max_in_flight == connections
    assert api.connections == connections  # each kept alive for the thread's next send
    assert len(api.requests) == 3 * connections


def test_more_threads_than_connections_stay_within_the_bound(api: FakeProviderAPI) -> None:
    api.latency = 0.02
    with PostmarkProvider(server_token=TOKEN, base_url=api.url, max_connections=5) as provider:
        in_threads(provider, 16, 4)
    assert api.max_in_flight <= 5
    assert api.connections <= 5
    assert len(api.requests) == 64


def test_close_closes_every_clients_connections(api: FakeProviderAPI) -> None:
    api.hold_until = 8  # eight requests open at once: eight connections
    provider = PostmarkProvider(server_token=TOKEN, base_url=api.url, max_connections=8)
    in_threads(provider, 8, 1)
    assert api.connections == 8
    provider.close()
    in_threads(provider, 8, 1)  # on new connections: none of the old ones was kept
    assert api.connections > 8
    provider.close()


def test_every_client_of_the_process_shares_one_tls_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Loading the CA bundle costs tens of milliseconds of CPU: once per process, not
    # once per provider instance (200 tenants' accounts are 200 instances), and never
    # for an http:// test server.
    made: list[bool] = []
    create = http.httpx.create_ssl_context

    def counted(*args: object, **kwargs: object) -> object:
        made.append(True)
        return create(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(http.httpx, "create_ssl_context", counted)
    monkeypatch.setattr(http, "_SSL_CONTEXTS", {}, raising=False)
    providers = [
        PostmarkProvider(server_token=TOKEN, base_url="https://api.postmarkapp.test")
        for _ in range(20)
    ]
    for provider in providers:
        provider._http()  # the clients are made on first use
        provider.close()
    assert len(made) == 1
    plain = PostmarkProvider(server_token=TOKEN, base_url="http://127.0.0.1:9")
    plain._http()
    plain.close()
    assert len(made) == 1
