"""The Notifier's public contract: validation before queueing, receipts, idempotency."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from babel import Locale
from babel.numbers import format_currency

from tenant_notify import DeliveryState, Notifier
from tenant_notify.errors import (
    ConfigurationError,
    EnqueueError,
    HeaderInjectionError,
    InvalidAmountError,
    InvalidContextError,
    InvalidCurrencyError,
    InvalidRecipientError,
    NotifyError,
    TemplateNotFoundError,
    UnknownNotificationError,
    UnknownTenantError,
    ValidationError,
)
from tenant_notify.testing import ScriptedProvider, make_notifier

ORDER = dict(
    order_id="A-1001",
    customer_email="jane@example.com",
    order_total=Decimal("99.99"),
    currency="USD",
    tenant_id="acme",
)


@pytest.fixture
def notify(tenants):
    with make_notifier(tenants=tenants) as notifier:
        yield notifier


def test_order_confirmation_goes_out_with_the_tenants_identity(notify):
    receipt = notify.send_order_confirmation(**ORDER)
    status = receipt.wait(timeout=1)
    assert status.state is DeliveryState.SENT
    assert status.provider == "memory"
    assert status.provider_message_id
    assert status.attempts == 1
    [email] = notify.outbox.emails
    assert str(email.from_addr) == "Acme Shop <orders@acme.test>"
    assert [a.email for a in email.to] == ["jane@example.com"]
    assert "A-1001" in email.subject
    assert "$99.99" in email.text
    assert email.html and "Acme Shop" in email.html
    assert email.tenant_id == "acme" and email.notification_id == receipt.id


def test_bare_sender_address_gets_the_tenant_name(notify):
    notify.send_welcome_email(user_email="max@example.com", user_name="Max", tenant_id="globex")
    [email] = notify.outbox.emails
    assert email.from_addr.name == "Globex Café"
    assert email.from_addr.email == "hello@globex.test"


def test_tenant_locale_selects_german_templates(notify):
    notify.send_order_confirmation(**{**ORDER, "tenant_id": "globex", "currency": "EUR"})
    [email] = notify.outbox.emails
    assert "99,99" in email.text
    assert "Bestellung" in email.subject


@pytest.mark.parametrize(
    ("locale", "currency"),
    [
        ("fr", "EUR"),
        ("es", "EUR"),
        ("nl", "EUR"),
        ("pl", "PLN"),
        ("sv", "SEK"),
        ("de-CH", "CHF"),
        ("en-IN", "INR"),
    ],
)
def test_an_order_total_reads_as_babel_formats_it_in_the_tenants_locale(tenants, locale, currency):
    tenants["acme"]["locale"] = locale
    with make_notifier(tenants=tenants) as notify:
        notify.send_order_confirmation(
            **{**ORDER, "order_total": Decimal("1234567.5"), "currency": currency}
        )
        [email] = notify.outbox.emails
    total = format_currency(
        Decimal("1234567.50"), currency, locale=Locale.parse(locale.replace("-", "_"))
    )
    assert total in email.text and total in email.html


def test_locale_argument_overrides_the_tenant(notify):
    notify.send_order_confirmation(**{**ORDER, "locale": "de"})
    [email] = notify.outbox.emails
    assert "Bestellung" in email.subject


def test_sms_and_generic_email(notify):
    notify.send_sms(to_phone="+1 555 123 4567", body="Shipped!", tenant_id="acme")
    notify.send_email(
        to_email="a@example.com",
        subject="Hi",
        body="Plain",
        tenant_id="acme",
        html_body="<p>Rich</p>",
    )
    [sms] = notify.outbox.sms
    assert sms.to == "+15551234567" and sms.from_number == "+15005550006" and sms.body == "Shipped!"
    [email] = notify.outbox.emails
    assert email.subject == "Hi" and email.text.strip() == "Plain" and "<p>Rich</p>" in email.html


def test_generic_email_without_html_is_text_only(notify):
    notify.send_email(to_email="a@example.com", subject="Hi", body="Plain", tenant_id="acme")
    assert notify.outbox.emails[0].html is None


def test_host_defined_kind_from_the_tenant_templates_dir(tmp_path, tenants):
    kind = tmp_path / "shipping_update"
    kind.mkdir()
    (kind / "subject.txt").write_text("Order {{ order_id }} shipped")
    (kind / "body.txt").write_text("Tracking: {{ tracking }} from {{ tenant.name }}")
    tenants["acme"]["templates_dir"] = str(tmp_path)
    with make_notifier(tenants=tenants) as notify:
        notify.send(
            "shipping_update",
            tenant_id="acme",
            to="jane@example.com",
            context={"order_id": "A-1", "tracking": "1Z999"},
        )
        [email] = notify.outbox.emails
        assert email.subject == "Order A-1 shipped"
        assert email.text.strip() == "Tracking: 1Z999 from Acme Shop"
        # globex has no such template: refused before anything is queued
        with pytest.raises(TemplateNotFoundError):
            notify.send("shipping_update", tenant_id="globex", to="j@example.com")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"customer_email": "not-an-address"}, InvalidRecipientError),
        ({"customer_email": "jane@example"}, InvalidRecipientError),
        ({"currency": "XYZ"}, InvalidCurrencyError),
        ({"currency": "dollars"}, InvalidCurrencyError),
        ({"order_total": Decimal("-1")}, InvalidAmountError),
        ({"order_total": "ninety"}, InvalidAmountError),
        ({"order_total": float("nan")}, InvalidAmountError),
        ({"order_total": True}, InvalidAmountError),
        ({"tenant_id": "initech"}, UnknownTenantError),
        ({"customer_name": "Jane\r\nBcc: x@evil.test"}, HeaderInjectionError),
        ({"items": [{"name": "x", "quantity": 0, "unit_price": 1}]}, InvalidContextError),
    ],
)
def test_bad_input_raises_before_anything_is_queued(notify, change, error):
    with pytest.raises(error):
        notify.send_order_confirmation(**{**ORDER, **change})
    assert notify.outbox.messages == []
    assert len(notify.status_store) == 0


def test_validation_errors_are_value_errors_and_lookup_errors():
    assert issubclass(InvalidRecipientError, ValueError)
    assert issubclass(InvalidRecipientError, NotifyError)
    assert issubclass(UnknownTenantError, LookupError)
    assert issubclass(TemplateNotFoundError, LookupError)


@pytest.mark.parametrize(
    "subject",
    [
        "Hello\nBcc: evil@x.test",
        "Hi\r",
        "nul\0",
        "Hi =?UTF-8?Q?=0A?=Bcc: evil@x.test",
        "=?utf-8?b?Cg==?=",
    ],
)
def test_subject_header_injection_is_refused(notify, subject):
    with pytest.raises(HeaderInjectionError):
        notify.send_email(to_email="a@example.com", subject=subject, body="b", tenant_id="acme")
    assert notify.outbox.messages == []


@pytest.mark.parametrize("phone", ["5551234567", "+1555", "+1-800-FLOWERS-XX", "", "+"])
def test_bad_phone_numbers(notify, phone):
    with pytest.raises(InvalidRecipientError):
        notify.send_sms(to_phone=phone, body="x", tenant_id="acme")


def test_context_must_travel_as_json(notify):
    with pytest.raises(InvalidContextError, match="object"):
        notify.send(
            "email",
            tenant_id="acme",
            to="a@example.com",
            context={"subject": "s", "body": "b", "x": object()},
        )
    with pytest.raises(InvalidContextError):
        notify.send("email", tenant_id="acme", to="a@example.com", context={"tenant": "x"})


def test_context_types_survive_to_the_templates(tmp_path, tenants):
    (tmp_path / "typed").mkdir()
    (tmp_path / "typed" / "subject.txt").write_text("typed")
    (tmp_path / "typed" / "body.txt").write_text(
        "{{ (amount * 2) }} {{ when.year }} {{ day.isoformat() }} {{ nested.list[1] }}"
    )
    tenants["acme"]["templates_dir"] = str(tmp_path)
    with make_notifier(tenants=tenants) as notify:
        notify.send(
            "typed",
            tenant_id="acme",
            to="a@example.com",
            context={
                "amount": Decimal("1.10"),
                "when": dt.datetime(2030, 1, 2, tzinfo=dt.UTC),
                "day": dt.date(2030, 5, 6),
                "nested": {"list": [1, 2]},
            },
        )
        assert notify.outbox.emails[0].text.strip() == "2.20 2030 2030-05-06 2"


def test_tenant_without_sms_sender_cannot_send_sms(notify):
    with pytest.raises(ConfigurationError, match="sms_from"):
        notify.send_sms(to_phone="+15551234567", body="x", tenant_id="globex")


# --- build, then submit ---------------------------------------------------------------------


def test_build_checks_everything_and_queues_nothing_until_submitted(notify):
    notification = notify.build(notify.send_order_confirmation, **ORDER)
    assert (notification.tenant_id, notification.kind, notification.to) == (
        "acme",
        "order_confirmation",
        "jane@example.com",
    )
    assert notification.idempotency_key == "order_confirmation:A-1001"
    assert len(notify.status_store) == 0 and not notify.outbox.emails
    receipt = notify.submit(notification)
    assert receipt.id == notification.id
    assert receipt.wait(1).state is DeliveryState.SENT
    assert [e.notification_id for e in notify.outbox.emails] == [notification.id]


def test_build_raises_what_the_send_would(notify):
    with pytest.raises(InvalidRecipientError):
        notify.build(notify.send, "welcome", tenant_id="acme", to="not-an-address")
    with pytest.raises(UnknownTenantError):
        notify.build(notify.send_sms, to_phone="+15551234567", body="x", tenant_id="nobody")
    assert len(notify.status_store) == 0


def test_build_takes_only_this_notifiers_methods_that_send_once(notify, tenants):
    with (
        make_notifier(tenants=tenants) as other,
        pytest.raises(TypeError, match="send method of this notifier"),
    ):
        notify.build(
            other.send_email, to_email="a@example.com", subject="s", body="b", tenant_id="acme"
        )

    class Twice(type(notify)):
        def send_both(self, **kwargs):
            self.send_email(**kwargs)
            return self.send_email(**kwargs)

    with make_notifier(tenants=tenants) as base:
        twice = Twice(base.settings, transport="eager")
        with pytest.raises(TypeError, match="exactly one notification"):
            twice.build(
                twice.send_both, to_email="a@example.com", subject="s", body="b", tenant_id="acme"
            )
        twice.close()


# --- idempotency -------------------------------------------------------------------------


def test_order_confirmation_twice_sends_once_and_returns_the_first_id(notify):
    first = notify.send_order_confirmation(**ORDER)
    second = notify.send_order_confirmation(**ORDER)
    assert second.id == first.id and second.duplicate and not first.duplicate
    assert len(notify.outbox.emails) == 1


def test_welcome_twice_sends_once_per_tenant(notify):
    a = notify.send_welcome_email(user_email="u@example.com", user_name="U", tenant_id="acme")
    b = notify.send_welcome_email(user_email="U@example.com", user_name="U", tenant_id="acme")
    c = notify.send_welcome_email(user_email="u@example.com", user_name="U", tenant_id="globex")
    assert a.id == b.id and c.id != a.id
    assert len(notify.outbox.emails) == 2


def test_explicit_idempotency_key_on_any_send(notify):
    ids = {
        notify.send_sms(
            to_phone="+15551234567", body="x", tenant_id="acme", idempotency_key="k1"
        ).id
        for _ in range(3)
    }
    assert len(ids) == 1 and len(notify.outbox.sms) == 1
    other = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="acme")
    assert other.id not in ids


def first_submit_fails(notify, error, *, got_through=False):
    """Make the transport's first ``submit`` raise ``error`` (after handing the
    notification on when ``got_through``: the caller cannot know it did); the ids
    submitted, in order."""
    real_submit = notify.transport.submit
    calls = []

    def submit(notification):
        calls.append(notification.id)
        if got_through:
            real_submit(notification)
        if len(calls) == 1:
            raise error
        if not got_through:
            real_submit(notification)

    notify.transport.submit = submit
    return calls


def test_a_failed_enqueue_frees_the_idempotency_key(tenants):
    notify = make_notifier(tenants=tenants)
    first_submit_fails(notify, EnqueueError("broker down"))
    with pytest.raises(EnqueueError):
        notify.send_order_confirmation(**ORDER)
    assert len(notify.status_store) == 0
    receipt = notify.send_order_confirmation(**ORDER)
    assert not receipt.duplicate
    assert receipt.wait(1).state is DeliveryState.SENT
    notify.close()


# --- statuses and failures -----------------------------------------------------------------


def test_status_of_unknown_id(notify):
    with pytest.raises(UnknownNotificationError):
        notify.status("nope")


def test_transient_failures_are_retried_then_sent(tenants):
    provider = ScriptedProvider(["transient", "transient"])
    with make_notifier(tenants=tenants, provider=provider) as notify:
        status = notify.send_email(
            to_email="a@example.com", subject="s", body="b", tenant_id="acme"
        ).wait(1)
        assert status.state is DeliveryState.SENT and status.attempts == 3
        assert len(provider.attempts) == 3 and len(notify.outbox) == 1


def test_permanent_failure_is_not_retried_and_keeps_the_reason(tenants):
    provider = ScriptedProvider(["permanent"])
    with make_notifier(tenants=tenants, provider=provider) as notify:
        status = notify.send_email(
            to_email="a@example.com", subject="s", body="b", tenant_id="acme"
        ).wait(1)
        assert status.state is DeliveryState.FAILED and status.attempts == 1
        assert "550" in status.error and status.error_type == "PermanentDeliveryError"
        assert len(provider.attempts) == 1


def test_retries_stop_at_max_attempts(tenants):
    provider = ScriptedProvider(then="transient")
    with make_notifier(
        tenants=tenants, provider=provider, retry={"max_attempts": 3, "initial_delay": 0}
    ) as notify:
        status = notify.send_email(
            to_email="a@example.com", subject="s", body="b", tenant_id="acme"
        ).wait(1)
        assert status.state is DeliveryState.FAILED and status.attempts == 3
        assert status.error_type == "TransientDeliveryError"


def test_ambiguous_failure_is_not_retried_by_default(tenants):
    provider = ScriptedProvider(["ambiguous"])
    with make_notifier(tenants=tenants, provider=provider) as notify:
        status = notify.send_sms(to_phone="+15551234567", body="b", tenant_id="acme").wait(1)
        assert status.state is DeliveryState.FAILED and len(provider.attempts) == 1


def test_template_error_at_delivery_is_a_failed_status(tmp_path, tenants):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "subject.txt").write_text("Hi {{ missing_field }}")
    (tmp_path / "broken" / "body.txt").write_text("body")
    tenants["acme"]["templates_dir"] = str(tmp_path)
    with make_notifier(tenants=tenants) as notify:
        status = notify.send("broken", tenant_id="acme", to="a@example.com").wait(1)
        assert status.state is DeliveryState.FAILED
        assert "missing_field" in status.error and "broken/subject.txt" in status.error
        assert status.error_type == "TemplateRenderError"


def test_closed_notifier_refuses_sends(tenants):
    notify = make_notifier(tenants=tenants)
    notify.close()
    with pytest.raises(EnqueueError):
        notify.send_sms(to_phone="+15551234567", body="x", tenant_id="acme")


def test_custom_tenant_resolver(tenants):
    from tenant_notify import Tenant

    class DbResolver:
        def __init__(self):
            self.calls = 0

        def get(self, tenant_id):
            self.calls += 1
            if tenant_id != "db-shop":
                raise UnknownTenantError(tenant_id, tenant_id=tenant_id)
            return Tenant(id="db-shop", name="DB Shop", email_from="shop@db.test")

    resolver = DbResolver()
    notify = Notifier.from_settings(
        {"transport": "eager", "email": {"provider": "memory"}}, tenant_resolver=resolver
    )
    with notify:
        notify.send_welcome_email(user_email="u@example.com", user_name="U", tenant_id="db-shop")
        with pytest.raises(UnknownTenantError):
            notify.send_welcome_email(user_email="u@example.com", user_name="U", tenant_id="acme")
    assert resolver.calls >= 2


def test_receipt_repr_has_no_recipient(notify):
    receipt = notify.send_order_confirmation(**ORDER)
    assert "jane" not in repr(receipt)
    assert receipt.id in repr(receipt)


def test_unknown_channel_is_a_validation_error(notify):
    with pytest.raises(ValidationError, match="channel"):
        notify.send("email", tenant_id="acme", to="a@example.com", channel="pigeon")


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "TemplateSecurityError"),
        ("{{ tenant.__class__ }}", "TemplateSecurityError"),
        ("{% for i in range(99999) %}{{ 'x' * 99 }}{% endfor %}", "TemplateLimitError"),
    ],
)
def test_hostile_tenant_template_fails_the_notification_not_the_worker(
    tmp_path, tenants, body, error_type
):
    (tmp_path / "hostile").mkdir()
    (tmp_path / "hostile" / "subject.txt").write_text("Hi")
    (tmp_path / "hostile" / "body.txt").write_text(body)
    tenants["acme"]["templates_dir"] = str(tmp_path)
    with make_notifier(tenants=tenants, transport="inprocess") as notify:
        status = notify.send("hostile", tenant_id="acme", to="a@example.com").wait(10)
        assert status.state is DeliveryState.FAILED
        assert status.error_type == error_type
        assert status.attempts == 1  # never retried: the template will not get better
        # the worker is still there for the next notification
        ok = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="acme").wait(10)
        assert ok.state is DeliveryState.SENT
    assert notify.outbox.emails == []


def test_make_notifier_follows_a_memory_providers_outbox_and_merges_retry(tenants):
    from tenant_notify.testing import MemoryProvider

    with make_notifier(
        tenants=tenants, provider=MemoryProvider(outbox="x"), retry={"max_attempts": 2}
    ) as notify:
        notify.send_sms(to_phone="+15551234567", body="x", tenant_id="acme")
        assert notify.outbox.name == "x" and len(notify.outbox) == 1
        assert notify.dispatcher.retry_policy.initial_delay == 0.0
        assert notify.dispatcher.retry_policy.max_attempts == 2


def test_a_key_is_scoped_by_tenant_and_kind(notify):
    first = notify.send_sms(
        to_phone="+15551234567", body="x", tenant_id="acme", idempotency_key="k"
    )
    other_kind = notify.send_email(
        to_email="a@example.com", subject="s", body="b", tenant_id="acme", idempotency_key="k"
    )
    again = notify.send_sms(
        to_phone="+15551234567", body="x", tenant_id="acme", idempotency_key="k"
    )
    assert not other_kind.duplicate and other_kind.id != first.id
    assert again.duplicate and again.id == first.id and again.kind == "sms"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("a", "k", "b:c"), ("a", "k:b", "c")),
        (("a:b", "k", "c"), ("a", "b:k", "c")),
        (("a", "k", 'x", "y'), ("a", "k", "x")),
        (("a", "k", "\u00e9"), ("a", "k", "\\u00e9")),
    ],
)
def test_derived_ids_do_not_collide_whatever_the_keys_hold(one, other):
    from tenant_notify.models import new_notification_id

    assert new_notification_id(*one) != new_notification_id(*other)
    assert new_notification_id(*one) == new_notification_id(*one)
    assert len(new_notification_id(*one)) == 32


@pytest.mark.parametrize(
    "triple",
    [
        ("acme", "order_confirmation", "order_confirmation:A-1"),
        ('a"b\\c', "k\n", "\u00e9\u2028\x00\ud800"),
        ("t", "k", ""),
    ],
)
def test_a_derived_id_is_the_hash_of_the_json_array_of_tenant_kind_and_key(triple):
    import hashlib
    import json

    from tenant_notify.models import new_notification_id

    # Written out without json.dumps, the text hashed must stay json.dumps's: ids
    # derived by an earlier release must match (a repeat after an upgrade).
    encoded = json.dumps(list(triple), ensure_ascii=True).encode("ascii")
    assert new_notification_id(*triple) == hashlib.sha256(encoded).hexdigest()[:32]


def test_a_tenant_whose_settings_change_is_checked_again(tenants):
    # The checks that depend only on a tenant's settings are kept as passed for
    # that Tenant object; a resolver that hands out a changed one has them rerun.
    from tenant_notify.tenants import Tenant

    current = {"acme": Tenant(id="acme", name="Acme", email_from="orders@acme.test")}

    class Resolver:
        def get(self, tenant_id: str) -> Tenant:
            return current[tenant_id]

    from tenant_notify.testing import get_outbox

    outbox = get_outbox("settled")
    outbox.clear()
    email = {"provider": "memory", "outbox": "settled"}
    settings = {"transport": "eager", "email": email, "tenants": tenants}
    with Notifier.from_settings(settings, tenant_resolver=Resolver()) as notify:
        notify.send_order_confirmation(**ORDER)
        notify.send_order_confirmation(**{**ORDER, "order_id": "A-2"})
        current["acme"] = Tenant(id="acme", name="Acme")  # no email_from any more
        with pytest.raises(ConfigurationError, match="email_from"):
            notify.send_order_confirmation(**{**ORDER, "order_id": "A-3"})
        current["acme"] = Tenant(id="acme", name="Acme", email_from="orders@acme.test")
        notify.send_order_confirmation(**{**ORDER, "order_id": "A-4"})
        assert len(outbox.emails) == 3


def test_a_status_store_failure_frees_the_idempotency_key(tenants):
    from tenant_notify.errors import StoreUnavailableError

    notify = make_notifier(tenants=tenants)
    real_save = notify.status_store.save
    calls = []

    def save(status):
        calls.append(status.id)
        if len(calls) == 1:
            raise StoreUnavailableError("redis down")
        real_save(status)

    notify.status_store.save = save
    with pytest.raises(StoreUnavailableError):
        notify.send_order_confirmation(**ORDER)
    receipt = notify.send_order_confirmation(**ORDER)
    assert not receipt.duplicate
    assert receipt.wait(1).state is DeliveryState.SENT
    notify.close()


# --- input that cannot be delivered, on every transport ---------------------------------

from tests.bad_input import BAD_SENDS, GOOD_SENDS  # noqa: E402


@pytest.fixture(params=["eager", "inprocess"])
def any_notify(request, tenants):
    with make_notifier(tenants=tenants, transport=request.param) as notifier:
        yield notifier


@pytest.mark.parametrize("case", list(BAD_SENDS))
def test_undeliverable_input_is_refused_at_the_call(any_notify, case):
    send, error, message = BAD_SENDS[case]
    with pytest.raises(error, match=message) as caught:
        send(any_notify)
    assert type(caught.value) is error  # not a RecursionError, ValueError or a subclass
    assert any_notify.outbox.messages == []
    assert len(any_notify.status_store) == 0


@pytest.mark.parametrize("case", list(GOOD_SENDS))
def test_input_at_the_edge_of_the_limits_is_delivered(any_notify, case):
    receipt = GOOD_SENDS[case](any_notify)
    assert receipt.wait(timeout=10).state is DeliveryState.SENT


def test_a_rendered_subject_with_a_unicode_line_break_fails_the_delivery(tmp_path, tenants):
    # Where the call cannot know (a context value the template puts in the subject),
    # the renderer refuses it: the delivery fails, nothing reaches the provider.
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "subject.txt").write_text("{{ s }}")
    (tmp_path / "k" / "body.txt").write_text("b")
    tenants = {**tenants, "acme": {**tenants["acme"], "templates_dir": str(tmp_path)}}
    with make_notifier(tenants=tenants) as notify:
        receipt = notify.send("k", tenant_id="acme", to="j@example.com", context={"s": "a\u2028b"})
        status = receipt.wait(timeout=5)
        assert (status.state, status.error_type) == (DeliveryState.FAILED, "HeaderInjectionError")
        assert notify.outbox.messages == []
