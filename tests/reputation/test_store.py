"""The reputation store contracts, on memory and on a real Redis alike."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from tenant_notify.models import MAX_CLICKS, Channel
from tenant_notify.reputation import (
    EngagementStore,
    Pause,
    PauseStore,
    ReputationStore,
    Suppression,
    SuppressionReason,
    Suppressions,
    SuppressionStore,
)


def entry(recipient: str = "jane@example.com", **changes: Any) -> Suppression:
    fields: dict[str, Any] = {
        "tenant_id": "acme",
        "channel": Channel.EMAIL,
        "recipient": recipient,
        "reason": SuppressionReason.HARD_BOUNCE,
        "source": "test",
    }
    fields.update(changes)
    return Suppression(**fields)


def test_it_implements_every_contract(store: Any) -> None:
    for contract in (SuppressionStore, PauseStore, EngagementStore, ReputationStore):
        assert isinstance(store, contract)


def test_entries_per_tenant_channel_and_category(store: Any) -> None:
    store.add_suppression(entry())
    store.add_suppression(entry(category="marketing", reason=SuppressionReason.UNSUBSCRIBE))
    store.add_suppression(entry(tenant_id="globex"))
    store.add_suppression(entry("+15551234567", channel=Channel.SMS))

    found = store.get_suppressions("acme", Channel.EMAIL, "Jane@Example.com")  # any case
    assert [(e.category, e.reason) for e in found] == [
        (None, SuppressionReason.HARD_BOUNCE),
        ("marketing", SuppressionReason.UNSUBSCRIBE),
    ]
    assert store.get_suppressions("acme", Channel.SMS, "jane@example.com") == []
    assert store.get_suppressions("initech", Channel.EMAIL, "jane@example.com") == []
    assert len(store.list_suppressions("acme", Channel.EMAIL)) == 2
    assert len(store.list_suppressions("globex", Channel.EMAIL)) == 1
    [sms] = store.list_suppressions("acme", Channel.SMS)
    assert sms.recipient == "+15551234567"

    assert store.remove_suppression("acme", Channel.EMAIL, "jane@example.com", None) == 1
    assert store.remove_suppression("acme", Channel.EMAIL, "jane@example.com", None) == 0
    [left] = store.get_suppressions("acme", Channel.EMAIL, "jane@example.com")
    assert left.category == "marketing"
    store.remove_suppression("acme", Channel.EMAIL, "jane@example.com", "marketing")
    assert store.list_suppressions("acme", Channel.EMAIL) == []


def test_an_entry_round_trips_whole(store: Any) -> None:
    original = entry(detail="550 5.1.1 no such user", source="sendgrid")
    store.add_suppression(original)
    [back] = store.get_suppressions("acme", Channel.EMAIL, original.recipient)
    assert back == original


def test_tenant_ids_with_separators_do_not_meet(store: Any) -> None:
    store.add_suppression(entry(tenant_id="a:email"))
    assert store.get_suppressions("a", Channel.EMAIL, "jane@example.com") == []
    assert len(store.list_suppressions("a:email", Channel.EMAIL)) == 1


def test_faults_are_counted_in_the_window(store: Any) -> None:
    assert [store.count_sender_fault("acme", Channel.EMAIL, 60) for _ in range(3)] == [1, 2, 3]
    assert store.count_sender_fault("acme", Channel.SMS, 60) == 1
    assert store.count_sender_fault("globex", Channel.EMAIL, 60) == 1
    time.sleep(0.25)
    assert store.count_sender_fault("acme", Channel.EMAIL, 0.2) == 1  # the others fell out


def test_a_pause_holds_until_resumed_or_expired(store: Any) -> None:
    now = dt.datetime.now(dt.UTC)
    pause = Pause("acme", Channel.EMAIL, "550 5.7.26", 5, now, now + dt.timedelta(seconds=60))
    store.count_sender_fault("acme", Channel.EMAIL, 60)
    store.pause(pause)
    assert store.get_pause("acme", Channel.EMAIL) == pause
    assert store.get_pause("acme", Channel.SMS) is None
    assert store.get_pause("globex", Channel.EMAIL) is None
    assert store.list_pauses() == [pause]
    # The pause starts the count again.
    assert store.count_sender_fault("acme", Channel.EMAIL, 60) == 1
    assert store.resume("acme", Channel.EMAIL) is True
    assert store.resume("acme", Channel.EMAIL) is False
    assert store.get_pause("acme", Channel.EMAIL) is None

    short = Pause("acme", Channel.SMS, "x", 5, now, now + dt.timedelta(seconds=0.2))
    store.pause(short)
    assert store.get_pause("acme", Channel.SMS) is not None
    time.sleep(0.3)
    assert store.get_pause("acme", Channel.SMS) is None
    assert store.list_pauses() == []


def test_engagement_counts_opens_and_keeps_clicks(store: Any) -> None:
    assert store.get_engagement("n-1") is None
    t0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
    store.record_open("n-1", t0 + dt.timedelta(minutes=5))
    store.record_open("n-1", t0)  # reported late: still the first
    engagement = store.record_click("n-1", "https://shop.test/o/1?a=1&b=2", t0)
    assert engagement.opens == 2
    assert engagement.first_opened_at == t0
    assert engagement.last_opened_at == t0 + dt.timedelta(minutes=5)
    assert [(c.url, c.at) for c in engagement.clicks] == [("https://shop.test/o/1?a=1&b=2", t0)]
    assert store.get_engagement("n-1") == engagement
    assert store.get_engagement("n-2") is None


def test_clicks_past_the_cap_are_counted_not_kept(store: Any) -> None:
    at = dt.datetime.now(dt.UTC)
    for n in range(MAX_CLICKS + 3):
        store.record_click("n-1", f"https://shop.test/{n}", at)
    engagement = store.get_engagement("n-1")
    assert engagement.click_count == MAX_CLICKS + 3
    assert len(engagement.clicks) == MAX_CLICKS
    assert engagement.clicks[-1].url == f"https://shop.test/{MAX_CLICKS - 1}"
    assert engagement.opens == 0 and engagement.first_opened_at is None


# --- the facade ---------------------------------------------------------------------


def test_suppressions_validate_and_normalise(store: Any) -> None:
    from tenant_notify.errors import ValidationError

    lists = Suppressions(store)
    added = lists.add("acme", " Jane@Example.COM ", reason="complaint", source="api")
    assert added.recipient == "Jane@example.com"  # the domain is normalised, the local part kept
    assert lists.check("acme", "jane@example.com") == added
    assert lists.check("acme", "jane@example.com", category="marketing") == added
    for bad in (
        {"recipient": "not an address"},
        {"channel": "fax"},
        {"reason": "disliked"},
        {"category": "Has Spaces"},
    ):
        args = {"recipient": "joe@example.com", **bad}
        with pytest.raises(ValidationError):
            lists.add("acme", args.pop("recipient"), **args)


def test_a_category_entry_stops_only_its_category(store: Any) -> None:
    lists = Suppressions(store)
    lists.add("acme", "jane@example.com", reason="unsubscribe", category="marketing")
    assert lists.check("acme", "jane@example.com") is None  # transactional
    assert lists.check("acme", "jane@example.com", category="newsletter") is None
    assert lists.check("acme", "jane@example.com", category="marketing") is not None


def test_remove_can_keep_entries_of_other_reasons(store: Any) -> None:
    lists = Suppressions(store)
    lists.add("acme", "+15551234567", channel="sms", reason="hard_bounce")
    lists.add("acme", "+15551234567", channel="sms", reason="unsubscribe", category="marketing")
    lifted = lists.remove(
        "acme", "+15551234567", channel="sms", reasons=[SuppressionReason.UNSUBSCRIBE]
    )
    assert lifted == 1
    [left] = lists.list("acme", channel="sms")
    assert left.reason is SuppressionReason.HARD_BOUNCE
    assert lists.remove("acme", "+15551234567", channel="sms") == 1
    assert lists.list("acme") == []


def test_reprs_mask_the_recipient() -> None:
    assert "jane@example.com" not in repr(entry())


def test_hold_state_answers_pause_and_entries_together(store: Any) -> None:
    assert store.hold_state("acme", Channel.EMAIL, "jane@example.com") == (None, [])
    store.add_suppression(entry())
    now = dt.datetime.now(dt.UTC)
    pause = Pause("acme", Channel.EMAIL, "550 5.7.26", 5, now, now + dt.timedelta(seconds=60))
    store.pause(pause)
    got_pause, entries = store.hold_state("acme", Channel.EMAIL, "JANE@example.com")
    assert got_pause == pause and [e.reason for e in entries] == [SuppressionReason.HARD_BOUNCE]
    assert store.hold_state("acme", Channel.SMS, "jane@example.com") == (None, [])
