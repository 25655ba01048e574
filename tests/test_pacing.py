"""Pacing per provider account: max_rate, and pauses learned from throttling replies.

Against the loopback SendGrid/Twilio fake: a 429 with a reset time pauses the
account, so the notifications behind it wait instead of each meeting the limit;
two dispatchers that share Redis (as two worker processes do) share the pause.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import DeliveryState
from tenant_notify.dispatcher import Dispatcher
from tenant_notify.errors import ConfigurationError, TransientDeliveryError
from tenant_notify.models import Channel, Notification
from tenant_notify.notifier import Notifier
from tests.http_fakes import FakeProviderAPI, sendgrid_error, twilio_error

KEY = "SG.pacing-test-key"


@pytest.fixture
def api() -> Iterator[FakeProviderAPI]:
    with FakeProviderAPI() as fake:
        fake.sendgrid_keys.add(KEY)
        fake.twilio_credentials[("AC" + "1" * 32, "token-pacing")] = "AC" + "1" * 32
        yield fake


def settings(api: FakeProviderAPI, **email: object) -> dict[str, object]:
    return {
        "transport": {"backend": "inprocess", "workers": 4},
        "email": {"provider": "sendgrid", "api_key": KEY, "base_url": api.url, **email},
        "retry": {"initial_delay": 0.05, "jitter": 0, "max_attempts": 3},
        "tenants": {
            "acme": {"name": "Acme", "email_from": "orders@acme.test"},
            "globex": {"name": "Globex", "email_from": "hello@globex.test"},
        },
    }


def wait_for_pause(notify: Notifier) -> None:
    """Until the notifier's pacing knows of a paused account."""
    deadline = time.monotonic() + 10
    while not notify.dispatcher.pacing.pauses():
        assert time.monotonic() < deadline, "no account was paused"
        time.sleep(0.01)


def note(tenant: str) -> Notification:
    """One email notification for ``tenant``, as a worker receives it."""
    return Notification(
        id=uuid.uuid4().hex,
        tenant_id=tenant,
        kind="email",
        channel=Channel.EMAIL,
        to="a@example.com",
        context={"subject": "s", "body": "b"},
    )


def send(notify: Notifier, n: int, tenant: str = "acme") -> list:
    return [
        notify.send_email(to_email=f"u{i}@example.com", subject=f"s{i}", body="b", tenant_id=tenant)
        for i in range(n)
    ]


def test_a_429_with_a_reset_pauses_the_account_for_everyone_behind_it(api: FakeProviderAPI):
    reset = time.time() + 4.0  # room for a loaded machine between here and the reply
    api.script(sendgrid_error(429, "too many", headers={"X-RateLimit-Reset": f"{reset:.3f}"}))
    with Notifier.from_settings(settings(api)) as notify:
        [first] = send(notify, 1)
        # Wait until the first one met the limit, then send more, for two tenants
        # that share the platform's account.
        wait_for_pause(notify)
        later = send(notify, 4, "acme") + send(notify, 4, "globex")
        statuses = [r.wait(30) for r in [first, *later]]
    assert [s.state for s in statuses] == [DeliveryState.SENT] * 9
    # One refused request, then one per notification, none before the reset.
    assert len(api.requests) == 10
    assert all(s.updated_at.timestamp() >= reset - 0.05 for s in statuses)
    # The ones behind it waited without spending an attempt; so did the one that
    # met the limit (a throttling is no failed attempt while the pause is known).
    assert {s.attempts for s in statuses} == {1}


def test_a_throttled_notification_does_not_fail_with_no_attempts_left(api: FakeProviderAPI):
    api.script(
        sendgrid_error(429, "too many", headers={"Retry-After": "0.5"}),
        sendgrid_error(429, "still", headers={"Retry-After": "0.5"}),
    )
    config = settings(api)
    config["retry"] = {"initial_delay": 0.05, "jitter": 0, "max_attempts": 1}
    with Notifier.from_settings(config) as notify:
        [receipt] = send(notify, 1)
        status = receipt.wait(30)
    assert status.state is DeliveryState.SENT
    assert status.attempts == 1
    assert len(api.requests) == 3  # two throttled, then through


def test_after_a_pause_one_probe_goes_first_and_the_rest_wait_for_its_answer(
    api: FakeProviderAPI,
):
    from tests.http_fakes import Reply

    # The first meets the limit; after the pause, the probe's answer takes 0.5 s.
    api.script(sendgrid_error(429, "too many", headers={"Retry-After": "1"}), Reply.stall(0.5))
    with Notifier.from_settings(settings(api)) as notify:
        [first] = send(notify, 1)
        wait_for_pause(notify)
        later = send(notify, 6)
        statuses = [r.wait(30) for r in [first, *later]]
    assert [s.state for s in statuses] == [DeliveryState.SENT] * 7
    assert len(api.requests) == 8
    probe, *rest = sorted(request.at for request in api.requests[1:])
    # Four delivery threads, yet nothing went with the probe: all waited for its answer.
    assert all(at >= probe + 0.45 for at in rest), [round(at - probe, 3) for at in rest]


def test_twilio_20429_pauses_the_sms_account(api: FakeProviderAPI):
    api.script(twilio_error(429, 20429, "Too Many Requests", headers={"Retry-After": "1"}))
    config = settings(api)
    config["sms"] = {
        "provider": "twilio",
        "account_sid": "AC" + "1" * 32,
        "auth_token": "token-pacing",
        "base_url": api.url,
    }
    config["tenants"]["acme"]["sms_from"] = "+14155550123"  # type: ignore[index]
    with Notifier.from_settings(config) as notify:
        started = time.monotonic()
        first = notify.send_sms(to_phone="+14155550100", body="one", tenant_id="acme")
        wait_for_pause(notify)
        second = notify.send_sms(to_phone="+14155550101", body="two", tenant_id="acme")
        assert first.wait(20).state is DeliveryState.SENT
        assert second.wait(20).state is DeliveryState.SENT
        # The second waited out the pause on its first attempt.
        assert notify.status(second.id).attempts == 1
    assert time.monotonic() - started >= 0.95
    assert len(api.requests) == 3


def test_max_rate_holds_the_account_to_its_rate(api: FakeProviderAPI):
    with Notifier.from_settings(settings(api, max_rate="4/second")) as notify:
        # One first, so the client's set-up (its TLS context) delays no later arrival.
        [warm] = send(notify, 1)
        assert warm.wait(30).state is DeliveryState.SENT
        time.sleep(1.1)  # its turn has left the window
        statuses = [r.wait(30) for r in send(notify, 10)]
    assert [s.state for s in statuses] == [DeliveryState.SENT] * 10
    assert len(api.requests) == 11  # waited for its turn, never refused
    arrived = sorted(request.at for request in api.requests[1:])
    # Turns are a second apart per 4; arrivals jitter by the first connections' set-up.
    for i in range(len(arrived) - 4):
        assert arrived[i + 4] - arrived[i] >= 0.7, [round(t - arrived[0], 3) for t in arrived]
    assert arrived[-1] - arrived[0] >= 1.8


def test_a_bad_max_rate_fails_at_build_naming_the_key(api: FakeProviderAPI):
    with pytest.raises(ConfigurationError) as caught:
        Notifier.from_settings(settings(api, max_rate="fast"))
    assert caught.value.key == "email.max_rate"


@pytest.fixture
def two_workers(api: FakeProviderAPI) -> Iterator[tuple[Dispatcher, Dispatcher]]:
    """Two dispatchers sharing Redis under a key prefix of their own: two worker
    processes' worth."""
    redis = pytest.importorskip("redis")
    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as err:
        pytest.skip(f"Redis is not reachable: {err}")
    from tenant_notify.config import load_settings
    from tenant_notify.transports.celery.worker import build_dispatcher

    prefix = f"tn_pacing:{uuid.uuid4().hex[:10]}:"
    config = load_settings({**settings(api), "redis": {"url": url, "key_prefix": prefix}})
    one, two = build_dispatcher(config), build_dispatcher(config)
    try:
        yield one, two
    finally:
        client = one.status_store.client  # type: ignore[attr-defined]
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        one.close()
        two.close()


def test_two_dispatchers_sharing_redis_share_the_pause(
    api: FakeProviderAPI, two_workers: tuple[Dispatcher, Dispatcher]
):
    one, two = two_workers
    api.script(sendgrid_error(429, "slow down", headers={"Retry-After": "30"}))
    outcome = one.deliver(note("acme"))
    assert outcome.status is not None and outcome.status.state is DeliveryState.RETRYING
    assert 29 <= outcome.retry_in <= 31  # type: ignore[operator]

    deferred = two.deliver(note("globex"))
    assert deferred.deferred and 28 <= deferred.retry_in <= 32  # type: ignore[operator]
    assert len(api.requests) == 1  # the second worker did not try
    assert list(two.pacing.pauses()) == [two.providers.account(None, Channel.EMAIL).key]


def test_pauses_are_counted_and_shown_as_seconds_left(api: FakeProviderAPI):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    api.script(sendgrid_error(429, "too many", headers={"Retry-After": "20"}))
    with Notifier.from_settings(settings(api), metrics=registry) as notify:
        send(notify, 1)
        wait_for_pause(notify)
        [account] = notify.dispatcher.pacing.pauses()
        assert (
            registry.get_sample_value(
                "tenant_notify_provider_pauses_total", {"provider": "sendgrid"}
            )
            == 1
        )
        left = registry.get_sample_value(
            "tenant_notify_provider_paused_seconds", {"provider": "sendgrid", "account": account}
        )
        assert 15 < left <= 20
        assert KEY not in prometheus_client.generate_latest(registry).decode()
        notify.close(timeout=0.1)


class PrivateRedis:
    """A redis-server of the test's own, stopped and started again at will on one port
    (its MONITOR sees the test's commands only)."""

    OPTIONS = ("--save", "", "--appendonly", "no")

    def __init__(self) -> None:
        import shutil
        import socket

        self.redis = pytest.importorskip("redis")
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server")
        self.binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server: Any = None

    def start(self) -> None:
        import subprocess

        self.server = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", *self.OPTIONS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except self.redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)
            self.server = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_workers_hear_of_pauses_and_read_no_pause_per_delivery(
    api: FakeProviderAPI, private_redis: PrivateRedis
):
    import threading

    import redis

    from tenant_notify.config import load_settings
    from tenant_notify.transports.celery.worker import build_dispatcher

    config = load_settings(
        {**settings(api), "redis": {"url": private_redis.url, "key_prefix": "p:"}}
    )

    commands: list[str] = []
    monitor = redis.Redis.from_url(private_redis.url).monitor()
    monitor.__enter__()

    def watch() -> None:
        try:
            for command in monitor.listen():
                if command.get("client_type") != "lua":  # not the commands of a script
                    commands.append(str(command["command"]))
        except Exception:  # the server stops at the end of the test
            return

    threading.Thread(target=watch, daemon=True).start()
    one, two = build_dispatcher(config), build_dispatcher(config)  # two processes' worth
    try:
        assert two.deliver(note("globex")).status.state is DeliveryState.SENT  # type: ignore[union-attr]
        assert one.deliver(note("acme")).status.state is DeliveryState.SENT  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while not (one.pacing.listening and two.pacing.listening):
            assert time.monotonic() < deadline, "the pause listeners did not start"
            time.sleep(0.01)
        time.sleep(0.2)
        commands.clear()
        for _ in range(5):
            assert two.deliver(note("globex")).status.state is DeliveryState.SENT  # type: ignore[union-attr]
        time.sleep(0.2)  # the monitor's last lines
        assert commands and not [c for c in commands if "pace:pause" in c], commands

        api.script(sendgrid_error(429, "slow down", headers={"Retry-After": "30"}))
        throttled = one.deliver(note("acme"))
        assert throttled.deferred and 29 <= throttled.retry_in <= 32  # type: ignore[operator]
        account = two.providers.account(None, Channel.EMAIL)
        deadline = time.monotonic() + 5
        while two.pacing.paused(account) is None:  # heard, not read: no GET
            assert time.monotonic() < deadline, "the other worker never heard of the pause"
            time.sleep(0.01)
        deferred = two.deliver(note("globex"))
        assert deferred.deferred and 28 <= deferred.retry_in <= 33  # type: ignore[operator]
        assert len(api.requests) == 8  # 7 sent, 1 throttled; the deferred one never tried
        assert not [c for c in commands if c.startswith("GET ") and "pace:pause" in c], commands
    finally:
        one.close()
        two.close()


def test_a_listener_that_lost_redis_catches_up_with_the_pauses_it_missed(
    api: FakeProviderAPI, private_redis: PrivateRedis
):
    from tenant_notify.config import load_settings
    from tenant_notify.transports.celery.worker import build_dispatcher

    config = load_settings(
        {**settings(api), "redis": {"url": private_redis.url, "key_prefix": "q:"}}
    )
    one, two = build_dispatcher(config), build_dispatcher(config)
    account = two.providers.account(None, Channel.EMAIL)
    try:
        assert two.pacing.paused(account) is None  # starts the listener

        def until(condition: Any, what: str) -> None:
            deadline = time.monotonic() + 15
            while not condition():
                assert time.monotonic() < deadline, what
                time.sleep(0.02)

        until(lambda: two.pacing.listening, "the listener never started")
        private_redis.stop()
        until(lambda: not two.pacing.listening, "the listener did not notice Redis going")
        private_redis.start()
        # Recorded while the listener may still be reconnecting: its announcement
        # can be missed, the sorted set of pauses is not.
        one.pacing.throttled(account, 30.0)
        until(lambda: two.pacing.listening, "the listener did not come back")
        left = two.pacing.paused(account)
        assert left is not None and 25 < left <= 30
    finally:
        one.close()
        two.close()


def test_a_thread_waiting_for_a_connection_does_not_send_after_a_429_was_answered(
    api: FakeProviderAPI,
):
    from tests.http_fakes import Reply

    # One connection: the second delivery passes every check while the first one's
    # request is at the API, then waits for the connection; by the time it has it,
    # the 429 was answered (and recorded before the connection was free).
    throttled = sendgrid_error(429, "too many", headers={"Retry-After": "1.5"})
    api.script(Reply(throttled.status, throttled.body, throttled.headers, delay=0.4))
    with Notifier.from_settings(settings(api, max_connections=1)) as notify:
        [first] = send(notify, 1)
        deadline = time.monotonic() + 10
        while not api.requests:  # the first one's request is at the API
            assert time.monotonic() < deadline
            time.sleep(0.005)
        [second] = send(notify, 1, "globex")
        statuses = [first.wait(30), second.wait(30)]
    assert [s.state for s in statuses] == [DeliveryState.SENT] * 2
    assert {s.attempts for s in statuses} == {1}
    refused, *later = api.requests
    assert len(later) == 2
    # Nothing reached the API between the 429 and the end of its pause.
    answered = refused.at + 0.4
    assert all(r.at >= answered + 1.4 for r in later), [round(r.at - answered, 3) for r in later]


def test_the_check_before_the_request_sees_a_pause_another_process_recorded(
    two_workers: tuple[Dispatcher, Dispatcher],
):
    from tenant_notify.dispatcher import _CallGate, _Deferred

    one, two = two_workers
    account = two.providers.account(None, Channel.EMAIL)
    gate = _CallGate(two.pacing, account, "sendgrid", first=True)
    gate.before_request()  # nothing paused: the request may go (and the listener starts)
    deadline = time.monotonic() + 10
    while not two.pacing.listening:  # from here on, checks answer from memory
        assert time.monotonic() < deadline, "the pause listener did not start"
        time.sleep(0.01)
    # The other process meets the limit while this one's request waits to be written.
    one.pacing.throttled(one.providers.account(None, Channel.EMAIL), 30.0)
    heard = time.monotonic() + 2
    while two.pacing.paused(account) is None:  # the announcement is on its way
        assert time.monotonic() < heard, "the announcement never reached this process"
        time.sleep(0.001)
    with pytest.raises(_Deferred) as caught:
        gate.before_request()
    assert 28 <= caught.value.seconds <= 30
    assert gate.stopped
    # A later provider of a failover chain is failed over from, not deferred.
    later = _CallGate(two.pacing, account, "sendgrid", first=False)
    with pytest.raises(TransientDeliveryError):
        later.before_request()


def test_the_check_before_the_request_reads_an_announcement_its_listener_has_not_read(
    api: FakeProviderAPI, two_workers: tuple[Dispatcher, Dispatcher]
):
    import select
    import threading

    one, two = two_workers
    # The listener thread of the second process wakes, but does not get to read:
    # it waits for the interpreter behind busy delivery threads, as under load.
    woken = threading.Event()
    release = threading.Event()
    wait = two.pacing._wait_for_announcement

    def held(poller: Any) -> list[tuple[int, int]]:
        if release.is_set():
            return wait(poller)
        events = poller.poll(1000)
        if events:
            woken.set()
            release.wait(10)
        return []

    two.pacing._wait_for_announcement = held  # type: ignore[method-assign]
    try:
        assert two.deliver(note("globex")).status.state is DeliveryState.SENT  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while not two.pacing.listening:
            assert time.monotonic() < deadline, "the pause listener did not start"
            time.sleep(0.01)
        # The first process meets the limit; its announcement reaches the second
        # process's socket and stays there unread.
        one.pacing.throttled(one.providers.account(None, Channel.EMAIL), 30.0)
        assert woken.wait(5), "the announcement never reached the second process"
        fd = two.pacing._announcements
        assert fd is not None and select.select([fd], [], [], 0)[0]
        account = two.providers.account(None, Channel.EMAIL)
        assert two.pacing.paused(account) is None  # admission's check: memory, not yet heard

        deferred = two.deliver(note("globex"))
        assert deferred.deferred and 28 <= deferred.retry_in <= 33  # type: ignore[operator]
        assert len(api.requests) == 1  # the first delivery only: the check stopped this one
        left = two.pacing.paused(account)
        assert left is not None and 28 <= left <= 30
    finally:
        release.set()


def test_the_check_before_the_call_lets_it_go_when_redis_is_out_of_reach():
    # A worker whose pause listener is not listening (starting, or reconnecting after
    # Redis went away) reads the pause before the call; Redis not answering must not
    # fail a notification whose claim is taken (it went as its admission let it).
    import socket

    import redis

    from tenant_notify.limiting import Account, Pacing

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    pacing = Pacing(client=client, key_prefix="gone:")
    try:
        assert not pacing.listening
        assert pacing.before_call(Account("k", "sendgrid")) is None
    finally:
        pacing.close()
