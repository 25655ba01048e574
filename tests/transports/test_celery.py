"""The celery transport without services: settings, the message, the task in a worker.

The worker-side tests run the registered task through Celery's own machinery
(``Task.apply`` with the message's headers) on kombu's in-memory broker, with the
memory provider and in-memory stores; the real broker, Redis and worker are in
tests/integration.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

pytest.importorskip("celery")

from tenant_notify import DeliveryState, Notifier, load_settings
from tenant_notify.dispatcher import Dispatcher
from tenant_notify.errors import ConfigurationError
from tenant_notify.models import Channel, DeliveryResult, Notification
from tenant_notify.stores import MemoryIdempotencyStore, MemoryStatusStore
from tenant_notify.tenants import StaticTenantResolver
from tenant_notify.testing import ScriptedProvider
from tenant_notify.transports.celery import (
    TASK_NAME,
    CeleryTransport,
    WorkerRuntime,
    app_config,
    build_message,
    create_app,
)


def notification(**changes: Any) -> Notification:
    fields: dict[str, Any] = {
        "id": "0123456789abcdef0123456789abcdef",
        "tenant_id": "acme",
        "kind": "email",
        "channel": Channel.EMAIL,
        "to": "jane.doe@example.com",
        "context": {"subject": "Hello", "body": "Hi", "total": {"__tn__": "decimal", "v": "9.9"}},
    }
    fields.update(changes)
    return Notification(**fields)


def test_settings_defaults_and_environment_fallbacks(monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    settings = load_settings({})
    assert settings.celery.broker_url == "amqp://guest:guest@localhost:5672//"
    assert settings.celery.result_backend is None
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://u:secret@rabbit:5672//")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://redis:6379/1")
    settings = load_settings({})
    assert settings.celery.broker_url == "amqp://u:secret@rabbit:5672//"
    assert settings.celery.result_backend == "redis://redis:6379/1"
    assert "secret" not in repr(settings)  # URLs may hold passwords
    # An explicit setting wins over Celery's variables.
    explicit = load_settings({"celery": {"broker_url": "amqp://other//"}})
    assert explicit.celery.broker_url == "amqp://other//"


def test_without_celery_installed_the_extra_is_named(monkeypatch):
    import sys

    from tenant_notify.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "kombu", None)
    with pytest.raises(MissingDependencyError, match=r"tenant-notify\[celery\]"):
        Notifier.from_settings({"transport": "celery"})


def test_settings_are_checked():
    with pytest.raises(ConfigurationError, match="time_limit"):
        load_settings({"celery": {"soft_time_limit": 60, "time_limit": 30}})
    settings = load_settings({"transport": "celery", "idempotency": {"lease": 2}})
    with pytest.raises(ConfigurationError, match=r"idempotency\.lease"):
        CeleryTransport.from_settings(None, settings)  # type: ignore[arg-type]


def test_the_message_is_a_protocol_2_json_task_with_masked_reprs():
    n = notification()
    body, headers = build_message(n, attempt=3, origin="1@host")
    args, kwargs, embed = json.loads(body)
    assert args == [n.to_dict()] and kwargs == {}
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert headers["task"] == TASK_NAME and headers["lang"] == "py"
    assert headers["id"] == headers["root_id"] == n.id
    assert headers["retries"] == 2 and headers["eta"] is None
    assert headers["tenant_id"] == "acme"
    assert "jane.doe" not in headers["argsrepr"] + headers["kwargsrepr"]
    assert headers["argsrepr"] == "('email', tenant='acme', to='j***@example.com')"
    assert "jane.doe@example.com" in body.decode()  # the worker needs the address itself
    for secret_ish in ("password", "api_key", "token"):
        assert secret_ish not in body.decode()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"tenant_id": 'glo"bex\\ café', "kind": "order_confirmation", "to": "+4915112345678"},
        {"channel": Channel.SMS, "idempotency_key": "order:ü€\n1", "locale": "de-AT"},
        {"context": {"items": [{"name": "Ünïcode \u2028 \x00", "q": 2, "p": 1.5}], "n": None}},
        {"context": {}, "idempotency_key": "k"},
    ],
)
def test_the_task_body_is_the_json_encoders_text_of_the_notification(changes):
    from tenant_notify._json import compact
    from tenant_notify.models import EmailOptions
    from tenant_notify.transports.celery.message import _EMBED, task_body

    n = notification(**changes)
    with_options = notification(
        **changes, options=EmailOptions.build(to_name="Zoë", tags=["a", "b"], metadata={"k": "v"})
    )
    for each in (n, with_options):
        # The body written field by field is what json.dumps writes for to_dict().
        assert task_body(each) == compact([[each.to_dict()], {}, _EMBED]).encode("utf-8")
        assert task_body(each) == json.dumps(
            [[each.to_dict()], {}, _EMBED], separators=(",", ":")
        ).encode("utf-8")


def test_app_configuration_is_the_reliable_one():
    settings = load_settings({"celery": {"queue": "mail", "prefetch_multiplier": 2}})
    conf = app_config(settings.celery)
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert conf["enable_utc"] and conf["timezone"] == "UTC"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    # The library confirms what it publishes itself; Celery's own publishing is
    # task events, which must not wait for the broker on every flush.
    assert "confirm_publish" not in conf.get("broker_transport_options", {})
    assert conf["worker_prefetch_multiplier"] == 2
    assert conf["task_soft_time_limit"] < conf["task_time_limit"]
    # Task events are off unless asked for, as in Celery (a large share of a
    # worker's CPU); Flower switches them on while it watches.
    assert not conf["worker_send_task_events"] and not conf["task_send_sent_event"]
    events = app_config(load_settings({"celery": {"send_events": True}}).celery)
    assert events["worker_send_task_events"] and events["task_send_sent_event"]
    assert conf["task_default_queue"] == "mail"
    assert conf["result_expires"] == 86_400


def memory_settings(tmp_path, **celery: Any) -> dict[str, Any]:
    return {
        "transport": "celery",
        "email": {"provider": "memory", "outbox": "celery-unit"},
        "sms": {"provider": "memory", "outbox": "celery-unit"},
        "retry": {"initial_delay": 0.5, "jitter": 0, "max_attempts": 2},
        "celery": {"broker_url": "memory://", "queue": f"q{tmp_path.name[-6:]}", **celery},
        "tenants": {
            "acme": {"name": "Acme", "email_from": "orders@acme.test"},
            "globex": {"name": "Globex", "email_from": "hello@globex.test"},
        },
    }


@pytest.fixture
def worker_app(tmp_path):
    """A Celery app whose task runs a dispatcher on memory stores and the memory broker."""
    table = memory_settings(tmp_path)
    settings = load_settings(table)
    app = create_app(settings)
    provider = ScriptedProvider(outbox="celery-unit")
    table["email"] = table["sms"] = {"provider": provider}
    dispatcher = Dispatcher.from_settings(
        load_settings(table),
        tenants=StaticTenantResolver(settings.tenants),
        status_store=MemoryStatusStore(),
        idempotency_store=MemoryIdempotencyStore(),
    )
    runtime = WorkerRuntime(settings, dispatcher)
    app.conf["tenant_notify_runtime_factory"] = lambda: runtime
    app.provider = provider
    app.runtime = runtime
    yield app
    runtime.publisher.close(timeout=1)
    dispatcher.close()


def run(app: Any, n: Notification, **headers: Any) -> Any:
    return app.tasks[TASK_NAME].apply(
        args=[n.to_dict()],
        task_id=n.id,
        headers={"tenant_id": n.tenant_id, **headers},
    )


def test_the_task_delivers_with_the_tenant_bound_and_cleared_after(worker_app):
    seen: list[dict[str, Any]] = []

    class Recording(ScriptedProvider):
        def _run(self, message: Any) -> DeliveryResult:
            seen.append(structlog.contextvars.get_contextvars())
            return super()._run(message)

    provider = Recording(outbox="celery-unit")
    dispatcher = worker_app.runtime.dispatcher
    dispatcher.providers = type(dispatcher.providers)(
        {Channel.EMAIL: {"provider": provider}, Channel.SMS: {"provider": provider}}
    )
    for tenant in ("acme", "globex"):
        result = run(worker_app, notification(id=f"id-{tenant}", tenant_id=tenant))
        assert result.get()["state"] == "sent"
    assert [s["tenant_id"] for s in seen] == ["acme", "globex"]
    assert structlog.contextvars.get_contextvars() == {}
    assert [str(m.from_addr.email) for m in provider.outbox.emails] == [
        "orders@acme.test",
        "hello@globex.test",
    ]


def test_a_message_whose_header_names_another_tenant_is_not_delivered(worker_app):
    result = run(worker_app, notification(), tenant_id="globex")
    assert result.get() == {"state": "rejected"}
    assert worker_app.provider.attempts == []


def test_a_redelivered_message_is_not_sent_twice(worker_app):
    n = notification(id="redelivered")
    assert run(worker_app, n).get()["state"] == "sent"
    assert run(worker_app, n).get()["state"] == "sent"
    assert len(worker_app.provider.attempts) == 1


def test_a_retry_is_published_with_a_countdown(worker_app, monkeypatch):
    worker_app.provider._script = ["transient"]
    published: list[dict[str, Any]] = []
    runtime = worker_app.runtime
    monkeypatch.setattr(runtime.publisher, "publish", lambda n, **kw: published.append(kw))
    result = run(worker_app, notification(id="retry-me"))
    assert result.get() == {"state": "retrying", "attempt": 1}
    [kwargs] = published
    assert kwargs["attempt"] == 2 and kwargs["wait"] is True
    assert kwargs["countdown"] == pytest.approx(0.5)
    assert runtime.dispatcher.status_store.get("retry-me").state is DeliveryState.RETRYING
