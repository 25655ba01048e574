"""A tenant's callback endpoint on loopback that verifies every request the way a
receiver following Standard Webhooks would: with the ``standardwebhooks`` package's
own ``Webhook.verify`` (signature over id, timestamp and body, timestamp within
five minutes). It can be told to answer with an error status a number of times
first (:meth:`CallbackReceiver.fail_next`)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import standardwebhooks

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass(frozen=True)
class Callback:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    error: str | None
    answered: int
    at: float

    @property
    def payload(self) -> Any:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return str(self.payload["type"])


class CallbackReceiver:
    def __init__(self, secret: str = SECRET) -> None:
        self.webhook = standardwebhooks.Webhook(secret)
        self.requests: list[Callback] = []
        self._answers: deque[tuple[int, dict[str, str]]] = deque()
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    receiver.webhook.verify(body, headers)
                    verified, error = True, None
                except standardwebhooks.webhooks.WebhookVerificationError as err:
                    verified, error = False, str(err)
                with receiver._changed:
                    status, extra = receiver._answers.popleft() if receiver._answers else (204, {})
                    if not verified:
                        status = 400
                    receiver.requests.append(
                        Callback(headers, body, verified, error, status, time.monotonic())
                    )
                    receiver._changed.notify_all()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tenant-notify"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail_next(self, status: int, times: int = 1, **headers: str) -> None:
        """Answer the next ``times`` requests with ``status`` (and ``headers``)."""
        with self._changed:
            self._answers.extend([(status, headers)] * times)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Callback]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.requests)} of {count} callbacks arrived")
                self._changed.wait(left)
            return list(self.requests)

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
