"""The baseline bench/bench_celery.py compares with: a hand-written Celery task.

What a host application typically writes by hand: a task with the send's
arguments that renders a text and an HTML part with Jinja2 (the same kind of
email the library sends) and sends it over a new SMTP connection per message.
Configured from the environment (``BENCH_BROKER_URL``, ``BENCH_QUEUE``,
``BENCH_SMTP_PORT``, ``BENCH_SMTP_CA`` for STARTTLS, ``BENCH_REDIS_URL``) by
bench/bench_celery.py.

``handwritten.empty`` is no delivery at all: it only counts itself in Redis (one
round trip), so a worker draining it shows what Celery itself can do per second
on this machine, the ceiling for any task.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import jinja2
from celery import Celery

QUEUE = os.environ.get("BENCH_QUEUE", "bench_handwritten")

_TEXT = jinja2.Template(
    "Hello,\n\nthank you for your order {{ order_id }} at {{ shop }}.\n"
    "Total: {{ order_total }} {{ currency }}\n\nQuestions? Reply to this email.\n"
)
_HTML = jinja2.Template(
    "<!doctype html><html><body><h1>Thank you for your order</h1>"
    "<p>Order <b>{{ order_id }}</b> at {{ shop }}.</p>"
    "<p>Total: {{ order_total }} {{ currency }}</p>"
    "<p>Questions? Reply to this email.</p></body></html>",
    autoescape=True,
)


def send_order_confirmation(
    order_id: str, customer_email: str, order_total: str, currency: str, tenant_id: str
) -> None:
    """Render text and HTML, build the email, send it over a new SMTP connection."""
    context = {
        "order_id": order_id,
        "order_total": order_total,
        "currency": currency,
        "shop": tenant_id.title(),
    }
    message = EmailMessage()
    message["From"] = f"{tenant_id.title()} <orders@{tenant_id}.test>"
    message["To"] = customer_email
    message["Subject"] = f"Your order {order_id}"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=f"{tenant_id}.test")
    message.set_content(_TEXT.render(context))
    message.add_alternative(_HTML.render(context), subtype="html")
    with smtplib.SMTP("127.0.0.1", int(os.environ["BENCH_SMTP_PORT"]), timeout=10) as smtp:
        if os.environ.get("BENCH_SMTP_CA"):
            smtp.starttls(context=ssl.create_default_context(cafile=os.environ["BENCH_SMTP_CA"]))
        smtp.send_message(message)


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


def make_app(*, confirms: bool) -> Celery:
    app = Celery("handwritten", broker=os.environ.get("BENCH_BROKER_URL", "amqp://localhost//"))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_default_queue=QUEUE,
        task_soft_time_limit=60,
        task_time_limit=90,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
    )
    if confirms:
        app.conf.broker_transport_options = {"confirm_publish": True}
    app.task(name="handwritten.send_order_confirmation", acks_late=True, shared=False)(
        send_order_confirmation
    )
    app.task(name="handwritten.empty", acks_late=True, shared=False)(empty)
    return app


app = make_app(confirms=os.environ.get("BENCH_CONFIRMS") == "1")
