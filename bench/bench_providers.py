"""Provider throughput against hand-written baselines, into servers on loopback.

Run: ``python bench/bench_providers.py`` (needs the ``test`` extra: aiosmtpd, httpx). Prints
Markdown tables for docs/benchmarks.md. Every figure is measured in the same run, one message at a
time from one thread, against a server running in a separate process (so the client's figures
are not shared with the server's interpreter lock):

SMTP, into an aiosmtpd server that accepts everything:

* ``SmtpProvider.send(message)``: builds the MIME message (Message-ID, Date, encodings) and
  sends it over the connection it keeps open per thread.
* (a) ``smtplib``, a new connection per message (connect, EHLO, MAIL, RCPT, DATA, QUIT),
  sending bytes built beforehand: what a naive relay client does.
* (b) ``smtplib`` over one held connection, sending the same bytes built beforehand: the floor.

SendGrid, into a minimal HTTP/1.1 keep-alive server that answers 202 like /v3/mail/send:

* ``SendGridProvider.send(message)``: builds the JSON body, posts it, reads X-Message-Id.
* raw ``httpx``: one keep-alive ``httpx.Client`` posting the identical body bytes, built beforehand.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import shutil
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import structlog

from tenant_notify._mime import build_mime, mime_bytes
from tenant_notify.models import Address, EmailMessage
from tenant_notify.providers.sendgrid import SendGridProvider
from tenant_notify.providers.smtp import SmtpProvider

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.smtp_server import make_self_signed_cert

API_KEY = "SG.bench.a2V5"


def message(n: int) -> EmailMessage:
    return EmailMessage(
        from_addr=Address("orders@acme.test", "Acme Shop"),
        to=(Address("jane@example.com", "Jane Doe"),),
        subject=f"Your order A-{n} is confirmed",
        text=f"Hello Jane,\n\nthanks for order A-{n}: 2 items, 99.99 USD.\n\nAcme Shop\n" * 3,
        html=f"<p>Hello Jane,</p><p>thanks for order <b>A-{n}</b>: 2 items, 99.99 USD.</p>" * 3,
        reply_to=Address("help@acme.test"),
        notification_id=f"{n:032x}",
        tenant_id="acme",
        kind="order_confirmation",
    )


# --- servers (each in its own process) ------------------------------------------------


def _smtp_server(port_out: Any, stop: Any, cert: str | None = None, key: str | None = None) -> None:
    from aiosmtpd.controller import Controller

    class Accept:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 2.0.0 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options: dict[str, Any] = {}
    if cert and key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        options = {"tls_context": context, "require_starttls": True}
    controller = Controller(
        Accept(), hostname="127.0.0.1", port=port, server_hostname="localhost", **options
    )
    controller.start()
    port_out.send(controller.port)
    stop.wait()
    controller.stop()


class _HttpProtocol(asyncio.Protocol):
    """Just enough HTTP/1.1: read a request with Content-Length, answer 202, keep alive."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            self.count += 1
            self.transport.write(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n"
                b"X-Message-Id: bench" + str(self.count).encode() + b"\r\n\r\n"
            )


def _http_server(port_out: Any, stop: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_HttpProtocol, "127.0.0.1", 0)
        port_out.send(server.sockets[0].getsockname()[1])
        await loop.run_in_executor(None, stop.wait)
        server.close()

    asyncio.run(main())


class Server:
    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        receive, send = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=target, args=(send, self._stop, *args), daemon=True)
        self._process.start()
        self.port: int = receive.recv()

    def close(self) -> None:
        self._stop.set()
        self._process.join(10)


# --- measuring -------------------------------------------------------------------------


class Runner:
    """Calls ``fn(i)`` for i in range(n) from ``threads`` long-lived threads; returns
    messages per second. The threads outlive the runs, so per-thread connections
    (the provider's, or a held smtplib one) are opened once, in the warm-up."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="bench")

    def warm_up(self, fn: Callable[[int], object]) -> None:
        barrier = threading.Barrier(self.threads)

        def once() -> None:
            barrier.wait()  # every pool thread takes exactly one
            fn(-1)

        for future in [self.pool.submit(once) for _ in range(self.threads)]:
            future.result()

    def rate(self, fn: Callable[[int], object], n: int) -> float:
        def chunk(start: int) -> None:
            for i in range(start, n, self.threads):
                fn(i)

        began = time.perf_counter()
        for future in [self.pool.submit(chunk, k) for k in range(self.threads)]:
            future.result()
        return n / (time.perf_counter() - began)

    def compare(
        self, variants: dict[str, tuple[Callable[[int], object], int]], repeats: int
    ) -> dict[str, float]:
        """Median messages/s per variant, the runs interleaved so that every variant
        sees the same machine state."""
        for fn, _ in variants.values():
            self.warm_up(fn)
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, (fn, n) in variants.items():
                runs[name].append(self.rate(fn, n))
        return {name: statistics.median(values) for name, values in runs.items()}

    def close(self) -> None:
        self.pool.shutdown()


PROVIDER = "SmtpProvider (connection kept per thread)"
PER_MESSAGE = "(a) smtplib, a new connection per message"
HELD = "(b) smtplib, one held connection per thread, same bytes (floor)"
SENDGRID = "SendGridProvider"
RAW_HTTPX = "raw httpx, one keep-alive client, same bodies"


def bench_smtp(n: int, repeats: int, threads: int, tls_dir: Path | None) -> dict[str, float]:
    cert = key = None
    if tls_dir is not None:
        cert, key = make_self_signed_cert(tls_dir)
    server = Server(_smtp_server, str(cert) if cert else None, str(key) if key else None)
    runner = Runner(threads)
    held: list[smtplib.SMTP] = []
    tls = ssl.create_default_context(cafile=str(cert)) if cert else None
    try:
        messages = [message(i) for i in range(n)]
        raw = [mime_bytes(build_mime(m)) for m in messages]
        provider = SmtpProvider(
            host="127.0.0.1",
            port=server.port,
            local_hostname="bench",
            starttls=cert is not None,
            ca_file=str(cert) if cert else None,
        )
        local = threading.local()

        def connect() -> smtplib.SMTP:
            conn = smtplib.SMTP("127.0.0.1", server.port, local_hostname="bench")
            if tls is not None:
                conn.starttls(context=tls)
                conn.ehlo()
            return conn

        def via_provider(i: int) -> object:
            return provider.send(messages[i])

        def per_message(i: int) -> object:
            with connect() as conn:
                return conn.sendmail("orders@acme.test", ["jane@example.com"], raw[i])

        def one_connection(i: int) -> object:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = connect()
                held.append(conn)
            return conn.sendmail("orders@acme.test", ["jane@example.com"], raw[i])

        results = runner.compare(
            {
                PROVIDER: (via_provider, n),
                PER_MESSAGE: (per_message, n // 4),
                HELD: (one_connection, n),
            },
            repeats,
        )
        provider.close()
        return results
    finally:
        for conn in held:
            conn.quit()
        runner.close()
        server.close()


def bench_sendgrid(n: int, repeats: int, threads: int) -> dict[str, float]:
    server = Server(_http_server)
    runner = Runner(threads)
    base_url = f"http://127.0.0.1:{server.port}"
    try:
        messages = [message(i) for i in range(n)]
        provider = SendGridProvider(api_key=API_KEY, base_url=base_url)
        bodies = [provider.build_body(m) for m in messages]
        client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=httpx.Timeout(20.0, connect=5.0),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
        )

        def via_provider(i: int) -> object:
            return provider.send(messages[i])

        def raw_httpx(i: int) -> object:
            response = client.post(
                "/v3/mail/send",
                content=bodies[i],
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 202
            return response.headers.get("x-message-id")

        results = runner.compare({SENDGRID: (via_provider, n), RAW_HTTPX: (raw_httpx, n)}, repeats)
        client.close()
        provider.close()
        return results
    finally:
        runner.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="messages per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,4", help="sending threads, comma-separated")
    parser.add_argument("--no-tls", dest="tls", action="store_false", help="skip the STARTTLS runs")
    args = parser.parse_args()
    # As in production: debug lines (smtp_connected) filtered out.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    thread_counts = [int(t) for t in args.threads.split(",")]

    print(f"n={args.n} messages per run ((a): n/4), {args.repeats} interleaved runs, median\n")
    print("| SMTP | sender | threads | messages/s | vs (a) | vs (b) |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tls_modes = [None, Path(tmp)] if args.tls and shutil.which("openssl") else [None]
        for tls_dir in tls_modes:
            for threads in thread_counts:
                smtp = bench_smtp(args.n, args.repeats, threads, tls_dir)
                for name, value in smtp.items():
                    print(
                        f"| {'STARTTLS' if tls_dir else 'plain'} | {name} | {threads} "
                        f"| {value:,.0f} | {value / smtp[PER_MESSAGE]:.2f}x "
                        f"| {value / smtp[HELD]:.2f}x |"
                    )
    print("\n| sender | threads | messages/s | vs raw httpx |")
    print("|---|---:|---:|---:|")
    for threads in thread_counts:
        sendgrid = bench_sendgrid(args.n, args.repeats, threads)
        for name, value in sendgrid.items():
            print(f"| {name} | {threads} | {value:,.0f} | {value / sendgrid[RAW_HTTPX]:.2f}x |")


if __name__ == "__main__":
    main()
