"""A real SMTP server on loopback for tests, built on aiosmtpd.

Usage::

    from tests.smtp_server import LoopbackSMTPServer

    with LoopbackSMTPServer() as server:
        ...send to server.host, server.port...
        [received] = server.wait_for(1)
        assert received.message["Subject"] == "Hello"

The server records every accepted message (:class:`ReceivedMessage`), counts
connections and QUITs, and can be told to misbehave: answer the next MAIL, RCPT
or DATA commands with a given reply (:meth:`LoopbackSMTPServer.fail_next`), reject
one recipient for good (:meth:`~LoopbackSMTPServer.reject_recipient`), sit on the
reply to DATA (:meth:`~LoopbackSMTPServer.delay_data_reply`), or drop every client
connection (:meth:`~LoopbackSMTPServer.drop_connections`). It can require AUTH
(PLAIN and LOGIN against one known user) and offer STARTTLS or implicit TLS with a
self-signed certificate made at start-up by the ``openssl`` command line tool
(:func:`make_self_signed_cert`; tests that need TLS skip when it is missing).
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "LoopbackSMTPServer",
    "ReceivedMessage",
    "make_self_signed_cert",
    "openssl_available",
]

Command = Literal["MAIL", "RCPT", "DATA"]
_MECHANISMS = frozenset({"LOGIN", "PLAIN"})


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the server accepted.

    Attributes:
        mail_from: Envelope sender (``MAIL FROM``).
        rcpt_tos: Envelope recipients (``RCPT TO``), in order.
        raw: The message bytes exactly as received (dot-stuffing undone).
        message: ``raw`` parsed with ``email.policy.default``.
        connection: Number of the connection it came on (1 for the first).
        auth_login: The user the client authenticated as, or None.
        tls: Whether the connection was encrypted (STARTTLS or implicit TLS).
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: email.message.EmailMessage
    connection: int
    auth_login: str | None
    tls: bool


def openssl_available() -> bool:
    """Whether :func:`make_self_signed_cert` can work here."""
    return shutil.which("openssl") is not None


def make_self_signed_cert(directory: Path, *, hostname: str = "localhost") -> tuple[Path, Path]:
    """Write a self-signed certificate and key for ``hostname`` and 127.0.0.1.

    Returns:
        ``(cert_file, key_file)``; the certificate doubles as a CA file for
        clients that verify.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={hostname}",
            "-addext", f"subjectAltName=DNS:{hostname},IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


class LoopbackSMTPServer:
    """An aiosmtpd server on 127.0.0.1 and a free port, run on its own thread.

    Args:
        auth: ``(user, password)`` to require AUTH: MAIL is refused with 530
            until the client has authenticated.
        auth_mechanisms: Mechanisms to offer (default ``LOGIN`` and ``PLAIN``).
        starttls: Offer STARTTLS with a self-signed certificate.
        implicit_tls: Speak TLS from the first byte (SMTPS).
        pipelining: Offer PIPELINING (RFC 2920) in the EHLO reply, as most
            production servers do (aiosmtpd reads commands in order either way).
    """

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        auth_mechanisms: Iterable[str] = ("LOGIN", "PLAIN"),
        starttls: bool = False,
        implicit_tls: bool = False,
        pipelining: bool = False,
        port: int = 0,
    ) -> None:
        if starttls and implicit_tls:
            raise ValueError("choose starttls or implicit_tls, not both")
        self.host = "127.0.0.1"
        self.port = port  # 0: the OS picks one (read back in start)
        self.auth = auth
        self.auth_mechanisms = frozenset(m.upper() for m in auth_mechanisms)
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.pipelining = pipelining
        self.cert_file: Path | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._controller: _Controller | None = None

        self._lock = threading.Lock()
        self._received = threading.Condition(self._lock)
        self._messages: list[ReceivedMessage] = []
        # When the 250 for each of them went out (time.monotonic), by position.
        self._answered: dict[int, float] = {}
        self._connection_numbers: dict[int, int] = {}  # id(protocol) -> number
        self._open: dict[int, _TrackedSMTP] = {}  # id(protocol) -> protocol
        self._connections = 0
        self._peak_open = 0
        self._quits = 0
        self._auth_failures = 0
        self._scripted: dict[Command, deque[str]] = {c: deque() for c in ("MAIL", "RCPT", "DATA")}
        #: The reply to a failed AUTH, formatted with the ``login`` and ``password``
        #: the client sent (a server that echoes them, as some do); None: aiosmtpd's.
        self.auth_failure_reply: str | None = None
        self._rejected_rcpts: dict[str, str] = {}
        self._data_delays: deque[float] = deque()
        self._holds: deque[float] = deque()
        #: What went in and out of every connection, in order: (connection id,
        #: "in" or "out", bytes).
        self._transcript: list[tuple[int, str, bytes]] = []
        #: Scripted faults during DATA, taken one a message (see drop_during_data).
        self._data_faults: deque[tuple[str, int | str]] = deque()
        #: Callables to run at the next commands (see call_at_next).
        self._calls: dict[Command, deque[Callable[[], None]]] = {
            c: deque() for c in ("MAIL", "RCPT", "DATA")
        }

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> LoopbackSMTPServer:
        """Start listening; ``port`` is set when this returns."""
        if self._controller is not None:
            raise RuntimeError("already started")
        kwargs: dict[str, Any] = {}
        if self.starttls or self.implicit_tls:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="tn-smtp-")
            cert, key = make_self_signed_cert(Path(self._tmpdir.name))
            self.cert_file = cert
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            if self.starttls:
                kwargs["tls_context"] = context
            else:
                kwargs["ssl_context"] = context
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_require_tls"] = False
            kwargs["auth_exclude_mechanism"] = sorted(_MECHANISMS - self.auth_mechanisms)
        controller = _Controller(self, _Handler(self), **kwargs)
        try:
            controller.start()
        except BaseException:
            self._cleanup_tmpdir()
            raise
        self._controller = controller
        self.port = controller.port
        return self

    def stop(self) -> None:
        """Stop the server and close every connection. Safe to call twice."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
        self._cleanup_tmpdir()

    def __enter__(self) -> LoopbackSMTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _cleanup_tmpdir(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    # --- what happened ---------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Accepted messages, oldest first (a copy)."""
        with self._lock:
            return list(self._messages)

    def answer_times(self) -> list[float | None]:
        """For each of :attr:`messages`: when the server wrote its 250 for it
        (``time.monotonic()``), or None while it has not."""
        with self._lock:
            return [self._answered.get(i) for i in range(len(self._messages))]

    @property
    def connections(self) -> int:
        """How many client connections have greeted (EHLO/HELO) so far."""
        with self._lock:
            return self._connections

    @property
    def open_connections(self) -> int:
        """How many greeted client connections are open now."""
        with self._lock:
            return sum(1 for key in self._open if key in self._connection_numbers)

    @property
    def peak_open_connections(self) -> int:
        """The most client connections open at once (greeted or not) since the
        start or the last :meth:`clear`."""
        with self._lock:
            return self._peak_open

    @property
    def quits(self) -> int:
        """How many QUIT commands the server has answered."""
        with self._lock:
            return self._quits

    @property
    def auth_failures(self) -> int:
        """How many AUTH attempts were refused."""
        with self._lock:
            return self._auth_failures

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages have arrived and return them all.

        Raises:
            TimeoutError: fewer than ``count`` arrived within ``timeout`` seconds.
        """
        with self._received:
            if not self._received.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} message(s), received {len(self._messages)} within {timeout}s"
                )
            return list(self._messages)

    def wait_until(self, predicate: Any, timeout: float = 5.0) -> None:
        """Poll ``predicate()`` (say, ``lambda: server.quits == 2``) until true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached in time")
            time.sleep(0.01)

    def clear(self) -> None:
        """Forget received messages and scripted replies (counters keep counting;
        the peak of open connections starts again from those open now)."""
        with self._lock:
            self._messages.clear()
            self._answered.clear()
            for replies in self._scripted.values():
                replies.clear()
            self._rejected_rcpts.clear()
            self._data_delays.clear()
            self._holds.clear()
            self._transcript.clear()
            self._data_faults.clear()
            for calls in self._calls.values():
                calls.clear()
            self._peak_open = len(self._open)

    # --- misbehaviour ----------------------------------------------------------------

    def fail_next(self, command: Command, reply: str, times: int = 1) -> None:
        """Answer the next ``times`` ``command`` commands with ``reply``.

        ``reply`` is a full reply line such as ``"451 4.3.0 try later"``. A RCPT
        reply counts per recipient; a refused DATA means the message is not recorded.
        """
        with self._lock:
            self._scripted[command].extend([reply] * times)

    def call_at_next(self, command: Command, fn: Callable[[], None]) -> None:
        """Run ``fn`` (on the server's thread) when the next ``command`` arrives,
        before it is answered; for DATA, once the final dot has been read and the
        message recorded. (A test kills its client there: after or before the dot.)
        """
        with self._lock:
            self._calls[command].append(fn)

    def _call_at(self, command: Command) -> None:
        with self._lock:
            calls = self._calls[command]
            fn = calls.popleft() if calls else None
        if fn is not None:
            fn()

    def reject_recipient(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        """Refuse ``RCPT TO:<address>`` with ``reply`` from now on."""
        with self._lock:
            self._rejected_rcpts[address.lower()] = reply

    def delay_data_reply(self, seconds: float, times: int = 1) -> None:
        """Record the next ``times`` messages, then wait ``seconds`` before replying.

        Models a server that has taken a message when the client gives up waiting
        for the final reply (the client sees a timeout after the data went out).
        """
        with self._lock:
            self._data_delays.extend([seconds] * times)

    def hold_final_reply(self, seconds: float, times: int = 1) -> None:
        """Wait ``seconds`` after the final dot of the next ``times`` messages before
        doing anything with them (recording, a scripted reply, a drop): what the
        client sends meanwhile is in :attr:`transcript` before the reply."""
        with self._lock:
            self._holds.extend([seconds] * times)

    @property
    def transcript(self) -> list[tuple[int, str, bytes]]:
        """Every chunk read from and reply written to a client, in order:
        ``(connection id, "in" | "out", bytes)``."""
        with self._lock:
            return list(self._transcript)

    def received_bytes(self) -> bytes:
        """Everything read from clients so far, joined."""
        return b"".join(data for _, way, data in self.transcript if way == "in")

    def drop_during_data(self, after_bytes: int = 0, times: int = 1) -> None:
        """Close the next ``times`` connections in the middle of DATA: after the 354,
        once ``after_bytes`` bytes of the message have arrived (0: at once), and
        before the final dot is read. The server cannot have taken the message."""
        with self._lock:
            self._data_faults.extend([("drop", after_bytes)] * times)

    def reply_during_data(self, reply: str) -> None:
        """Answer ``reply`` right after the next 354, while the message is coming in
        (as a server refusing a message over its size may), then close."""
        with self._lock:
            self._data_faults.append(("reply", reply))

    def drop_after_data(self, times: int = 1) -> None:
        """Take the next ``times`` messages whole (final dot included), record them,
        then close without a final reply: the client cannot know it was taken."""
        with self._lock:
            self._data_faults.extend([("after", 0)] * times)

    def drop_connections(self, notice: str | None = None, timeout: float = 5.0) -> int:
        """Close every client connection from the server side, as an idle timeout would.

        Args:
            notice: A reply line to send first (such as ``"421 4.4.2 idle timeout"``).
            timeout: Seconds to wait until the connections are closed.

        Returns:
            How many connections were closed.
        """
        controller = self._controller
        if controller is None:
            raise RuntimeError("not started")
        future = asyncio.run_coroutine_threadsafe(self._drop(notice), controller.loop)
        return future.result(timeout)

    async def _drop(self, notice: str | None) -> int:
        with self._lock:
            protocols = list(self._open.values())
        for protocol in protocols:
            transport = protocol.transport
            if transport is None:
                continue
            if notice is not None:
                transport.write(notice.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
            transport.close()
        # Let connection_lost run, so the server's state is settled on return.
        for _ in range(200):
            with self._lock:
                if not any(id(p) in self._open for p in protocols):
                    break
            await asyncio.sleep(0.005)
        return len(protocols)

    # --- hooks (called on the server's thread) ---------------------------------------

    def _connection_made(self, protocol: _TrackedSMTP) -> None:
        with self._lock:
            self._open[id(protocol)] = protocol
            self._peak_open = max(self._peak_open, len(self._open))

    def _connection_lost(self, protocol: _TrackedSMTP) -> None:
        with self._lock:
            self._open.pop(id(protocol), None)
            self._connection_numbers.pop(id(protocol), None)

    def _greeted(self, protocol: SMTP) -> None:
        # Counted at the first EHLO/HELO, so neither the controller's start-up
        # probe (which only reads the banner) nor the EHLO repeated after
        # STARTTLS counts as a connection.
        with self._lock:
            if id(protocol) not in self._connection_numbers:
                self._connections += 1
                self._connection_numbers[id(protocol)] = self._connections

    def _next_reply(self, command: Command) -> str | None:
        with self._lock:
            replies = self._scripted[command]
            return replies.popleft() if replies else None

    def _quit(self) -> None:
        with self._lock:
            self._quits += 1

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert self.auth is not None
        user, password = self.auth
        if (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        ):
            return AuthResult(success=True, auth_data=user)
        with self._lock:
            self._auth_failures += 1
        reply = self.auth_failure_reply
        if reply is not None and isinstance(auth_data, LoginPassword):
            reply = reply.format(
                login=auth_data.login.decode(errors="replace"),
                password=auth_data.password.decode(errors="replace"),
            )
        return AuthResult(success=False, handled=False, message=reply)

    def _record(self, protocol: SMTP, session: Session, envelope: Envelope) -> int:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        with self._lock:
            received = ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=raw,
                message=parsed,
                connection=self._connection_numbers.get(id(protocol), 0),
                auth_login=session.auth_data if session.authenticated else None,
                tls=session.ssl is not None or self.implicit_tls,
            )
            self._messages.append(received)
            self._received.notify_all()
            return len(self._messages) - 1

    def _answering(self, index: int) -> None:
        with self._lock:
            self._answered[index] = time.monotonic()

    def _data_started(self, protocol: _TrackedSMTP) -> None:
        # Called once the 354 is on its way.
        with self._lock:
            if not self._data_faults or self._data_faults[0][0] == "after":
                return
            kind, value = self._data_faults.popleft()
        transport = protocol.transport
        assert transport is not None
        if kind == "reply":
            transport.write(str(value).encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
            transport.close()
        elif value == 0:
            transport.close()
        else:
            protocol.drop_after = int(value)

    def _drop_after_data(self) -> bool:
        with self._lock:
            if self._data_faults and self._data_faults[0][0] == "after":
                self._data_faults.popleft()
                return True
            return False

    def _next_data_delay(self) -> float:
        with self._lock:
            return self._data_delays.popleft() if self._data_delays else 0.0

    def _next_hold(self) -> float:
        with self._lock:
            return self._holds.popleft() if self._holds else 0.0

    def _log(self, protocol: SMTP, way: str, data: bytes) -> None:
        with self._lock:
            self._transcript.append((id(protocol), way, data))


class _Handler:
    """aiosmtpd handler hooks; all state lives on the owning server."""

    def __init__(self, owner: LoopbackSMTPServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.owner._greeted(server)
        if self.owner.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        self.owner._greeted(server)
        return f"250 {server.hostname}"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.owner._quit()
        return "221 Bye"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.owner.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        self.owner._call_at("MAIL")
        scripted = self.owner._next_reply("MAIL")
        if scripted is not None:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.owner._call_at("RCPT")
        scripted = self.owner._next_reply("RCPT")
        if scripted is not None:
            return scripted
        with self.owner._lock:
            rejected = self.owner._rejected_rcpts.get(address.lower())
        if rejected is not None:
            return rejected
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        hold = self.owner._next_hold()
        if hold:
            await asyncio.sleep(hold)
        scripted = self.owner._next_reply("DATA")
        if scripted is not None:
            return scripted
        index = self.owner._record(server, session, envelope)
        self.owner._call_at("DATA")
        if self.owner._drop_after_data():
            assert server.transport is not None
            server.transport.close()
            return "250 2.0.0 OK (never arrives)"
        delay = self.owner._next_data_delay()
        if delay:
            await asyncio.sleep(delay)
        self.owner._answering(index)  # aiosmtpd writes the reply next, with no wait between
        return f"250 2.0.0 OK queued as {index + 1}"


class _TrackedSMTP(SMTP):
    """aiosmtpd's protocol, reporting connections to the owning server."""

    def __init__(self, owner: LoopbackSMTPServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner
        #: Bytes of message data to let in before closing (drop_during_data).
        self.drop_after: int | None = None

    async def push(self, status: Any) -> None:
        self._owner._log(self, "out", status if isinstance(status, bytes) else status.encode())
        await super().push(status)
        if status[:3] in ("354", b"354"):
            self._owner._data_started(self)

    def data_received(self, data: bytes) -> None:
        self._owner._log(self, "in", data)
        if self.drop_after is not None:
            self.drop_after -= len(data)
            if self.drop_after <= 0:
                # Gone before the rest, the final dot included, reaches aiosmtpd.
                self.drop_after = None
                assert self.transport is not None
                self.transport.abort()  # type: ignore[attr-defined]
                return
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._owner._connection_made(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._owner._connection_lost(self)


class _Controller(Controller):
    """Binds port 0 and reads back the port the OS chose (no free-port race)."""

    def __init__(self, owner: LoopbackSMTPServer, handler: _Handler, **kwargs: Any) -> None:
        # An explicit server hostname spares aiosmtpd a socket.getfqdn() per connection.
        super().__init__(
            handler, hostname="127.0.0.1", port=owner.port, server_hostname="localhost", **kwargs
        )
        self._owner = owner

    def factory(self) -> SMTP:
        return _TrackedSMTP(self._owner, self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server: asyncio.AbstractServer = await super()._create_server()
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return server
