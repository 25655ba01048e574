"""Send after commit: notifications that wait for the surrounding SQLAlchemy transaction.

``pip install 'tenant-notify[sqlalchemy]'``, then::

    from tenant_notify.contrib.sqlalchemy import after_commit

    with Session(engine) as session, session.begin():
        order = Order(...)
        session.add(order)
        session.flush()                                   # the order has its id now
        after_commit(session, notify).send_order_confirmation(
            order_id=order.id, customer_email=order.email, order_total=order.total,
            currency="EUR", tenant_id=order.tenant_id,
        )
    # committed: the confirmation is submitted now; had the block raised, nothing would be.

:func:`after_commit` checks the arguments *now*, exactly as the notifier method
would (bad address, unknown tenant, missing template, context that cannot travel),
so bad input still raises where it is written, and queues nothing until the
transaction commits. :func:`defer` takes any zero-argument callable instead and
checks nothing until it runs.

What happens to a deferred send:

* the session's outermost transaction commits: it is submitted to the notifier,
  in the order the sends were deferred, right after the commit;
* that transaction rolls back, or the session is closed without committing: it
  is dropped;
* it was deferred inside a SAVEPOINT (``session.begin_nested()``): a rollback to
  that savepoint drops it; releasing the savepoint hands it to the enclosing
  transaction, so it still waits for the outermost commit.

A send that fails when it is submitted after the commit (the broker is down, the
notifier was closed) cannot undo the commit. It is logged as
``deferred_send_failed`` and kept on the :class:`DeferredSend` handle; the other
sends go ahead and ``session.commit()`` does not raise. Hosts that need a send to
survive a crash between the commit and the submit want an outbox table instead.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from ..errors import MissingDependencyError
from ..log import get_logger
from ..models import Receipt
from ..notifier import Notifier

try:
    from sqlalchemy import event
    from sqlalchemy.exc import InvalidRequestError
    from sqlalchemy.orm import Session, SessionTransaction
except ModuleNotFoundError as err:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError("sqlalchemy", "sqlalchemy") from err

__all__ = ["AfterCommit", "DeferredSend", "DeferredState", "after_commit", "defer"]

_INFO_KEY = "tenant_notify.deferred_sends"


class DeferredState(enum.StrEnum):
    """Where a deferred send is."""

    PENDING = "pending"  #: waiting for the transaction to commit
    SUBMITTED = "submitted"  #: handed to the notifier after the commit
    DROPPED = "dropped"  #: the transaction (or its savepoint) rolled back
    FAILED = "failed"  #: submitting after the commit raised; see ``error``


class DeferredSend:
    """A send waiting for a commit; what :func:`defer` and :func:`after_commit` return.

    Attributes:
        description: What will be sent (``"send_order_confirmation"``, or the callable's name).
        state: A :class:`DeferredState`.
        receipt: The notifier's receipt once submitted (when the callable returned one).
        error: The exception raised when it was submitted, if it failed.
    """

    __slots__ = ("_send", "description", "error", "receipt", "state")

    def __init__(self, send: Callable[[], Any], description: str) -> None:
        self._send = send
        self.description = description
        self.state = DeferredState.PENDING
        self.receipt: Receipt | None = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            result = self._send()
        except Exception as err:
            self.state = DeferredState.FAILED
            self.error = err
            get_logger().error(
                "deferred_send_failed",
                send=self.description,
                error_type=type(err).__name__,
                tenant_id=getattr(err, "tenant_id", None),
            )
        else:
            self.state = DeferredState.SUBMITTED
            self.receipt = result if isinstance(result, Receipt) else None

    def _drop(self) -> None:
        self.state = DeferredState.DROPPED

    def __repr__(self) -> str:
        return f"<DeferredSend {self.description} {self.state.value}>"


class _Pending:
    """The deferred sends of one session, each tied to the transaction it waits for."""

    def __init__(self) -> None:
        # Insertion order is send order; the value is the innermost transaction
        # (a savepoint, or the root) whose outcome decides the send.
        self.sends: dict[DeferredSend, SessionTransaction] = {}

    def add(self, send: DeferredSend, transaction: SessionTransaction) -> None:
        self.sends[send] = transaction

    def on_commit(self, session: Session) -> None:
        savepoint = session.get_nested_transaction()
        if savepoint is not None:
            # A savepoint was released: its sends now wait for the enclosing transaction.
            parent = savepoint.parent
            assert parent is not None  # a savepoint always has an enclosing transaction
            for send, transaction in self.sends.items():
                if transaction is savepoint:
                    self.sends[send] = parent
            return
        sends, self.sends = list(self.sends), {}
        for send in sends:
            send._run()

    def on_end(self, session: Session, ended: SessionTransaction) -> None:
        # Runs after on_commit for a commit (which has taken the sends away), so
        # whatever is still tied to the ended transaction was rolled back or closed.
        for send in [s for s, t in self.sends.items() if t is ended]:
            del self.sends[send]
            send._drop()


def _pending(session: Session) -> _Pending:
    pending = session.info.get(_INFO_KEY)
    if pending is None:
        pending = session.info[_INFO_KEY] = _Pending()
        event.listen(session, "after_commit", pending.on_commit)
        event.listen(session, "after_transaction_end", pending.on_end)
    assert isinstance(pending, _Pending)
    return pending


def _current_transaction(session: Session) -> SessionTransaction:
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        raise InvalidRequestError(
            "no transaction is in progress on this session, so there is no commit to wait "
            "for: defer sends inside session.begin(), or after the session has done work"
        )
    return transaction


def defer(session: Session, send: Callable[[], Any], *, description: str = "") -> DeferredSend:
    """Call ``send`` after the session's transaction commits; never if it rolls back.

    ``send`` is called with no arguments (a ``lambda`` or ``functools.partial``
    around a notifier method). Nothing about it is checked until then: prefer
    :func:`after_commit`, which checks the arguments now.

    Args:
        session: A Session with a transaction in progress.
        send: What to call after the commit.
        description: For the log and ``repr`` (default: the callable's name).

    Raises:
        sqlalchemy.exc.InvalidRequestError: no transaction is in progress.
    """
    transaction = _current_transaction(session)
    name = description or getattr(send, "__name__", None) or repr(send)
    deferred = DeferredSend(send, name)
    _pending(session).add(deferred, transaction)
    return deferred


class AfterCommit:
    """The notifier's send methods, each checking its arguments now and sending
    after the session's transaction commits. Build it with :func:`after_commit`.

    Every public ``send`` / ``send_*`` method of the notifier (including a
    subclass's own) is available with the same arguments, and returns a
    :class:`DeferredSend` instead of a receipt (``.receipt`` after the commit).
    """

    def __init__(self, session: Session, notifier: Notifier) -> None:
        self._session = session
        self._notifier = notifier

    def __getattr__(self, name: str) -> Callable[..., DeferredSend]:
        if not (name == "send" or name.startswith("send_")):
            raise AttributeError(name)
        if not callable(getattr(self._notifier, name, None)):
            raise AttributeError(f"{type(self._notifier).__name__} has no method {name!r}")

        def deferred_send(*args: Any, **kwargs: Any) -> DeferredSend:
            return self._defer(name, args, kwargs)

        deferred_send.__name__ = name
        return deferred_send

    def _defer(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> DeferredSend:
        transaction = _current_transaction(self._session)
        submit = _capture(self._notifier, name, args, kwargs)
        deferred = DeferredSend(submit, name)
        _pending(self._session).add(deferred, transaction)
        return deferred

    def __repr__(self) -> str:
        return f"<AfterCommit {self._notifier!r}>"


def after_commit(session: Session, notifier: Notifier) -> AfterCommit:
    """Send through ``notifier`` after ``session``'s transaction commits.

    ``after_commit(session, notify).send_welcome_email(user_email=..., ...)`` runs
    every check ``notify.send_welcome_email`` would (raising the same
    :class:`~tenant_notify.errors.ValidationError`, ``UnknownTenantError``,
    ``TemplateNotFoundError`` or ``ConfigurationError``) and submits the
    notification once the outermost transaction commits. Dropped on rollback.
    The idempotency key (a send's own default too) applies when it is submitted.

    Raises:
        sqlalchemy.exc.InvalidRequestError: (when a send is deferred) no
            transaction is in progress on ``session``.
    """
    return AfterCommit(session, notifier)


def _capture(
    notifier: Notifier, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], Receipt]:
    """Run the notifier's method's checks now (:meth:`Notifier.build`); return
    what submits the notification it built."""
    notification = notifier.build(getattr(notifier, name), *args, **kwargs)
    return lambda: notifier.submit(notification)
