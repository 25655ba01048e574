"""The Redis stores against a real Redis (DB 15, a key prefix per test, cleaned up)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tenant_notify.errors import StoreUnavailableError
from tenant_notify.models import Channel, DeliveryState, DeliveryStatus
from tenant_notify.stores import ClaimState, IdempotencyStore, StatusStore
from tenant_notify.stores.redis import RedisIdempotencyStore, RedisStatusStore, redis_url
from tests.integration.conftest import REDIS_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def client(services: None) -> Iterator[object]:
    import redis

    prefix = f"tn_test:{uuid.uuid4().hex[:8]}:"
    connection = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    connection.prefix = prefix  # type: ignore[attr-defined]
    yield connection
    keys = list(connection.scan_iter(match=prefix + "*"))
    if keys:
        connection.delete(*keys)
    connection.close()


@pytest.fixture
def statuses(client) -> RedisStatusStore:
    return RedisStatusStore(client, key_prefix=client.prefix, ttl=60, poll_interval=0.2)


@pytest.fixture
def keys(client) -> RedisIdempotencyStore:
    return RedisIdempotencyStore(client, key_prefix=client.prefix)


def status(notification_id: str = "n1", **changes: object) -> DeliveryStatus:
    base = DeliveryStatus(
        id=notification_id, tenant_id="acme", kind="welcome", channel=Channel.EMAIL
    )
    return base.evolve(**changes) if changes else base


def test_they_implement_the_protocols(statuses, keys):
    assert isinstance(statuses, StatusStore)
    assert isinstance(keys, IdempotencyStore)


def test_save_get_discard_with_ttl(statuses, client):
    assert statuses.get("n1") is None
    statuses.save(status(attempts=1, state=DeliveryState.SENDING))
    got = statuses.get("n1")
    assert got is not None and got.state is DeliveryState.SENDING and got.attempts == 1
    assert 0 < client.pttl(f"{client.prefix}status:n1") <= 60_000
    statuses.discard("n1")
    assert statuses.get("n1") is None


def test_find_by_provider_message_id_follows_the_latest_status(statuses):
    statuses.save(status(state=DeliveryState.SENT, provider="smtp", provider_message_id="m-1"))
    found = statuses.find_by_provider_message_id("smtp", "m-1")
    assert found is not None and found.id == "n1"
    assert statuses.find_by_provider_message_id("sendgrid", "m-1") is None
    # A later attempt through another provider moves the index along.
    statuses.save(status(state=DeliveryState.SENT, provider="twilio", provider_message_id="SM2"))
    assert statuses.find_by_provider_message_id("smtp", "m-1") is None
    assert statuses.find_by_provider_message_id("twilio", "SM2").id == "n1"
    statuses.discard("n1")
    assert statuses.find_by_provider_message_id("twilio", "SM2") is None


def test_wait_wakes_on_a_final_status_saved_by_another_client(statuses, client):
    import redis

    statuses.save(status(state=DeliveryState.SENDING))
    other = RedisStatusStore(
        redis.Redis.from_url(REDIS_URL, decode_responses=True), key_prefix=client.prefix
    )

    def finish() -> None:
        time.sleep(0.3)
        other.save(status(state=DeliveryState.SENT, attempts=1))

    thread = threading.Thread(target=finish)
    started = time.monotonic()
    thread.start()
    result = statuses.wait("n1", 5)
    thread.join()
    other.close()
    assert result is not None and result.state is DeliveryState.SENT
    assert 0.25 < time.monotonic() - started < 2


def test_wait_times_out_with_the_latest_status_and_knows_unknown_ids(statuses):
    assert statuses.wait("nope", 1) is None
    statuses.save(status(state=DeliveryState.RETRYING))
    started = time.monotonic()
    result = statuses.wait("n1", 0.3)
    assert result is not None and result.state is DeliveryState.RETRYING
    assert 0.25 < time.monotonic() - started < 1.5


def test_reserve_returns_the_first_id(keys, client):
    assert keys.reserve("send:acme:o-1", "first", 60) is None
    assert keys.reserve("send:acme:o-1", "second", 60) == "first"
    assert 0 < client.pttl(f"{client.prefix}idem:send:acme:o-1") <= 60_000
    keys.forget("send:acme:o-1")
    assert keys.reserve("send:acme:o-1", "third", 60) is None


def test_claim_is_exclusive_and_done_is_remembered(keys):
    other = RedisIdempotencyStore(keys.client, key_prefix=keys._prefix)
    assert keys.claim("delivery:n1", 5).state is ClaimState.ACQUIRED
    busy = other.claim("delivery:n1", 5)
    assert busy.state is ClaimState.BUSY and 4 < busy.retry_in <= 5
    keys.complete("delivery:n1", 60)
    assert other.claim("delivery:n1", 5).state is ClaimState.DONE


def test_release_only_gives_back_our_own_lease(keys, client):
    other = RedisIdempotencyStore(keys.client, key_prefix=keys._prefix)
    assert keys.claim("delivery:n2", 0.2).state is ClaimState.ACQUIRED
    time.sleep(0.3)  # our lease ran out and another worker took it
    assert other.claim("delivery:n2", 5).state is ClaimState.ACQUIRED
    keys.release("delivery:n2")  # must not delete the other worker's lease
    assert keys.claim("delivery:n2", 5).state is ClaimState.BUSY
    other.release("delivery:n2")
    assert keys.claim("delivery:n2", 5).state is ClaimState.ACQUIRED


def test_concurrent_claims_have_one_winner(keys):
    stores = [RedisIdempotencyStore(keys.client, key_prefix=keys._prefix) for _ in range(8)]
    results: list[ClaimState] = []
    barrier = threading.Barrier(len(stores))

    def claim(store: RedisIdempotencyStore) -> None:
        barrier.wait()
        results.append(store.claim("delivery:race", 5).state)

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.value for r in results) == ["acquired"] + ["busy"] * 7


def test_redis_unreachable_is_a_store_error(services):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    store = RedisStatusStore(dead)
    with pytest.raises(StoreUnavailableError, match="Redis did not answer"):
        store.get("n1")
    with pytest.raises(StoreUnavailableError):
        RedisIdempotencyStore(dead).reserve("k", "n1", 60)


def test_url_defaults_to_a_redis_result_backend():
    from tenant_notify import load_settings

    assert redis_url(load_settings({"redis": {"url": "redis://r:1/2"}})) == "redis://r:1/2"
    backend = {"celery": {"result_backend": "redis://results:6379/3"}}
    assert redis_url(load_settings(backend)) == "redis://results:6379/3"
    other = {"celery": {"result_backend": "db+postgresql://x/y"}}
    assert redis_url(load_settings(other)) == "redis://localhost:6379/0"


def test_writes_that_do_not_wait_still_land_in_order_and_are_seen(statuses, keys, client):
    # ``sending`` and a completed claim are written without waiting for Redis;
    # the final status waits, and by then everything before it has landed.
    import redis

    elsewhere = redis.Redis.from_url(REDIS_URL, decode_responses=True)  # another process
    try:
        for n in range(50):
            notification_id = f"o{n}"
            assert keys.claim(f"delivery:{notification_id}", 5).state is ClaimState.ACQUIRED
            statuses.save(status(notification_id, state=DeliveryState.SENDING, attempts=1))
            keys.complete(f"delivery:{notification_id}", 60)
            statuses.save(status(notification_id, state=DeliveryState.SENT, attempts=1))
            other_keys = RedisIdempotencyStore(elsewhere, key_prefix=client.prefix)
            assert other_keys.claim(f"delivery:{notification_id}", 5).state is ClaimState.DONE
            other = RedisStatusStore(elsewhere, key_prefix=client.prefix)
            got = other.get(notification_id)
            assert got is not None and got.state is DeliveryState.SENT
        # Read-your-writes within the process, before anything waited.
        statuses.save(status("late", state=DeliveryState.SENDING, attempts=2))
        got = statuses.get("late")
        assert got is not None and got.state is DeliveryState.SENDING and got.attempts == 2
    finally:
        elsewhere.close()


def test_a_refused_write_is_raised_by_the_next_call_that_waits(statuses, client):
    client.set(f"{client.prefix}status:broken", "not json")  # the save script will fail
    statuses.save(status("broken", state=DeliveryState.SENDING, attempts=1))  # no wait
    with pytest.raises(StoreUnavailableError, match=r"refused the write of .*status:broken"):
        statuses.get("n1")
    # The connection is still in step: later calls work.
    statuses.save(status("n1", state=DeliveryState.SENT, attempts=1))
    got = statuses.get("n1")
    assert got is not None and got.state is DeliveryState.SENT


def test_a_forked_process_writes_on_its_own_connection(statuses):
    import multiprocessing

    statuses.save(status("parent", state=DeliveryState.SENDING, attempts=1))  # reply owed

    def child() -> None:
        statuses.save(status("child", state=DeliveryState.SENDING, attempts=1))
        statuses.save(status("child", state=DeliveryState.SENT, attempts=1))
        got = statuses.get("child")
        raise SystemExit(0 if got is not None and got.state is DeliveryState.SENT else 3)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(10)
    assert process.exitcode == 0
    got = statuses.get("parent")  # the parent's owed reply is still its own to read
    assert got is not None and got.state is DeliveryState.SENDING


def test_a_health_check_never_reads_a_reply_owed_to_a_write(client):
    # redis-py pings a connection that has been quiet for health_check_interval
    # before the next command, and reads the PONG: on the writer's connection
    # that read would take the reply of a write instead.
    import redis

    checked = redis.Redis.from_url(REDIS_URL, decode_responses=True, health_check_interval=1)
    try:
        store = RedisStatusStore(checked, key_prefix=client.prefix, ttl=60)
        store.save(status("hc", state=DeliveryState.SENDING, attempts=1))  # reply owed
        time.sleep(1.2)
        store.save(status("hc", state=DeliveryState.SENT, attempts=1))  # waits
        got = store.get("hc")
        assert got is not None and got.state is DeliveryState.SENT
    finally:
        checked.close()


def test_a_lost_connection_names_the_writes_it_leaves_unconfirmed(statuses, monkeypatch):
    import redis

    statuses.save(status("second", state=DeliveryState.SENDING, attempts=1))  # reply owed
    conn = statuses._writer._conn

    def lost(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(conn, "read_response", lost)
    with pytest.raises(StoreUnavailableError, match=r"unconfirmed writes: .*status:second"):
        statuses.flush()
    monkeypatch.undo()
    statuses.save(status("third", state=DeliveryState.SENT, attempts=1))  # a new connection
    got = statuses.get("third")
    assert got is not None and got.state is DeliveryState.SENT


# --- the delivery ledger ------------------------------------------------------------------


def test_a_delivery_claim_reads_the_status_in_the_same_round_trip(statuses, keys):
    fresh = keys.claim("delivery:n1", 10)
    assert fresh.state is ClaimState.ACQUIRED and fresh.status_read and fresh.status is None
    keys.release("delivery:n1")
    statuses.save(status(state=DeliveryState.SENT, attempts=1, provider="smtp"))
    again = keys.claim("delivery:n1", 10)
    assert again.state is ClaimState.ACQUIRED and again.status_read
    assert again.status is not None and again.status.state is DeliveryState.SENT
    # Other claims do not read a status.
    assert not keys.claim("other:n1", 10).status_read


def test_a_claim_makes_the_reads_asked_for_once_it_holds_the_lease(statuses, keys, client):
    prefix = client.prefix
    client.set(f"{prefix}x", "one")
    client.hset(f"{prefix}h", mapping={"a": "1", "b": "2"})
    reads = [("GET", f"{prefix}x"), ("HGETALL", f"{prefix}h"), ("GET", f"{prefix}none")]
    reads.append(("HGETALL", f"{prefix}none"))
    claim = keys.claim("delivery:r1", 10, reads=reads)
    assert claim.state is ClaimState.ACQUIRED and claim.status_read and claim.status is None
    assert claim.reads == ("one", {"a": "1", "b": "2"}, None, {})
    assert keys.claim("other:r1", 10, reads=reads[:1]).reads == ("one",)
    # Busy or done: nothing read, as nothing is to be delivered.
    assert keys.claim("delivery:r1", 10, reads=reads).reads == ()
    keys.complete("delivery:r1", 60)
    done = keys.claim("delivery:r1", 10, reads=reads)
    assert done.state is ClaimState.DONE and done.reads == ()
    # Only reads: the claim's script never writes what it is given.
    with pytest.raises(ValueError, match="DEL"):
        keys.claim("delivery:r2", 10, reads=[("DEL", f"{prefix}x")])
    assert client.get(f"{prefix}x") == "one" and client.get(f"{prefix}idem:delivery:r2") is None


def test_a_claim_waits_for_this_process_s_earlier_writes(statuses, keys, client):
    # The sending status goes out without a wait; a claim after it sees it.
    statuses.save(status("w1", state=DeliveryState.SENDING, attempts=1))
    claim = keys.claim("delivery:w1", 10)
    assert claim.status is not None and claim.status.state is DeliveryState.SENDING


def test_a_renewed_lease_outlives_its_length_and_a_dropped_one_runs_out(keys, client):
    # A 1 s lease renewed every 0.1 s: a loaded machine may stall this test for most
    # of a second between renewals without the lease running out.
    assert keys.claim("delivery:a", 1.0).state is ClaimState.ACQUIRED
    assert keys.claim("delivery:b", 1.0).state is ClaimState.ACQUIRED
    deadline = time.monotonic() + 3.2
    while time.monotonic() < deadline:
        assert keys.renew(["delivery:a"], 1.0) == []
        time.sleep(0.1)
    # a was renewed past three leases; b ran out and another worker may take it.
    assert keys.claim("delivery:a", 1.0).state is ClaimState.BUSY
    assert keys.claim("delivery:b", 1.0).state is ClaimState.ACQUIRED
    # A lease another process took (or one completed) is reported lost, never extended.
    keys.complete("delivery:a", 60)
    assert keys.renew(["delivery:a", "delivery:never"], 1.0) == ["delivery:a", "delivery:never"]
    assert keys.claim("delivery:a", 1.0).state is ClaimState.DONE


def test_save_first_never_overwrites_and_tells_a_repeat_lazily(statuses):
    first = status(state=DeliveryState.QUEUED)
    assert statuses.save_first(first)() is False
    statuses.save(first.evolve(state=DeliveryState.SENT, attempts=1))
    repeat = statuses.save_first(first)
    assert repeat() is True
    assert statuses.get("n1").state is DeliveryState.SENT
    # discard_queued erases only the very status a send wrote.
    statuses.discard_queued(first)
    assert statuses.get("n1").state is DeliveryState.SENT
    other = status("n2", state=DeliveryState.QUEUED)
    statuses.save_first(other)
    statuses.discard_queued(other)
    assert statuses.get("n2") is None


def test_every_key_about_a_notification_expires_within_the_retention(client):
    """Sends, a repeat, an open, a click, a failure: each key the stores wrote has a
    TTL of at most ``[stores] retention``; only the suppression list is kept."""
    from tenant_notify import Notifier, load_settings
    from tenant_notify.providers.memory import get_outbox

    settings = load_settings(
        {
            "transport": "eager",
            "email": {"provider": "memory", "outbox": "retention"},
            "retry": {"max_attempts": 1},
            "stores": {"retention": 3600},
            "idempotency": {"ttl": 600},
            "redis": {"key_prefix": client.prefix},
            "tenants": {"acme": {"name": "Acme", "email_from": "orders@acme.test"}},
        }
    )
    notify = Notifier(
        settings,
        status_store=RedisStatusStore.from_settings(settings, client),
        idempotency_store=RedisIdempotencyStore.from_settings(settings, client),
    )
    get_outbox("retention").clear()
    try:
        receipts = [
            notify.send_order_confirmation(
                order_id=f"o-{n}",
                customer_email=f"c{n}@example.com",
                order_total="9.99",
                currency="EUR",
                tenant_id="acme",
            )
            for n in range(3)
        ]
        repeat = notify.send_order_confirmation(
            order_id="o-0",
            customer_email="c0@example.com",
            order_total="9.99",
            currency="EUR",
            tenant_id="acme",
        )
        assert repeat.duplicate and len(get_outbox("retention").messages) == 3
        sent = receipts[0].id
        notify.reputation.record_open("acme", sent, "order_confirmation")
        notify.reputation.record_click("acme", sent, "order_confirmation", "https://acme.test/")
        notify.suppressions.add("acme", "gone@example.com")
        notify.status_store.flush()  # type: ignore[attr-defined]
    finally:
        notify.close()

    import redis

    reader = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        found = {key: reader.pttl(key) for key in reader.scan_iter(match=client.prefix + "*")}
    finally:
        reader.close()
    kinds = {key[len(client.prefix) :].split(":", 1)[0] for key in found}
    assert {"status", "pmid", "idem", "eng", "clicks"} <= kinds
    kept = {key for key, ttl in found.items() if not 0 < ttl <= 3_600_000}
    assert kept == {key for key in found if key.startswith(client.prefix + "supp")}
    assert kept  # the suppression list is there, without an expiry


# --- a caller's first status, written with others ------------------------------------


def test_first_statuses_wait_to_be_written_together_and_land_without_a_call(client, monkeypatch):
    import redis

    from tenant_notify.stores.redis import _Writer

    store = RedisStatusStore(
        redis.Redis.from_url(REDIS_URL, decode_responses=True), key_prefix=client.prefix, ttl=60
    )
    try:
        store.save(status("warm", state=DeliveryState.SENDING, attempts=1))
        store.flush()
        writes: list[int] = []
        conn = store._writer._conn
        real = conn.send_packed_command

        def counted(command: list[bytes], check_health: bool = True) -> None:
            writes.append(len(b"".join(command)))
            real(command, check_health=check_health)

        monkeypatch.setattr(conn, "send_packed_command", counted)
        monkeypatch.setattr(_Writer, "_LINGER", 60.0)  # only a full batch writes
        for n in range(_Writer._BATCH):
            store.save_first(status(f"b{n}", state=DeliveryState.QUEUED))
        assert len(writes) == 1  # 64 statuses, one system call
        assert client.get(f"{client.prefix}status:b63") is not None
    finally:
        store.close()


def test_fewer_first_statuses_than_a_batch_land_a_moment_later_without_a_call(client):
    import redis

    store = RedisStatusStore(
        redis.Redis.from_url(REDIS_URL, decode_responses=True), key_prefix=client.prefix, ttl=60
    )
    try:
        store.save_first(status("late1", state=DeliveryState.QUEUED))
        store.save_first(status("late2", state=DeliveryState.QUEUED))
        deadline = time.monotonic() + 10
        while client.get(f"{client.prefix}status:late2") is None:  # another client's read
            assert time.monotonic() < deadline, "the buffered status never landed"
            time.sleep(0.01)
        assert client.get(f"{client.prefix}status:late1") is not None
    finally:
        store.close()


def test_a_caller_that_keeps_sending_does_not_wake_the_flusher_and_every_status_lands(client):
    import redis

    store = RedisStatusStore(
        redis.Redis.from_url(REDIS_URL, decode_responses=True), key_prefix=client.prefix, ttl=60
    )
    writer = store._writer
    try:
        store.save_first(status("first", state=DeliveryState.QUEUED))  # starts the flusher
        wakes: list[float] = []
        due = writer._due
        real_set = due.set

        def counted_set() -> None:
            wakes.append(time.monotonic())
            real_set()

        due.set = counted_set  # type: ignore[method-assign]
        # A send a millisecond for 0.3 s, as a busy web process: the buffer empties
        # and fills again some sixty times, and the flusher looks on its own timer.
        for n in range(300):
            store.save_first(status(f"steady{n}", state=DeliveryState.QUEUED))
            time.sleep(0.001)
        # (Once more each time the machine held this thread past _IDLE: a few at most.)
        assert len(wakes) < 10, len(wakes)
        deadline = time.monotonic() + 10
        while client.get(f"{client.prefix}status:steady299") is None:  # another client's read
            assert time.monotonic() < deadline, "the buffered status never landed"
            time.sleep(0.01)
        # After a quiet spell the flusher waits to be woken, and the next status wakes it.
        deadline = time.monotonic() + 10
        while writer._awake:
            assert time.monotonic() < deadline, "the flusher never went quiet"
            time.sleep(0.01)
        store.save_first(status("after", state=DeliveryState.QUEUED))
        assert len(wakes) >= 1 and writer._awake
        while client.get(f"{client.prefix}status:after") is None:
            assert time.monotonic() < deadline, "the status after a quiet spell never landed"
            time.sleep(0.01)
        assert all(client.get(f"{client.prefix}status:steady{n}") for n in range(300))
    finally:
        store.close()


def test_a_buffered_first_status_is_seen_by_the_process_at_once(statuses, monkeypatch):
    from tenant_notify.stores.redis import _Writer

    monkeypatch.setattr(_Writer, "_LINGER", 60.0)
    statuses.save_first(status("mine", state=DeliveryState.QUEUED))
    got = statuses.get("mine")  # the read writes what waits first
    assert got is not None and got.state is DeliveryState.QUEUED
    # A later write of the same notification lands after it, in call order.
    gone = status("gone", state=DeliveryState.QUEUED)
    statuses.save_first(gone)
    statuses.discard_queued(gone)
    assert statuses.get("gone") is None


def test_a_first_status_raises_at_once_when_redis_refuses_the_connection(services):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(StoreUnavailableError, match="Redis did not answer"):
        RedisStatusStore(dead).save_first(status("n1", state=DeliveryState.QUEUED))


def test_a_process_forked_while_the_writer_is_busy_writes_on_its_own(statuses, monkeypatch):
    import multiprocessing

    from tenant_notify.stores.redis import _Writer

    monkeypatch.setattr(_Writer, "_LINGER", 60.0)
    statuses.save_first(status("parent", state=DeliveryState.QUEUED))  # buffered
    writer = statuses._writer

    def child() -> None:
        statuses.save_first(status("child", state=DeliveryState.QUEUED))
        got = statuses.get("child")
        parents = statuses.get("parent")  # the parent's buffered status is not the child's
        ok = got is not None and parents is None
        raise SystemExit(0 if ok else 3)

    with writer._lock:  # the flusher's turn, say, at the moment of the fork
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
    process.join(20)
    if process.is_alive():  # stuck on the lock it inherited
        process.kill()
        process.join()
    assert process.exitcode == 0
    got = statuses.get("parent")
    assert got is not None and got.state is DeliveryState.QUEUED


# --- the pipelined writer: writes never wait behind another thread's reply -------------


def _through(proxy: object) -> object:
    """A client of the test DB through ``proxy`` (a tests.faults.FaultProxy)."""
    import redis

    db = int(REDIS_URL.rsplit("/", 1)[1])
    return redis.Redis(
        host="127.0.0.1",
        port=proxy.port,  # type: ignore[attr-defined]
        db=db,
        decode_responses=True,
        socket_timeout=5,
    )


def test_a_write_goes_out_while_another_thread_waits_for_its_reply(client):
    # A delivery's completion is written the moment its provider answers, not
    # after the round trips other threads are waiting on.
    from tests.faults import REDIS, FaultProxy

    with FaultProxy(REDIS) as proxy:
        store = RedisStatusStore(_through(proxy), key_prefix=client.prefix, ttl=60)
        writer = store._writer
        first, done = f"{client.prefix}first", f"{client.prefix}done"
        got: list[object] = []
        try:
            assert writer.call(first, "PING") == "PONG"
            proxy.stall(replies_only=True)
            restore = threading.Timer(3.0, proxy.restore)
            restore.start()
            waiting = threading.Thread(
                target=lambda: got.append(writer.call(first, "SET", first, "1", "PX", 60_000))
            )
            waiting.start()
            time.sleep(0.2)  # it waits for its reply now
            started = time.monotonic()
            writer.send(done, "SET", done, "yes", "PX", 60_000)
            took = time.monotonic() - started
            while client.get(done) is None:  # landed, though no reply has come back yet
                assert time.monotonic() - started < 2.0, "the write waited for the other's reply"
                time.sleep(0.01)
            assert took < 1.0 and waiting.is_alive() and not got
            waiting.join(10)
            restore.join()
            assert got == ["OK"]
            assert writer.call(done, "GET", done) == "yes"
        finally:
            proxy.restore()
            store.close()


def test_threads_waiting_at_once_each_get_their_own_reply_and_see_their_writes(statuses, client):
    writer = statuses._writer
    errors: list[BaseException] = []

    def run(n: int) -> None:
        count, mark = f"{client.prefix}count:{n}", f"{client.prefix}mark:{n}"
        try:
            for i in range(1, 61):
                writer.send(mark, "SET", mark, str(i), "PX", 60_000)  # not waited for
                assert writer.call(count, "INCR", count) == i
                assert writer.call(mark, "GET", mark) == str(i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert not writer._waiting and not writer._link.owed


def test_a_reset_fails_every_waiting_thread_at_once_and_the_next_write_reconnects(client):
    from tests.faults import REDIS, FaultProxy

    with FaultProxy(REDIS) as proxy:
        store = RedisStatusStore(_through(proxy), key_prefix=client.prefix, ttl=60)
        writer = store._writer
        outcomes: dict[int, str] = {}

        def wait(n: int) -> None:
            key = f"{client.prefix}w{n}"
            try:
                writer.call(key, "SET", key, "1", "PX", 60_000)
                outcomes[n] = "answered"
            except StoreUnavailableError as err:
                outcomes[n] = str(err)

        try:
            assert writer.call("warm", "PING") == "PONG"
            proxy.stall(replies_only=True)
            threads = [threading.Thread(target=wait, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)  # all eight wait: one reads, seven wait for their turn
            reset = time.monotonic()
            proxy.reset()
            for thread in threads:
                thread.join(10)
            # Every one failed on the reset, not after the socket timeout (5 s).
            assert time.monotonic() - reset < 3.0
            assert sorted(outcomes) == list(range(8))
            assert all(o.startswith("Redis did not answer") for o in outcomes.values())
            assert any(f"{client.prefix}w" in o for o in outcomes.values())  # named
            assert not writer._waiting
            proxy.restore()
            again = f"{client.prefix}again"
            assert writer.call(again, "SET", again, "2", "PX", 60_000) == "OK"
            assert client.get(again) == "2"
        finally:
            proxy.restore()
            store.close()


def test_replies_nobody_waits_for_are_read_once_too_many_are_owed(statuses, client, monkeypatch):
    from tenant_notify.stores.redis import _Writer

    monkeypatch.setattr(_Writer, "_MAX_OWED", 10)
    writer = statuses._writer
    for n in range(35):
        key = f"{client.prefix}s{n}"
        writer.send(key, "SET", key, str(n), "PX", 60_000)
        assert len(writer._link.owed) <= 10
    assert client.get(f"{client.prefix}s34") == "34"
    statuses.flush()
    assert not writer._link.owed


def test_anything_raised_mid_reply_gives_the_connection_up(statuses, client, monkeypatch):
    # An interrupt while a reply is half read leaves the connection out of step: the
    # next write must not read that reply as its own.
    writer = statuses._writer
    first = f"{client.prefix}first"
    assert writer.call(first, "SET", first, "1", "PX", 60_000) == "OK"
    conn = writer._conn

    def interrupted(*args: object, **kwargs: object) -> None:
        raise RuntimeError("interrupted mid-reply")

    monkeypatch.setattr(conn, "read_response", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        writer.call(first, "GET", first)
    monkeypatch.undo()
    assert writer._conn is None  # given up
    second = f"{client.prefix}second"
    assert writer.call(second, "SET", second, "2", "PX", 60_000) == "OK"
    assert writer.call(first, "GET", first) == "1"


def test_a_hand_over_outlives_its_lease_and_goes_with_complete_or_release(keys, client):
    prefix = client.prefix
    # A holder hands its message over, then stops (its lease runs out unrenewed).
    assert keys.claim("delivery:h1", 0.2).state is ClaimState.ACQUIRED
    keys.mark_handed("delivery:h1", "smtp", 60)
    time.sleep(0.3)
    # The next claim is told, in its one round trip, and owns the record now.
    again = keys.claim("delivery:h1", 10)
    assert again.state is ClaimState.ACQUIRED and again.handed == "smtp"
    assert again.status_read and again.reads == ()
    keys.release("delivery:h1")  # retried (retry_ambiguous): the record goes with it
    assert client.get(f"{prefix}handed:delivery:h1") is None
    assert keys.claim("delivery:h1", 10).handed is None
    # Completed: gone too; and a holder that never handed over leaves none.
    keys.mark_handed("delivery:h1", "sendgrid", 60)
    keys.complete("delivery:h1", 60)
    keys.flush()
    assert client.get(f"{prefix}handed:delivery:h1") is None
    assert client.get(f"{prefix}idem:delivery:h1") is not None
    assert keys.claim("delivery:h2", 10).handed is None
    # Taken back (the provider refused for certain): a later claim is not told.
    keys.mark_handed("delivery:h2", "smtp", 60)
    keys.clear_handed("delivery:h2")
    keys.flush()
    assert client.get(f"{prefix}handed:delivery:h2") is None


def test_a_hand_over_is_written_without_a_wait_and_lands_before_later_writes(
    statuses, keys, client, monkeypatch
):
    assert keys.claim("delivery:h3", 10).state is ClaimState.ACQUIRED
    waited: list[str] = []
    real_call = keys._writer.call
    monkeypatch.setattr(
        keys._writer, "call", lambda key, *a: waited.append(key) or real_call(key, *a)
    )
    keys.mark_handed("delivery:h3", "smtp", 60)
    assert waited == []  # no round trip on the attempt's path
    statuses.save(status("h3", state=DeliveryState.FAILED, attempts=1))  # a write that waits
    assert client.get(f"{client.prefix}handed:delivery:h3") == "smtp"
    assert client.pttl(f"{client.prefix}handed:delivery:h3") > 50_000
