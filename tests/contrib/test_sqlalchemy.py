"""Send after commit, on SQLite in memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import String, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tenant_notify.contrib.sqlalchemy import DeferredState, after_commit, defer
from tenant_notify.errors import (
    EnqueueError,
    InvalidCurrencyError,
    InvalidRecipientError,
    MissingDependencyError,
    TemplateNotFoundError,
    UnknownTenantError,
)
from tenant_notify.models import Receipt
from tenant_notify.testing import TestNotifier, make_notifier
from tests.conftest import TENANTS


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def notify() -> Iterator[TestNotifier]:
    with make_notifier(tenants=TENANTS) as notifier:
        yield notifier


def confirm(session: Session, notify: TestNotifier, order: Order) -> object:
    return after_commit(session, notify).send_order_confirmation(
        order_id=order.id,
        customer_email=order.email,
        order_total=Decimal("19.90"),
        currency="EUR",
        tenant_id="acme",
    )


def place(session: Session, email: str = "jane@example.com") -> Order:
    order = Order(email=email)
    session.add(order)
    session.flush()
    return order


def test_a_committed_transaction_sends_after_the_commit(
    engine: Engine, notify: TestNotifier
) -> None:
    with Session(engine) as session, session.begin():
        order = place(session)
        order_id = order.id
        deferred = confirm(session, notify, order)
        assert deferred.state is DeferredState.PENDING  # type: ignore[attr-defined]
        assert notify.outbox.emails == []  # not before the commit
    [email] = notify.outbox.emails
    assert email.to[0].email == "jane@example.com" and email.kind == "order_confirmation"
    assert deferred.state is DeferredState.SUBMITTED  # type: ignore[attr-defined]
    receipt = deferred.receipt  # type: ignore[attr-defined]
    assert isinstance(receipt, Receipt) and receipt.status().state == "sent"
    with Session(engine) as session:
        assert session.get(Order, order_id) is not None


def test_a_rolled_back_transaction_sends_nothing(engine: Engine, notify: TestNotifier) -> None:
    handles = []

    def checkout() -> None:
        with Session(engine) as session, session.begin():
            handles.append(confirm(session, notify, place(session)))
            raise RuntimeError("payment declined")

    with pytest.raises(RuntimeError):
        checkout()
    [deferred] = handles
    assert notify.outbox.emails == []
    assert deferred.state is DeferredState.DROPPED  # type: ignore[attr-defined]
    with Session(engine) as session:
        assert session.query(Order).count() == 0

    session = Session(engine)
    confirm(session, notify, place(session))
    session.rollback()
    session.commit()  # a later commit does not resurrect it
    assert notify.outbox.emails == []
    session.close()


def test_closing_without_commit_drops_and_the_session_can_be_reused(
    engine: Engine, notify: TestNotifier
) -> None:
    session = Session(engine)
    confirm(session, notify, place(session))
    session.close()
    order = place(session, "john@example.com")
    confirm(session, notify, order)
    session.commit()
    [email] = notify.outbox.emails
    assert email.to[0].email == "john@example.com"
    session.close()


def test_bad_input_raises_at_call_time_and_defers_nothing(
    engine: Engine, notify: TestNotifier
) -> None:
    with Session(engine) as session, session.begin():
        order = place(session)
        later = after_commit(session, notify)
        with pytest.raises(InvalidRecipientError):
            later.send_welcome_email(user_email="nope", user_name="Jane", tenant_id="acme")
        with pytest.raises(InvalidCurrencyError):
            later.send_order_confirmation(
                order_id=order.id,
                customer_email="jane@example.com",
                order_total="1",
                currency="XXY",
                tenant_id="acme",
            )
        with pytest.raises(UnknownTenantError):
            later.send_email(to_email="a@example.com", subject="s", body="b", tenant_id="nobody")
        with pytest.raises(TemplateNotFoundError):
            later.send("no_such_kind", tenant_id="acme", to="a@example.com", context={"x": 1})
        with pytest.raises(TypeError):
            later.send_welcome_email(user_email="jane@example.com")  # missing arguments
        with pytest.raises(AttributeError):
            later.sendd_email  # noqa: B018
        with pytest.raises(AttributeError):
            later.close  # noqa: B018
    assert notify.outbox.emails == []


def test_every_send_method_can_be_deferred(engine: Engine, notify: TestNotifier) -> None:
    with Session(engine) as session, session.begin():
        place(session)
        later = after_commit(session, notify)
        later.send_welcome_email(user_email="a@example.com", user_name="A", tenant_id="acme")
        later.send_email(to_email="b@example.com", subject="Hi", body="Body", tenant_id="acme")
        later.send_sms(to_phone="+15551234567", body="Your code", tenant_id="acme")
        later.send(
            "email",
            tenant_id="acme",
            to="c@example.com",
            context={"subject": "S", "body": "B"},
        )
        assert notify.outbox.emails == [] and notify.outbox.sms == []
    assert [m.to[0].email for m in notify.outbox.emails] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    [sms] = notify.outbox.sms
    assert sms.to == "+15551234567"


def test_savepoints(engine: Engine, notify: TestNotifier) -> None:
    with Session(engine) as session, session.begin():
        kept = confirm(session, notify, place(session, "outer@example.com"))
        with session.begin_nested():
            released = confirm(session, notify, place(session, "released@example.com"))
        assert notify.outbox.emails == []  # releasing a savepoint is not the commit
        savepoint = session.begin_nested()
        dropped = confirm(session, notify, place(session, "dropped@example.com"))
        with session.begin_nested():  # inside the savepoint that rolls back
            inner = confirm(session, notify, place(session, "inner@example.com"))
            savepoint.rollback()
        assert dropped.state is DeferredState.DROPPED  # type: ignore[attr-defined]
        assert inner.state is DeferredState.DROPPED  # type: ignore[attr-defined]
    assert sorted(m.to[0].email for m in notify.outbox.emails) == [
        "outer@example.com",
        "released@example.com",
    ]
    assert kept.state is released.state is DeferredState.SUBMITTED  # type: ignore[attr-defined]

    notify.outbox.clear()

    def outer_fails() -> None:
        with Session(engine) as session, session.begin():
            with session.begin_nested():
                confirm(session, notify, place(session, "released@example.com"))
            raise RuntimeError("the outer transaction fails")

    with pytest.raises(RuntimeError):
        outer_fails()
    assert notify.outbox.emails == []


def test_defer_takes_any_callable_and_a_failure_does_not_break_the_commit(
    engine: Engine, notify: TestNotifier
) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise EnqueueError("broker down", tenant_id="acme")

    with Session(engine) as session, session.begin():
        place(session)
        failing = defer(session, broken)
        ok = defer(session, lambda: calls.append("ran"), description="append")
        welcome = defer(
            session,
            lambda: notify.send_welcome_email(
                user_email="a@example.com", user_name="A", tenant_id="acme"
            ),
        )
    assert failing.state is DeferredState.FAILED and isinstance(failing.error, EnqueueError)
    assert ok.state is DeferredState.SUBMITTED and ok.receipt is None and calls == ["ran"]
    assert repr(ok) == "<DeferredSend append submitted>"
    assert isinstance(welcome.receipt, Receipt)
    assert len(notify.outbox.emails) == 1
    with Session(engine) as session:
        assert session.query(Order).count() == 1  # the commit stood


def test_a_notifier_closed_before_the_commit(engine: Engine) -> None:
    notify = make_notifier(tenants=TENANTS)
    with Session(engine) as session, session.begin():
        deferred = confirm(session, notify, place(session))
        notify.close()
    assert deferred.state is DeferredState.FAILED  # type: ignore[attr-defined]
    with Session(engine) as session, session.begin():
        place(session)
        with pytest.raises(EnqueueError):
            confirm(session, notify, place(session))


def test_without_a_transaction_there_is_nothing_to_wait_for(
    engine: Engine, notify: TestNotifier
) -> None:
    with Session(engine) as session:
        with pytest.raises(InvalidRequestError, match="no transaction"):
            defer(session, lambda: None)
        with pytest.raises(InvalidRequestError, match="no transaction"):
            after_commit(session, notify).send_email(
                to_email="a@example.com", subject="s", body="b", tenant_id="acme"
            )


def test_without_sqlalchemy_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.delitem(sys.modules, "tenant_notify.contrib.sqlalchemy")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(MissingDependencyError, match=r"tenant-notify\[sqlalchemy\]"):
        importlib.import_module("tenant_notify.contrib.sqlalchemy")
