"""The delivery ledger's error paths in process: held completions, heartbeats, the
caller's two errors. (The faults themselves, end to end: tests/integration/test_faults.py.)"""

from __future__ import annotations

import time

import pytest

from tenant_notify import InDoubtError, NotQueuedError
from tenant_notify.errors import EnqueueError, QueueFullError, StoreUnavailableError
from tenant_notify.models import DeliveryState
from tenant_notify.stores import ClaimState
from tests.test_notifier import ORDER, first_submit_fails, make_notifier


def test_the_two_errors_are_enqueue_errors_and_exported():
    assert issubclass(NotQueuedError, EnqueueError) and issubclass(InDoubtError, EnqueueError)
    assert issubclass(QueueFullError, NotQueuedError)
    assert issubclass(StoreUnavailableError, NotQueuedError)
    assert not issubclass(InDoubtError, NotQueuedError)


def test_a_lost_completion_write_is_held_until_the_store_answers(tenants):
    notify = make_notifier(tenants=tenants)
    store = notify.dispatcher.status_store
    real_save = store.save
    refused: list[str] = []

    def save(status):
        # The store is out of reach twice, right when the attempt records SENT.
        if status.state is DeliveryState.SENT and len(refused) < 2:
            refused.append(status.id)
            raise StoreUnavailableError("redis reset")
        real_save(status)

    store.save = save
    receipt = notify.send_order_confirmation(**ORDER)
    assert receipt.wait(5).state is DeliveryState.SENT
    assert len(refused) == 2
    # The claim was completed with it: a redelivery is not sent again.
    claim = notify.idempotency_store.claim(f"delivery:{receipt.id}", 10)
    assert claim.state is ClaimState.DONE
    assert len(notify.outbox) == 1
    notify.close()


def test_a_final_status_found_with_the_claim_is_not_sent_again(tenants):
    notify = make_notifier(tenants=tenants)
    receipt = notify.send_order_confirmation(**ORDER)
    assert receipt.wait(5).state is DeliveryState.SENT
    # The claim's completion was lost, the status was not: the attempt that claims
    # it next finds the earlier one completed.
    notify.idempotency_store.release(f"delivery:{receipt.id}")
    notify.idempotency_store.forget(f"delivery:{receipt.id}")
    notification = notify.build(notify.send_order_confirmation, **ORDER)
    outcome = notify.dispatcher.deliver(notification, 1)
    assert outcome.status is not None and outcome.status.state is DeliveryState.SENT
    assert len(notify.outbox) == 1
    notify.close()


def test_the_heartbeat_renews_the_lease_of_a_slow_attempt(tenants):
    notify = make_notifier(tenants=tenants, idempotency={"lease": 0.3})
    provider = notify.dispatcher.providers
    real_get = provider.get
    claims = []

    class Slow:
        def __init__(self, inner):
            self.inner = inner

        def send(self, message):
            time.sleep(1.0)  # three leases
            claims.append(notify.idempotency_store.claim(f"delivery:{message.notification_id}", 1))
            return self.inner.send(message)

    provider.get = lambda *a, **k: Slow(real_get(*a, **k))
    receipt = notify.send_order_confirmation(**ORDER)
    assert receipt.wait(10).state is DeliveryState.SENT
    assert [c.state for c in claims] == [ClaimState.BUSY]
    notify.close()


def test_a_refused_keyed_send_leaves_nothing_and_a_retry_sends(tenants):
    notify = make_notifier(tenants=tenants)
    calls = first_submit_fails(notify, NotQueuedError("broker down"))
    with pytest.raises(NotQueuedError):
        notify.send_order_confirmation(**ORDER)
    assert notify.status_store.get(calls[0]) is None
    receipt = notify.send_order_confirmation(**ORDER)
    assert receipt.id == calls[0] and not receipt.duplicate
    assert receipt.wait(5).state is DeliveryState.SENT
    notify.close()


def test_an_in_doubt_send_keeps_its_status_and_a_retry_is_sent_once(tenants):
    notify = make_notifier(tenants=tenants)
    # It did get through, but the caller cannot know.
    calls = first_submit_fails(notify, InDoubtError("no confirm"), got_through=True)
    with pytest.raises(InDoubtError):
        notify.send_order_confirmation(**ORDER)
    again = notify.send_order_confirmation(**ORDER)
    assert again.id == calls[0]
    assert again.wait(5).state is DeliveryState.SENT
    time.sleep(0.2)
    assert len(notify.outbox) == 1
    notify.close()


def test_a_forked_child_renews_its_own_claims(tenants):
    import os
    import threading
    import warnings

    notify = make_notifier(tenants=tenants)
    leases = notify.dispatcher._leases
    leases.hold("delivery:parent")
    assert any(t.name == "tenant-notify-leases" for t in threading.enumerate())
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12 warns about forking a process with threads (the heartbeat's).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child inherits no thread: its first claim starts a heartbeat
        try:
            leases.hold("delivery:child")
            alive = any(t.name == "tenant-notify-leases" for t in threading.enumerate())
            os.write(write, b"yes" if alive else b"no")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 10)
    os.close(read)
    os.waitpid(pid, 0)
    leases.drop("delivery:parent")
    notify.close()
    assert answer == b"yes"


# --- an attempt that stops after its provider has the message (in process) -----------
#
# The in-process transport runs an attempt that raised again later, as a broker
# redelivers a message whose worker died. Here the attempt stops right after the
# real SMTP server (aiosmtpd on loopback) accepted the message: the first write
# that would record it (the claim's completion) raises.


def _stopped_after_the_dot(tenants, **retry):
    from tenant_notify import Notifier
    from tests.smtp_server import LoopbackSMTPServer

    with LoopbackSMTPServer() as server:
        settings = {
            "transport": {"backend": "inprocess", "workers": 1},
            "email": {"provider": "smtp", "host": server.host, "port": server.port, "timeout": 5},
            "tenants": tenants,
            "idempotency": {"lease": 0.5},
            "retry": {"initial_delay": 0.05, "jitter": 0, **retry},
        }
        with Notifier.from_settings(settings) as notify:
            store = notify.idempotency_store
            real_complete = store.complete
            stopped: list[str] = []

            def complete(key, ttl):
                if not stopped:
                    stopped.append(key)
                    raise RuntimeError("the attempt stops here")
                real_complete(key, ttl)

            store.complete = complete
            receipt = notify.send_order_confirmation(**ORDER)
            status = receipt.wait(15)
            time.sleep(0.3)  # a second copy would be on its way by now
        assert stopped
        copies = [m for m in server.messages if m.message["X-Tenant-Notify-Id"] == receipt.id]
        return len(copies), status


@pytest.mark.integration
def test_an_attempt_that_stopped_after_the_dot_ends_ambiguous_not_resent(tenants):
    copies, status = _stopped_after_the_dot(tenants)
    assert copies == 1
    assert status.state is DeliveryState.FAILED, status
    assert status.error_type == "AmbiguousDeliveryError", status
    assert "stopped after handing the message to smtp" in (status.error or "")


@pytest.mark.integration
def test_with_retry_ambiguous_an_attempt_stopped_after_the_dot_is_sent_again(tenants):
    copies, status = _stopped_after_the_dot(tenants, retry_ambiguous=True)
    assert copies == 2
    assert status.state is DeliveryState.SENT, status


@pytest.mark.integration
def test_a_certain_refusal_after_the_dot_takes_the_hand_over_back_before_failing_over(tenants):
    from tenant_notify import Notifier
    from tests.smtp_server import LoopbackSMTPServer

    with LoopbackSMTPServer() as server:
        server.fail_next("DATA", "451 4.3.0 try again later")  # the reply to the final dot
        settings = {
            "transport": "eager",
            "email": {
                "provider": "smtp",
                "host": server.host,
                "port": server.port,
                "timeout": 5,
                "fallback": [{"provider": "memory", "outbox": "handover-failover"}],
            },
            "tenants": tenants,
        }
        with Notifier.from_settings(settings) as notify:
            store = notify.idempotency_store
            calls: list[tuple[str, ...]] = []
            real_mark, real_clear = store.mark_handed, store.clear_handed
            store.mark_handed = lambda key, provider, ttl: (
                calls.append(("mark", provider)),
                real_mark(key, provider, ttl),
            )
            store.clear_handed = lambda key: (calls.append(("clear",)), real_clear(key))
            receipt = notify.send_order_confirmation(**ORDER)
            assert receipt.wait(5).state is DeliveryState.SENT
    # Had the worker died after the refusal, its redelivery would not have been
    # told that smtp might have the message.
    assert calls == [("mark", "smtp"), ("clear",)]


@pytest.mark.integration
def test_a_call_stopped_after_its_hand_over_leaves_no_record_behind(tenants):
    # The account is paused while the hand-over is being recorded (another thread
    # read a 429): the gate's last look stops the request, and the deferral's
    # release takes the record with the claim.
    from tenant_notify import Notifier
    from tests.http_fakes import FakeProviderAPI

    key = "SG.handover-stop.Zm9vYmFy"
    with FakeProviderAPI() as api:
        api.sendgrid_keys.add(key)
        settings = {
            "transport": "eager",
            "email": {"provider": "sendgrid", "api_key": key, "base_url": api.url},
            "tenants": tenants,
        }
        with Notifier.from_settings(settings) as notify:
            dispatcher = notify.dispatcher
            store = notify.idempotency_store
            handed: list[str] = []
            real_mark, real_paused = store.mark_handed, dispatcher.pacing.paused

            def mark(claim_key, provider, ttl):
                handed.append(provider)
                real_mark(claim_key, provider, ttl)

            store.mark_handed = mark
            dispatcher.pacing.paused = lambda account, **kw: (
                5.0 if handed else real_paused(account, **kw)
            )
            notification = notify.build(notify.send_order_confirmation, **ORDER)
            outcome = dispatcher.deliver(notification, 1)
            assert outcome.deferred and handed == ["sendgrid"]
            assert api.requests == []
            claim = store.claim(f"delivery:{notification.id}", 10)
            assert claim.state is ClaimState.ACQUIRED and claim.handed is None


# --- Redis out of reach right before the provider call -----------------------------
#
# The checks right before a provider call (the account's pacing, a pause read
# from Redis while this process's listener is not caught up) can meet Redis out of
# reach. Nothing has been sent then: the attempt must be given back to the
# transport, never recorded as a failure (which dead-letters the notification).


def test_redis_out_of_reach_right_before_the_call_redelivers_not_fails(tenants):
    notify = make_notifier(tenants=tenants, transport="inprocess")
    pacing = notify.dispatcher.pacing
    real_before_call = pacing.before_call
    refused: list[str] = []

    def before_call(account):
        if not refused:
            refused.append(account.key)
            raise StoreUnavailableError("Redis did not answer: ConnectionError: reset")
        return real_before_call(account)

    pacing.before_call = before_call
    receipt = notify.send_order_confirmation(**ORDER)
    status = receipt.wait(10)
    assert refused
    assert status.state is DeliveryState.SENT, status
    assert len(notify.outbox) == 1
    notify.close()


def test_redis_out_of_reach_before_the_call_is_raised_with_the_claim_given_back(tenants):
    notify = make_notifier(tenants=tenants)
    notification = notify.build(notify.send_order_confirmation, **ORDER)
    pacing = notify.dispatcher.pacing
    real_before_call = pacing.before_call

    def unreachable(account):
        raise StoreUnavailableError("Redis did not answer: ConnectionError: reset")

    pacing.before_call = unreachable
    with pytest.raises(StoreUnavailableError):
        notify.dispatcher.deliver(notification, 1)
    status = notify.dispatcher.status_store.get(notification.id)
    assert status is None or not status.is_final, status
    pacing.before_call = real_before_call
    # The claim was given back: the transport's redelivery sends it, once.
    outcome = notify.dispatcher.deliver(notification, 1)
    assert outcome.status is not None and outcome.status.state is DeliveryState.SENT
    assert len(notify.outbox) == 1
    notify.close()
