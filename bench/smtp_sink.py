"""An SMTP sink for throughput benchmarks: aiosmtpd in its own process, counting.

tests/smtp_server.py parses every message it receives (the tests look inside
them), which costs the server more CPU per message than the senders being
measured. This sink only counts accepted messages and notes when the first and
the last arrived, in shared memory, so the measurement is about the senders.
"""

from __future__ import annotations

import multiprocessing
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class _Counter:
    def __init__(self, count: Any, first: Any, last: Any, pipelining: bool) -> None:
        self.count, self.first, self.last = count, first, last
        self.pipelining = pipelining

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.perf_counter()
        with self.count.get_lock():
            if self.count.value == 0:
                self.first.value = now
            self.count.value += 1
            self.last.value = now
        return "250 2.0.0 OK"


def _latent_smtp(latency: float) -> type:
    """aiosmtpd's SMTP session with every reply held ``latency`` seconds on its way out.

    A model of a server in another network: each reply reaches the client
    ``latency`` after the server read the command it answers (the round trip),
    and the server goes on reading meanwhile. Commands that arrive together (a
    client's PIPELINING group, RFC 2920) are answered together ``latency`` later;
    a client that waits for each reply before its next command pays ``latency``
    per command. (Sleeping in the handler's hooks instead, as this sink did
    before, serialises the session: aiosmtpd reads the next command only after
    the hook returns, so a pipelined group of MAIL, RCPT and DATA cost the sum of
    its replies' delays, as from a slow server, not one round trip; and the 354
    after DATA, which has no hook, came at once.)
    """
    import asyncio
    import collections

    from aiosmtpd.smtp import SMTP

    class LatentSMTP(SMTP):  # type: ignore[misc]
        _held: collections.deque[tuple[float, bytes]]

        async def push(self, status: Any) -> None:
            response = status if isinstance(status, bytes) else status.encode("utf-8")
            if response.startswith(b"221 "):  # QUIT: the session ends after it
                await asyncio.sleep(latency)
                await super().push(response)
                return
            loop = asyncio.get_running_loop()
            if not hasattr(self, "_held"):
                self._held = collections.deque()
            due = loop.time() + latency
            self._held.append((due, response + b"\r\n"))
            loop.call_at(due, self._release)

        def _release(self) -> None:
            # Everything due goes out, oldest first (one timer per reply; a timer
            # may find its reply sent by an earlier one that fired in the same tick).
            now = asyncio.get_running_loop().time()
            held, out = self._held, []
            while held and held[0][0] <= now:
                out.append(held.popleft()[1])
            if out and self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(out))

    return LatentSMTP


def _serve(
    port: Any,
    ready: Any,
    stop: Any,
    count: Any,
    first: Any,
    last: Any,
    tls: str,
    pipelining: bool,
    latency: float = 0.0,
) -> None:
    from aiosmtpd.controller import Controller

    kwargs: dict[str, Any] = {}
    if tls:
        cert, key = tls.split("|")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        kwargs["tls_context"] = context
    with socket.socket() as probe:  # a free port (aiosmtpd's start-up check needs a real one)
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    controller_class: Any = Controller
    if latency:
        session_class = _latent_smtp(latency)

        class LatentController(Controller):  # type: ignore[misc]
            def factory(self) -> Any:
                return session_class(self.handler, **self.SMTP_kwargs)

        controller_class = LatentController
    controller = controller_class(
        _Counter(count, first, last, pipelining),
        hostname="127.0.0.1",
        port=free,
        server_hostname="localhost",
        ready_timeout=10,
        **kwargs,
    )
    controller.start()
    port.value = free
    ready.set()
    stop.wait()
    controller.stop()


class SmtpSink:
    """Start with ``SmtpSink(cert_dir=...)`` for STARTTLS; ``port``, ``count``, ``rate()``.

    ``pipelining=True`` offers PIPELINING (RFC 2920) in the EHLO reply, as
    production mail servers do; aiosmtpd itself does not offer it. ``latency``:
    seconds between the server reading a command and its reply reaching the
    client, for every reply, the greeting and the 354 after DATA included (a
    relay in another network: see :func:`_latent_smtp`). Not with TLS.
    """

    def __init__(
        self, cert_dir: Path | None = None, *, pipelining: bool = False, latency: float = 0.0
    ) -> None:
        self.cert_file: Path | None = None
        tls = ""
        if cert_dir is not None and latency:
            raise ValueError("the latency model holds replies back, which STARTTLS cannot take")
        if cert_dir is not None:
            if str(ROOT) not in sys.path:
                sys.path.insert(0, str(ROOT))  # for tests.smtp_server
            from tests.smtp_server import make_self_signed_cert

            cert, key = make_self_signed_cert(cert_dir)
            self.cert_file, tls = cert, f"{cert}|{key}"
        context = multiprocessing.get_context("spawn")
        self._port = context.Value("i", 0)
        self._count = context.Value("i", 0)
        self._first = context.Value("d", 0.0)
        self._last = context.Value("d", 0.0)
        self._ready, self._stop = context.Event(), context.Event()
        self._process = context.Process(
            target=_serve,
            args=(
                *(self._port, self._ready, self._stop),
                *(self._count, self._first, self._last, tls, pipelining, latency),
            ),
            daemon=True,
        )

    def __enter__(self) -> SmtpSink:
        self._process.start()
        if not self._ready.wait(30):
            raise RuntimeError("the SMTP sink did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)

    @property
    def pid(self) -> int:
        """The sink's process, for measuring its CPU."""
        assert self._process.pid is not None
        return self._process.pid

    @property
    def port(self) -> int:
        return int(self._port.value)

    @property
    def count(self) -> int:
        return int(self._count.value)

    def reset(self) -> None:
        with self._count.get_lock():
            self._count.value = 0

    def rate(self, expected: int, timeout: float = 300) -> float:
        """Wait for ``expected`` messages; return messages/s from the first to the last."""
        deadline = time.monotonic() + timeout
        while self.count < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {expected} arrived")
            time.sleep(0.05)
        return (expected - 1) / (self._last.value - self._first.value)
