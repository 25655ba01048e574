"""The baseline of the pacing scenario: a hand-written Celery task, the seed's way.

One task, one provider call: it posts the email to the (fake) SendGrid API and,
on a 429, retries itself after the reset the reply names (``X-RateLimit-Reset``,
else ``Retry-After``), as a careful hand-writer honouring the provider would.
Each task meets the limit on its own: nothing tells the others.

Configured from the environment by bench/_scheduler_pacing.py:
``BENCH_QUEUE``, ``BENCH_BROKER_URL``, ``BENCH_API_URL``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
from celery import Celery

QUEUE = os.environ.get("BENCH_QUEUE", "bench_pacing_hand")
app = Celery("pacing_baseline", broker=os.environ.get("BENCH_BROKER_URL"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
)
_client: httpx.Client | None = None


def _http() -> httpx.Client:
    global _client
    if _client is None:
        _client = httpx.Client(base_url=os.environ["BENCH_API_URL"], timeout=10)
    return _client


@app.task(bind=True, name="pacing.send", max_retries=10)
def send(self: Any, i: int) -> str:
    body = {
        "personalizations": [{"to": [{"email": f"user{i}@example.com"}]}],
        "from": {"email": "orders@acme.test", "name": "Acme Shop"},
        "subject": f"Order {i}",
        "content": [{"type": "text/plain", "value": "Thank you for your order."}],
    }
    reply = _http().post(
        "/v3/mail/send", json=body, headers={"Authorization": "Bearer SG.bench-pacing"}
    )
    if reply.status_code == 429:
        reset = reply.headers.get("x-ratelimit-reset")
        wait = float(reset) - time.time() if reset else float(reply.headers.get("retry-after", 1))
        raise self.retry(countdown=max(0.0, wait))
    reply.raise_for_status()
    return "sent"
