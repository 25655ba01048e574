"""The hand-written Celery tasks bench/bench_celery.py compares the library with.

Both delivery tasks render the library's own templates with plain Jinja2
(bench/handwritten.py), so they send the same email as the library:

* ``handwritten.send_order_confirmation``, **the seed's way**: the email built with
  ``email.message.EmailMessage`` (default policy) and sent over a new SMTP
  connection per message;
* ``handwritten.send_order_confirmation_fair``, **a fair hand-written task**: the
  fastest stdlib MIME and one SMTP connection held per worker process (per thread
  with the threads pool; reopened once if the server dropped it while idle);
* ``handwritten.send_order_confirmation_http``, the same email as one POST to a
  Postmark-shaped API (``BENCH_HTTP_URL``) on a keep-alive client per process.

``handwritten.empty`` is no delivery at all: it only counts itself in Redis (one
round trip), so a worker draining it shows what Celery itself can do per second
on this machine, the ceiling for any task.

Configured from the environment (``BENCH_BROKER_URL``, ``BENCH_QUEUE``,
``BENCH_SMTP_PORT``, ``BENCH_SMTP_CA`` for STARTTLS, ``BENCH_REDIS_URL``) by
bench/bench_celery.py.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import threading
import time
from typing import Any

from celery import Celery
from handwritten import SENDERS, Renderer, fast_mime, seed_message

QUEUE = os.environ.get("BENCH_QUEUE", "bench_handwritten")
_renderer = Renderer()  # compiled in the worker's main process, inherited by the pool


def _connect() -> smtplib.SMTP:
    conn = smtplib.SMTP("127.0.0.1", int(os.environ["BENCH_SMTP_PORT"]), timeout=10)
    if os.environ.get("BENCH_SMTP_CA"):
        conn.starttls(context=ssl.create_default_context(cafile=os.environ["BENCH_SMTP_CA"]))
    return conn


def _order(order_id: str, customer_email: str, order_total: str, currency: str) -> dict[str, Any]:
    from decimal import Decimal

    return {
        "order_id": order_id,
        "customer_email": customer_email,
        "order_total": Decimal(order_total),
        "currency": currency,
    }


def send_order_confirmation(
    order_id: str, customer_email: str, order_total: str, currency: str, tenant_id: str
) -> None:
    """The seed's way: EmailMessage, a new SMTP connection per message."""
    parts = _renderer.render(tenant_id, _order(order_id, customer_email, order_total, currency))
    message = seed_message(tenant_id, customer_email, *parts)
    with _connect() as smtp:
        smtp.send_message(message)


# One connection held per worker thread: a prefork process has one thread, the
# threads pool many, and an smtplib connection serves one conversation at a time.
_held = threading.local()


def send_order_confirmation_fair(
    order_id: str, customer_email: str, order_total: str, currency: str, tenant_id: str
) -> None:
    """Fair: the fastest stdlib MIME, one connection held per worker process (thread)."""
    parts = _renderer.render(tenant_id, _order(order_id, customer_email, order_total, currency))
    raw = fast_mime(tenant_id, customer_email, *parts)
    sender = SENDERS[tenant_id][0]
    for attempt in (1, 2):
        if getattr(_held, "conn", None) is None:
            _held.conn = _connect()
        try:
            _held.conn.sendmail(sender, [customer_email], raw)
            return
        except smtplib.SMTPServerDisconnected:
            _held.conn = None
            if attempt == 2:
                raise


_http: Any = None
_http_lock = threading.Lock()


def send_order_confirmation_http(
    order_id: str, customer_email: str, order_total: str, currency: str, tenant_id: str
) -> None:
    """One provider call: the same email POSTed to a Postmark-shaped API (BENCH_HTTP_URL),
    on one keep-alive httpx client per worker process."""
    global _http
    if _http is None:
        import httpx

        with _http_lock:
            if _http is None:
                _http = httpx.Client(
                    base_url=os.environ["BENCH_HTTP_URL"],
                    headers={"X-Postmark-Server-Token": "bench"},
                    limits=httpx.Limits(max_connections=128, max_keepalive_connections=128),
                    timeout=30,
                )
    subject, text, html = _renderer.render(
        tenant_id, _order(order_id, customer_email, order_total, currency)
    )
    address, name = SENDERS[tenant_id]
    reply = _http.post(
        "/email",
        json={
            "From": f"{name} <{address}>",
            "To": customer_email,
            "Subject": subject,
            "TextBody": text,
            "HtmlBody": html,
        },
    )
    reply.raise_for_status()


_redis: Any = None


def empty(i: int) -> None:
    """Count this task: how many ran, when the first and the last ran."""
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    now, key = time.time(), f"bench:empty:{QUEUE}"
    _redis.pipeline(transaction=False).set(f"{key}:first", now, nx=True).set(
        f"{key}:last", now
    ).incr(f"{key}:count").execute()


def make_app(*, confirms: bool, queue: str = QUEUE) -> Celery:
    app = Celery("handwritten", broker=os.environ.get("BENCH_BROKER_URL", "amqp://localhost//"))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_default_queue=queue,
        task_soft_time_limit=60,
        task_time_limit=90,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
    )
    if confirms:
        app.conf.broker_transport_options = {"confirm_publish": True}
    tasks = (send_order_confirmation, send_order_confirmation_fair, send_order_confirmation_http)
    for task in (*tasks, empty):
        app.task(name=f"handwritten.{task.__name__}", acks_late=True, shared=False)(task)
    return app


app = make_app(confirms=os.environ.get("BENCH_CONFIRMS") == "1")
