"""Provider throughput against hand-written baselines, into servers on loopback.

Run: ``python bench/bench_providers.py`` (or ``nox -s bench``; needs the ``test`` and
``bench`` extras; STARTTLS rows need the ``openssl`` command). Writes the
``providers-smtp`` and ``providers-http`` sections of docs/benchmarks.md
(``--no-write``: print only). Options: ``--no-tls``, ``--threads 1,4``, ``-n``,
``--rounds``.

Every sender delivers the same two-part order confirmation (about 1.5 KB) from 1 or
4 threads to a server running in a process of its own (so it does not share the
sender's interpreter lock); the variants of one table run in interleaved rounds.

SMTP, into an aiosmtpd server that accepts everything (with STARTTLS required in
the STARTTLS tables), once as aiosmtpd is (no PIPELINING) and once offering
PIPELINING (RFC 2920), as Postfix, Exim and Exchange do:

* ``SmtpProvider.send(message)``: builds the MIME message (Message-ID, Date,
  encodings) and sends it over the connection it keeps open per thread,
  pipelining MAIL, RCPT and DATA when the server offers it;
* (a) ``smtplib``, a new connection per message (connect, EHLO, [STARTTLS, EHLO],
  MAIL, RCPT, DATA, QUIT), sending bytes built beforehand: what a naive relay
  client does;
* (b) ``smtplib`` over one held connection per thread, sending the same bytes built
  beforehand: the floor (smtplib never pipelines).

HTTP (SendGrid, Postmark, SES, SNS), into a minimal HTTP/1.1 keep-alive server
answering each API's success reply (SendGrid's 202 with X-Message-Id, Postmark's
and SES's JSON with the message id, SNS's ``PublishResponse`` XML):

* ``<Provider>.send(message)``: builds the body, authenticates the request, posts
  it, classifies the reply, reads the message id;
* raw ``httpx``: one keep-alive ``httpx.Client`` posting the identical body bytes,
  built beforehand, with the same credentials, and reading the same message id.
  For SES and SNS that client signs each request with the same SigV4 signer
  (botocore's): any client of AWS must, so what the ratio measures is what the
  provider adds on top of a hand-written client, not the cost of signing.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import shutil
import smtplib
import socket
import ssl
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
from _harness import (
    Comparison,
    Result,
    Sample,
    Target,
    TreeCpu,
    Variant,
    arguments,
    cpu_seconds,
    publish,
)

from tenant_notify._mime import build_mime, mime_bytes
from tenant_notify.models import Address, EmailMessage, Message, SmsMessage
from tenant_notify.providers.http import HttpProvider
from tenant_notify.providers.postmark import PostmarkProvider
from tenant_notify.providers.sendgrid import SendGridProvider
from tenant_notify.providers.ses import SesProvider
from tenant_notify.providers.smtp import SmtpProvider
from tenant_notify.providers.sns import SnsProvider

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


def _smtp_server(
    port_out: Any, stop: Any, cert: str | None, key: str | None, pipelining: bool
) -> None:
    from aiosmtpd.controller import Controller

    class Accept:
        async def handle_EHLO(
            self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
        ) -> list[str]:
            session.host_name = hostname
            if pipelining:
                responses.insert(-1, "250-PIPELINING")
            return responses

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
            path = head.split(" ", 2)[1]
            self.buffer = self.buffer[end:]
            self.count += 1
            self.transport.write(_reply(path, str(self.count).encode()))


def _reply(path: str, n: bytes) -> bytes:
    """Each API's success reply."""
    if path == "/v3/mail/send":  # SendGrid
        return (
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nX-Message-Id: bench" + n + b"\r\n\r\n"
        )
    if path == "/email":  # Postmark
        body = (
            b'{"To":"jane@example.com","SubmittedAt":"2026-12-01T10:00:00Z","MessageID":"pm-'
            + n
            + b'","ErrorCode":0,"Message":"OK"}'
        )
        kind = b"application/json"
    elif path == "/v2/email/outbound-emails":  # SES
        body, kind = b'{"MessageId":"ses-' + n + b'"}', b"application/json"
    else:  # SNS Publish
        body = (
            b'<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult>'
            b"<MessageId>sns-" + n + b"</MessageId></PublishResult><ResponseMetadata><RequestId>r"
            b"</RequestId></ResponseMetadata></PublishResponse>"
        )
        kind = b"text/xml"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


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
        assert self._process.pid is not None
        self.cpu = TreeCpu([self._process.pid], children=False)

    def close(self) -> None:
        self._stop.set()
        self._process.join(10)


# --- measuring -------------------------------------------------------------------------


class Threads:
    """``threads`` long-lived sending threads. They outlive the rounds, so per-thread
    connections (the provider's, or a held smtplib one) are opened once, in the
    harness's warm-up round."""

    def __init__(self, threads: int, server: Server) -> None:
        self.threads = threads
        self.server = server
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="bench")

    def variant(self, fn: Callable[[int], object], n: int) -> Callable[[int], Sample]:
        """A harness round: ``fn(i)`` for i in range(n), shared out over the threads."""

        def chunk(start: int) -> None:
            for i in range(start, n, self.threads):
                fn(i)

        def run(round_no: int) -> Sample:
            wall, cpu, server = time.perf_counter(), cpu_seconds(), self.server.cpu.seconds()
            for future in [self.pool.submit(chunk, k) for k in range(self.threads)]:
                future.result()
            return Sample(
                ops=n,
                wall=time.perf_counter() - wall,
                cpu={"sender": cpu_seconds() - cpu, "server": self.server.cpu.seconds() - server},
            )

        return run

    def close(self) -> None:
        self.pool.shutdown()


SCOPES = {
    "sender": "the sending process, every thread (the system under test)",
    "server": "the loopback server's process (not the system under test)",
}
PROVIDER = "`SmtpProvider` (connection kept per thread)"
PER_MESSAGE = "(a) smtplib, a new connection per message, bytes built beforehand"
HELD = "(b) smtplib, one held connection per thread, the same bytes (floor)"
RAW_HTTPX = "raw httpx, one keep-alive client, the same bodies built beforehand"


def bench_smtp(
    n: int, rounds: int, threads: int, tls_dir: Path | None, pipelining: bool
) -> tuple[str, Result]:
    cert = key = None
    if tls_dir is not None:
        cert, key = make_self_signed_cert(tls_dir)
    server = Server(
        _smtp_server, str(cert) if cert else None, str(key) if key else None, pipelining
    )
    runner = Threads(threads, server)
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

        guarantee = "accepted by the server when the call returns"
        title = (
            f"{'STARTTLS' if cert else 'plain'} SMTP, {threads} thread{'s' * (threads > 1)}, "
            f"server {'offers' if pipelining else 'does not offer'} PIPELINING"
        )
        result = Comparison(
            title,
            [
                Variant(PROVIDER, runner.variant(via_provider, n), guarantee=guarantee),
                Variant(
                    PER_MESSAGE,
                    runner.variant(per_message, n // 4),
                    guarantee=guarantee,
                    baseline=True,
                    short="(a)",
                ),
                Variant(
                    HELD,
                    runner.variant(one_connection, n),
                    guarantee=guarantee,
                    baseline=True,
                    short="(b)",
                ),
            ],
            rounds=rounds,
            cpu_scopes=SCOPES,
            warmup=True,
        ).run()
        provider.close()
        return title, result
    finally:
        for conn in held:
            conn.quit()
        runner.close()
        server.close()


def sms(n: int) -> SmsMessage:
    return SmsMessage(
        from_number="+15005550006",
        to="+447700900123",
        body=f"Acme Shop: your order A-{n} has shipped.",
        notification_id=f"n-{n}",
        tenant_id="acme",
        kind="sms",
    )


AWS = {"region": "eu-west-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
       "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}  # fmt: skip


def http_provider(name: str, base_url: str) -> HttpProvider:
    if name == "sendgrid":
        return SendGridProvider(api_key=API_KEY, base_url=base_url)
    if name == "postmark":
        return PostmarkProvider(server_token="pm-bench-token", base_url=base_url)
    if name == "ses":
        return SesProvider(endpoint_url=base_url, **AWS)
    return SnsProvider(endpoint_url=base_url, **AWS)


def _message_id(name: str, response: httpx.Response) -> str | None:
    """What a hand-written client reads from the reply."""
    if name == "sendgrid":
        return response.headers.get("x-message-id")
    if name == "postmark":
        return str(response.json()["MessageID"])
    if name == "ses":
        return str(response.json()["MessageId"])
    return response.text.partition("<MessageId>")[2].partition("</MessageId>")[0]


def bench_http(name: str, n: int, rounds: int, threads: int) -> tuple[str, Result]:
    server = Server(_http_server)
    runner = Threads(threads, server)
    base_url = f"http://127.0.0.1:{server.port}"
    try:
        messages: list[Message] = [sms(i) if name == "sns" else message(i) for i in range(n)]
        provider = http_provider(name, base_url)
        requests = [provider.build_request(m) for m in messages]
        client = httpx.Client(
            base_url=base_url,
            # The same credentials, the same way: a header, basic auth, or SigV4.
            auth=provider.auth(),
            timeout=httpx.Timeout(20.0, connect=5.0),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
        )

        def via_provider(i: int) -> object:
            return provider.send(messages[i])

        def raw_httpx(i: int) -> object:
            request = requests[i]
            response = client.post(
                request.path,
                content=request.content,
                headers={"Content-Type": request.content_type},
            )
            assert response.is_success
            return _message_id(name, response)

        guarantee = "accepted by the API when the call returns"
        title = f"{provider.service} over HTTP, {threads} thread{'s' * (threads > 1)}"
        label = f"`{type(provider).__name__}`"
        result = Comparison(
            title,
            [
                Variant(label, runner.variant(via_provider, n), guarantee=guarantee),
                Variant(
                    RAW_HTTPX,
                    runner.variant(raw_httpx, n),
                    guarantee=guarantee,
                    baseline=True,
                    short="raw httpx",
                ),
            ],
            rounds=rounds,
            cpu_scopes=SCOPES,
            warmup=True,
        ).run()
        client.close()
        provider.close()
        return title, result
    finally:
        runner.close()
        server.close()


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="messages per round ((a): n/4)")
    parser.add_argument("--threads", default="1,4", help="sending threads, comma-separated")
    parser.add_argument("--no-tls", dest="tls", action="store_false", help="skip the STARTTLS runs")
    parser.add_argument("--no-smtp", dest="smtp", action="store_false", help="skip the SMTP runs")
    parser.add_argument(
        "--http", default="sendgrid,postmark,ses,sns", help="HTTP providers, comma-separated"
    )
    args = parser.parse_args()
    # As in production: debug lines (smtp_connected) filtered out.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    thread_counts = [int(t) for t in args.threads.split(",")]

    smtp_tables = []
    targets = [
        Target(
            "earlier target: at least 2x a connection per message",
            PROVIDER,
            PER_MESSAGE,
            at_least=2.0,
        ),
        Target(
            "earlier target: at least 0.8x the held-connection floor", PROVIDER, HELD, at_least=0.8
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tls_modes = [None, Path(tmp)] if args.tls and shutil.which("openssl") else [None]
        for pipelining in (False, True) if args.smtp else ():
            for tls_dir in tls_modes:
                for threads in thread_counts:
                    title, result = bench_smtp(args.n, args.rounds, threads, tls_dir, pipelining)
                    smtp_tables.append(f"**{title}**\n\n" + result.markdown(targets=targets))
    if smtp_tables:
        publish("providers-smtp", "\n".join(smtp_tables), write=args.write)
    http_tables = []
    for name in args.http.split(","):
        for threads in thread_counts:
            title, result = bench_http(name, args.n, args.rounds, threads)
            label = f"`{type(http_provider(name, 'http://127.0.0.1')).__name__}`"
            target = Target("target: at least 0.8x raw httpx", label, RAW_HTTPX, at_least=0.8)
            http_tables.append(f"**{title}**\n\n" + result.markdown(targets=[target]))
    publish("providers-http", "\n".join(http_tables), write=args.write)


if __name__ == "__main__":
    main()
