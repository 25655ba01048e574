"""Send email through an SMTP server, with the standard library's ``smtplib``.

One :class:`SmtpProvider` serves many worker threads, and every provider of the
process borrows its connections from one pool per server
(:mod:`tenant_notify.providers._smtp_pool`): at most ``max_connections`` open to
one host and port across all tenants' tables, reused by the next message with the
same credentials, closed after ``idle_timeout`` seconds idle. Nothing is sent to
check a connection before use. When a reused connection turns out to be dead (the
server closed it while idle), the provider reconnects once and sends again, which
is safe as long as the message data had not gone out yet.

The provider speaks MAIL, RCPT and DATA itself, over ``smtplib``'s connection and
reply reader: the envelope addresses were validated and put in ASCII form before,
so they are not parsed again as ``smtplib.SMTP.sendmail`` would, and the message
is dot-stuffed with a byte replacement. When the server offers PIPELINING (RFC
2920; Postfix, Exim, Exchange and the big providers' submission servers do),
MAIL, every RCPT and DATA go out in one write and the message follows the 354:
two exchanges with the server per message instead of three plus one per
recipient. And once the final dot has gone out, the sender gives the connection
back to the pool and reads the final reply while the next message's MAIL, RCPT
and DATA follow the dot in the same round trip (RFC 2920 3.1 lets message content
open a group): a busy connection carries a message per round trip, not per two.
Replies are checked exactly as ``sendmail`` checks them, so errors map the same
either way.

Error mapping (every error carries ``provider="smtp"``, the notification and
tenant ids, and the server's reply as ``"<code> <text>"`` when there is one):

==============================================  =====================================
What happened                                   Raised (``tenant_notify.errors``)
==============================================  =====================================
reply 4xx (to MAIL, RCPT, DATA, EHLO, ...)      ``TransientDeliveryError``
reply 5xx                                       ``PermanentDeliveryError``; with
                                                ``sender_fault`` for a 5.7.x policy
                                                refusal (``550 5.7.26`` unauthenticated
                                                mail, ``5.7.1`` relaying denied)
all recipients refused                          transient if every reply is 4xx,
                                                else permanent, with ``recipient_error``
                                                (no failover) unless a 5xx reply is a
                                                5.7.x policy refusal ("relaying denied")
authentication refused (535)                    permanent, "authentication failed",
                                                ``sender_fault``;
                                                a 4xx reply to AUTH (454) is transient
server lacks STARTTLS / AUTH the settings ask   permanent
TLS certificate verification failed             permanent (retrying will not fix it)
refused / unreachable / DNS / timeout /         transient
greeting refused (SMTPConnectError) /
disconnect or reset before the final dot /
reset after it
timeout or disconnect after the final dot       ``AmbiguousDeliveryError``
==============================================  =====================================

The ambiguous window is as narrow as the client can know it: the server accepts
a message only once it has read the final ``<CRLF>.<CRLF>``, so a failure while
the message is going out, the server closing, resetting or answering before the
final dot is sent (checked just before it goes, in a write of its own), or the
server resetting the connection after it (a reset means it had not read our data
to its end) cannot have delivered anything: transient, retried, and on a reused
connection sent again at once on a fresh one. Only a connection that ends
cleanly (or times out) after the final dot went out, while waiting for the final
reply, may have delivered the message: ``AmbiguousDeliveryError``, never retried
here.
A message handed on after its final dot (PIPELINING, a connection that has
already carried a message) has the next message's envelope behind its dot: a
reset while waiting for its final reply may then be about that envelope, so it is
ambiguous too; the next message, whose data had not gone out, is sent again at
once on a fresh connection.

Credentials may be any Unicode text: AUTH PLAIN and LOGIN carry the UTF-8 form
(RFC 4954 AUTH over SASL, whose PLAIN mechanism, RFC 4616, is UTF-8) and
CRAM-MD5 keys its HMAC with it. A username or password with a control character
(PLAIN separates its fields with NUL) or that is not valid Unicode is refused when
the provider is built (``ConfigurationError``).

Credentials never appear in errors, logs or ``repr``: the password is kept as a
``SecretStr`` and scrubbed (with its base64 forms) from any server text that is
quoted in an error.

With ``dkim_selector`` and ``dkim_private_key`` (a tenant's own key) every
message is DKIM-signed before it goes out (see :mod:`tenant_notify.providers._dkim`).
"""

from __future__ import annotations

import base64
import functools
import hmac
import select
import smtplib
import socket
import ssl as _ssl
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict, cast

import pydantic
from pydantic import Field, SecretStr, model_validator

from .. import _call_gate
from .._mime import envelope_address, wire_bytes
from .._redact import redact_secrets, register_secret
from ..errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from ..log import get_logger
from ..models import Channel, DeliveryResult, EmailMessage, Feature
from ._dkim import DkimSigner
from ._smtp_pool import Lease, PooledSMTP, ServerPool, quit_quietly, shared_pool
from .base import Capabilities, Provider, ProviderConfig

__all__ = ["SmtpConfig", "SmtpProvider"]


class _ErrorContext(TypedDict):
    provider: str
    notification_id: str | None
    tenant_id: str | None


class SmtpConfig(ProviderConfig):
    """Settings of the SMTP provider.

    Attributes:
        host: SMTP server host name or address.
        port: Server port (25, 587 for STARTTLS, 465 for implicit TLS).
        username: User for AUTH, or None to send without authenticating.
        password: Password for AUTH (required with ``username``; without a
            username there is no AUTH and it is not used).
        starttls: Upgrade the connection with STARTTLS after connecting.
        ssl: Speak TLS from the start (SMTPS); excludes ``starttls``.
        timeout: Seconds allowed for connecting and for each reply.
        local_hostname: Name sent in EHLO; by default the machine's FQDN,
            looked up once per process.
        verify_tls: Verify the server certificate and host name.
        ca_file: PEM file of CA certificates to trust instead of the system's.
        dkim_selector: Sign every message with DKIM under this selector
            (``<selector>._domainkey.<domain>``); needs ``dkim_private_key``.
        dkim_private_key: The PEM RSA private key to sign with (a secret).
        dkim_domain: The signing domain; default: each message's From domain
            (what DMARC aligns with).
        max_connections: Connections open at most to this server (host and
            port) from this process, shared by every table that names the server
            (the smallest bound of those holds). A send waits up to ``timeout``
            for one to come free. Keep processes x this under the server's
            limit per client (Postfix: 50).
        idle_timeout: Seconds an unused connection stays open.
    """

    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    ssl: bool = False
    timeout: float = Field(default=10.0, gt=0)
    local_hostname: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    dkim_selector: str | None = None
    dkim_private_key: SecretStr | None = None
    dkim_domain: str | None = None
    max_connections: int = Field(default=10, ge=1, le=1000)
    idle_timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _check_combinations(self) -> SmtpConfig:
        if (self.dkim_selector is None) != (self.dkim_private_key is None):
            raise ValueError("dkim_selector and dkim_private_key go together")
        if self.starttls and self.ssl:
            raise ValueError(
                "starttls and ssl exclude each other: use ssl for implicit TLS (port 465) "
                "or starttls to upgrade a plain connection (port 587)"
            )
        if self.username is not None and self.password is None:
            raise ValueError("a username needs a password")
        _check_credential("username", self.username)
        if self.password is not None:
            _check_credential("password", self.password.get_secret_value())
        return self


def _check_credential(field: str, value: str | None) -> None:
    """Refuse, when the provider is built, credentials that no AUTH exchange can carry.

    Non-ASCII is fine: AUTH PLAIN and LOGIN send the UTF-8 form (RFC 4954 defers to
    SASL, whose PLAIN, RFC 4616, is UTF-8) and CRAM-MD5 keys its HMAC with it. What
    no server can be sent is text that is not Unicode (lone surrogates) and control
    characters (PLAIN separates its fields with NUL).
    """
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the SMTP {field} is not valid Unicode text") from None
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise ValueError(f"the SMTP {field} has a control character, which AUTH cannot carry")


class _TrackingMixin(PooledSMTP):
    """A pooled connection (see :class:`PooledSMTP`) that speaks AUTH in UTF-8."""

    _host: str
    #: Written behind a final dot whose reply was still to come (a reset seen by
    #: that reply's reader may then be about the data that followed it).
    followed: bool = False
    #: Messages the server has confirmed on this connection.
    carried: int = 0

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> tuple[int, bytes]:
        # smtplib takes the TLS server name (SNI, certificate check) from _host,
        # which only __init__ sets; we construct unconnected and connect here.
        self._host = host
        reply = super().connect(host, port, source_address)
        # The final dot goes in a write of its own (see _transaction): without
        # NODELAY, Nagle's algorithm would hold it until the body is acknowledged.
        if self.sock is not None:
            with suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reply

    def auth(
        self, mechanism: str, authobject: Any, *, initial_response_ok: bool = True
    ) -> tuple[int, bytes]:
        # smtplib encodes what a mechanism answers as ASCII, so a non-ASCII user or
        # password failed every delivery with a UnicodeEncodeError. SASL PLAIN
        # (RFC 4616, which RFC 4954 AUTH carries) is UTF-8, and servers take LOGIN so.
        def utf8(challenge: bytes | None = None) -> _Utf8 | None:
            answer = authobject() if challenge is None else authobject(challenge)
            return None if answer is None else _Utf8(answer)

        reply: tuple[int, bytes] = super().auth(
            mechanism,
            utf8,  # type: ignore[arg-type]
            initial_response_ok=initial_response_ok,
        )
        return reply

    def auth_cram_md5(self, challenge: Any = None) -> Any:
        # smtplib keys the HMAC with the ASCII password; the UTF-8 one is what a
        # server holding a non-ASCII password computes.
        if challenge is None:
            return None
        password: str = self.password
        digest = hmac.new(password.encode("utf-8"), challenge, "md5").hexdigest()
        return f"{self.user} {digest}"


class _Utf8(str):
    """A SASL answer that smtplib's ``.encode("ascii")`` turns into its UTF-8 bytes."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str.encode(self, "utf-8", errors)


class _Connection(_TrackingMixin):
    pass


def _smtp_data(raw: bytes) -> bytes:
    """``raw`` as it goes after DATA, up to the final dot: dot-stuffed (RFC 5321
    4.5.2) and ending in CRLF; :data:`_END_OF_DATA` follows it.

    What ``smtplib.SMTP.data`` sends, with a plain byte replacement instead of
    smtplib's regular expression (which costs ten times as much per message).
    """
    body = raw.replace(b"\n.", b"\n..")
    if body.startswith(b"."):
        body = b"." + body
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


#: The end of the message data: until the server has it, it cannot have accepted.
_END_OF_DATA = b".\r\n"


def _spoke_during_data(conn: _TrackingMixin) -> None:
    """Raise if the server has closed the connection, reset it, or replied while the
    message was going out, before the final dot is sent: it cannot have accepted
    then, so the failure is certain (transient, retried) rather than ambiguous."""
    sock = conn.sock
    if sock is None:
        raise smtplib.SMTPServerDisconnected("the connection closed during DATA")
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    if not poller.poll(0):
        return
    # Readable mid-DATA: an early refusal (some servers answer a message over their
    # size at once), or the end of the connection (getreply raises for that).
    code, text = conn.getreply()
    conn.close()
    raise smtplib.SMTPDataError(code, text)


@dataclass
class _Attempt:
    """One message's go on a connection (its own: the connection may be carrying
    the next message while this one's final reply is read)."""

    #: The whole message, final dot included, has gone out.
    data_sent: bool = False
    #: The server's reply to the final dot.
    last_reply: tuple[int, bytes] | None = None
    #: The connection was handed on after the final dot (see _transaction).
    handed_on: bool = False


def _follow(conn: _TrackingMixin, commands: bytes) -> None:
    """Write ``commands`` behind a final dot whose reply another thread is reading,
    then wait for that reply to be read (our replies come after it)."""
    conn.followed = True
    # Not smtplib's send(): the reader closes the connection if its read fails,
    # which must not turn into an AttributeError halfway through our write.
    sock = conn.sock
    if sock is None or conn.broken:
        raise smtplib.SMTPServerDisconnected("the connection failed under the message before")
    try:
        sock.sendall(commands)
    except OSError as err:
        raise smtplib.SMTPServerDisconnected(f"the connection failed: {err}") from err
    if not conn.settle():
        raise smtplib.SMTPServerDisconnected("the connection failed under the message before")


def _transaction(
    conn: _TrackingMixin,
    sender: str,
    recipients: Sequence[str],
    raw: bytes,
    attempt: _Attempt,
    hand_on: Callable[[], bool] | None = None,
) -> dict[str, tuple[int, bytes]]:
    """What ``conn.sendmail`` does, without re-parsing the addresses.

    ``sender`` and ``recipients`` are envelope addresses the library has already
    validated and put in ASCII form (:func:`~tenant_notify._mime.envelope_address`),
    so they go into MAIL and RCPT as they are, where ``sendmail`` would parse each
    again with ``email.utils.parseaddr``. When the server offers PIPELINING (RFC
    2920), MAIL, every RCPT and DATA go out in one write, and ``hand_on`` (when
    given) gives the connection back once the final dot has gone out (it returns
    whether it did): the next
    message's MAIL, RCPT and DATA may follow the dot in the same round trip
    (RFC 2920 3.1: message content may open a group), while this thread reads the
    final reply. The next user reads its own replies after that one
    (:meth:`PooledSMTP.settle`); nothing is sent on this message's behalf after
    the dot (the transaction is over whatever the reply: no RSET).

    Returns the refused recipients and raises the exceptions ``sendmail`` raises,
    in the same cases, so :meth:`SmtpProvider._map_error` treats both alike.
    """
    if conn.broken:  # its last reply's reader saw it fail
        raise smtplib.SMTPServerDisconnected("the connection failed under the message before")
    size = f" SIZE={len(raw)}" if conn.has_extn("size") else ""
    # As bytes, encoded here once: they are ASCII (the addresses were put in ASCII
    # form) and end in CRLF already.
    commands = [f"MAIL FROM:<{sender}>{size}\r\n".encode("ascii")]
    commands += [f"RCPT TO:<{rcpt}>\r\n".encode("ascii") for rcpt in recipients]
    commands.append(b"DATA\r\n")
    pipelined = conn.has_extn("pipelining")
    prior = conn.replying
    if pipelined:
        if prior is not None and not prior.is_set():
            _follow(conn, b"".join(commands))
        elif conn.broken:  # seen by the reader of the reply before, just now
            raise smtplib.SMTPServerDisconnected("the connection failed under the message before")
        else:
            conn.send(b"".join(commands))

    def exchange(index: int) -> tuple[int, bytes]:
        if not pipelined:
            conn.send(commands[index])
        return conn.getreply()

    def give_up(code: int | None = None) -> None:
        # As sendmail does: 421 means the server is closing; else reset.
        if code == 421:
            conn.close()
        else:
            with suppress(smtplib.SMTPServerDisconnected):
                conn.rset()

    mail = exchange(0)
    if mail[0] == 421 or (mail[0] != 250 and not pipelined):
        give_up(mail[0])
        raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
    refused: dict[str, tuple[int, bytes]] = {}
    for index, rcpt in enumerate(recipients, 1):
        reply = exchange(index)
        if reply[0] not in (250, 251):
            refused[rcpt] = reply
        if reply[0] == 421:
            give_up(421)
            raise smtplib.SMTPRecipientsRefused(refused)
    if not pipelined and len(refused) == len(recipients):
        give_up()
        raise smtplib.SMTPRecipientsRefused(refused)
    data = exchange(len(commands) - 1)
    nothing_to_send = mail[0] != 250 or len(refused) == len(recipients)
    if data[0] == 354 and nothing_to_send:
        # The server opened a message that has no one to go to: end it empty.
        conn.send(b".\r\n")
        conn.getreply()
    if mail[0] != 250:
        give_up(mail[0])
        raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
    if len(refused) == len(recipients):
        give_up()
        raise smtplib.SMTPRecipientsRefused(refused)
    if data[0] != 354:
        give_up(data[0])
        raise smtplib.SMTPDataError(*data)
    conn.send(_smtp_data(raw))
    gate = _call_gate.current()
    if gate is not None:
        # The dispatcher records the hand-over before the dot can go (a write it
        # does not wait for); raising here leaves the message without its dot.
        gate.handing()
    _spoke_during_data(conn)
    conn.send(_END_OF_DATA)
    # From here the server may have the whole message: a failure is ambiguous...
    attempt.data_sent = True
    turn: threading.Event | None = None
    if pipelined and hand_on is not None and conn.carried:
        # Only a connection that has carried a message is handed on: a reset after
        # the dot with the next envelope behind it is ambiguous (see above), so a
        # connection not yet known to work (a server that refuses us mid-DATA, a
        # drop during the first message) keeps the narrow window.
        turn = threading.Event()  # set once this message's final reply is read
        conn.followed = False
        conn.replying = turn
        if hand_on():
            attempt.handed_on = True
        else:  # still ours (the provider was closed meanwhile): read the reply first
            conn.replying = turn = None
    try:
        reply = attempt.last_reply = conn.getreply()
        if reply[0] == 250:
            conn.carried += 1
        elif turn is not None and reply[0] == 421:
            conn.broken = True  # the server is closing: the next message finds out
    except smtplib.SMTPServerDisconnected as err:
        # ...but for a reset. A peer resets a connection that receives data after
        # it closed, or that it closes with data unread; TCP keeps order, so the
        # unread data is the end of ours, the final dot: it cannot have accepted.
        # (A server that read the dot and closed answers with FIN, never RST.)
        # Unless the next message's envelope followed the dot: the unread data
        # may be that, and the dot may have been read.
        if isinstance(err.__context__, ConnectionResetError) and not conn.followed:
            attempt.data_sent = False
        conn.broken = turn is not None
        raise
    except BaseException:
        conn.broken = turn is not None
        raise
    finally:
        if turn is not None:
            turn.set()
    if reply[0] != 250:
        if turn is None:
            give_up(reply[0])
        # Else nothing more goes out for this message: the transaction ended with
        # the dot whatever the reply, and the next message's envelope follows it.
        raise smtplib.SMTPDataError(*reply)
    return refused


class _SSLConnection(_TrackingMixin, smtplib.SMTP_SSL):
    pass


class SmtpProvider(Provider):
    """Deliver email through an SMTP server.

    Keyword arguments are the fields of :class:`SmtpConfig`::

        SmtpProvider(host="smtp.example.com", port=587, starttls=True,
                     username="apikey", password="...")

    Raises:
        ConfigurationError: invalid settings, or an unreadable ``ca_file``.
    """

    name: ClassVar[str] = "smtp"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.EMAIL})
    Config: ClassVar[type[ProviderConfig]] = SmtpConfig
    #: Tags and metadata have no place in plain SMTP; the server's own size limit
    #: (its SIZE extension) is not known before connecting, so none is declared.
    capabilities: ClassVar[Capabilities] = Capabilities(
        features=frozenset(
            {Feature.ATTACHMENTS, Feature.INLINE_IMAGES, Feature.CC, Feature.BCC, Feature.HEADERS}
        )
    )

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 25,
        username: str | None = None,
        password: SecretStr | str | None = None,
        starttls: bool = False,
        ssl: bool = False,
        timeout: float = 10.0,
        local_hostname: str | None = None,
        verify_tls: bool = True,
        ca_file: str | None = None,
        dkim_selector: str | None = None,
        dkim_private_key: SecretStr | str | None = None,
        dkim_domain: str | None = None,
        max_connections: int = 10,
        idle_timeout: float = 30.0,
    ) -> None:
        try:
            self._config = SmtpConfig(
                host=host,
                port=port,
                username=username,
                password=password,  # pydantic wraps a str in SecretStr
                starttls=starttls,
                ssl=ssl,
                timeout=timeout,
                local_hostname=local_hostname,
                verify_tls=verify_tls,
                ca_file=ca_file,
                dkim_selector=dkim_selector,
                dkim_private_key=dkim_private_key,  # pydantic wraps a str in SecretStr
                dkim_domain=dkim_domain,
                max_connections=max_connections,
                idle_timeout=idle_timeout,
            )
        except pydantic.ValidationError as err:
            # Built from the error list without the inputs, which may hold the password.
            errors = err.errors(include_input=False, include_url=False)
            locations = [".".join(str(part) for part in e["loc"]) for e in errors]
            problems = "; ".join(
                f"{loc or 'settings'}: {e['msg']}" for loc, e in zip(locations, errors, strict=True)
            )
            raise ConfigurationError(
                f"invalid SMTP settings: {problems}", key=locations[0] or None, provider=self.name
            ) from None
        self._secret_forms = self._auth_forms()
        for secret in self._secret_forms:
            register_secret(secret)  # scrubbed from every text the library lets out
        if self._config.dkim_private_key is not None:
            register_secret(self._config.dkim_private_key.get_secret_value())
        self._tls_context = self._make_tls_context() if (starttls or ssl) else None
        self._dkim: DkimSigner | None = None
        config = self._config
        if config.dkim_selector is not None and config.dkim_private_key is not None:
            try:
                self._dkim = DkimSigner(
                    config.dkim_selector,
                    config.dkim_private_key.get_secret_value(),
                    config.dkim_domain,
                )
            except ConfigurationError as err:
                err.provider = self.name
                raise
        # What a pooled connection was opened and authenticated with: only a send
        # with the same settings may reuse it (SecretStr compares by its secret).
        self._identity = (
            config.username,
            config.password,
            config.starttls,
            config.ssl,
            config.timeout,
            config.local_hostname,
            config.verify_tls,
            config.ca_file,
        )
        # close() moves it on: connections leased before are not kept after.
        self._generation = 0
        self._server: tuple[int, ServerPool] | None = None  # (pool epoch, this server's pool)

    @property
    def config(self) -> SmtpConfig:
        """The validated settings (the password stays a ``SecretStr``)."""
        return self._config

    def _make_tls_context(self) -> _ssl.SSLContext:
        try:
            context = _ssl.create_default_context(cafile=self._config.ca_file)
        except (OSError, _ssl.SSLError) as err:
            raise ConfigurationError(
                f"cannot load CA file {self._config.ca_file!r}: {err}",
                key="ca_file",
                provider=self.name,
            ) from err
        if not self._config.verify_tls:
            context.check_hostname = False
            context.verify_mode = _ssl.CERT_NONE
        return context

    # --- sending ---------------------------------------------------------------------

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        raw, message_id = wire_bytes(message)
        sender = envelope_address(message.from_addr.email, "from_addr.email")
        if self._dkim is not None:
            raw = self._dkim.signature(raw, sender.rpartition("@")[2]) + raw
        recipients = [
            envelope_address(addr.email, f"{field}[{i}].email")
            for field, addresses in (("to", message.to), ("cc", message.cc), ("bcc", message.bcc))
            for i, addr in enumerate(addresses)
        ]
        context: _ErrorContext = {
            "provider": self.name,
            "notification_id": message.notification_id or None,
            "tenant_id": message.tenant_id or None,
        }
        refused, reply = self._deliver(sender, recipients, raw, context)
        detail: dict[str, Any] = {}
        if reply is not None:
            detail["smtp_reply"] = self._reply_text(*reply)
        if refused:
            detail["refused"] = {
                rcpt: self._reply_text(code, text) for rcpt, (code, text) in refused.items()
            }
        return DeliveryResult(provider=self.name, provider_message_id=message_id, detail=detail)

    def _deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        raw: bytes,
        context: _ErrorContext,
    ) -> tuple[dict[str, tuple[int, bytes]], tuple[int, bytes] | None]:
        lease = self._lease(context)
        generation = self._generation
        keep = False
        released = False

        def hand_on() -> bool:
            # The final dot is out: the next message may follow it (see _transaction).
            nonlocal released
            if generation != self._generation:
                return False  # closed meanwhile: not kept, closed once the reply is in
            released = True
            lease.server.release(lease, keep=True)
            return True

        try:
            conn = cast(_TrackingMixin, lease.conn)  # the pool holds what _connect made
            attempt = _Attempt()
            try:
                result = self._sendmail(conn, sender, recipients, raw, attempt, hand_on)
                keep = True
                return result
            except smtplib.SMTPException as err:
                if not (lease.reused and self._connection_was_stale(attempt, err)):
                    keep = self._reusable_after(err)
                    raise self._map_error(err, attempt.data_sent, context) from err
                # The server had closed the idle connection; nothing was delivered.
                get_logger().debug(
                    "smtp_reconnect",
                    provider=self.name,
                    host=self._config.host,
                    port=self._config.port,
                )
            except OSError as err:
                if not (lease.reused and not attempt.data_sent):
                    raise self._map_error(err, attempt.data_sent, context) from err
            if released:
                # Handed on after the dot, then reset before the server read it (and
                # nothing followed): a slot again, most likely this same connection,
                # marked broken. One of ours with a reply coming is used as it is.
                released = False
                lease = self._lease(context)
                conn = cast(_TrackingMixin, lease.conn)
                if conn.broken or conn.sock is None:
                    conn.close()
                    conn = self._connect(context)
                    lease.conn = conn
            else:
                conn.close()
                # A fresh connection in the same slot of the pool.
                conn = self._connect(context)
                lease.conn = conn
            attempt = _Attempt()
            try:
                result = self._sendmail(conn, sender, recipients, raw, attempt, hand_on)
                keep = True
                return result
            except OSError as err:  # SMTPException included
                keep = self._reusable_after(err)
                raise self._map_error(err, attempt.data_sent, context) from err
        finally:
            if not released:
                lease.server.release(lease, keep=keep and generation == self._generation)
            else:
                lease.server.settled()

    @staticmethod
    def _sendmail(
        conn: _TrackingMixin,
        sender: str,
        recipients: Sequence[str],
        raw: bytes,
        attempt: _Attempt,
        hand_on: Callable[[], bool],
    ) -> tuple[dict[str, tuple[int, bytes]], tuple[int, bytes] | None]:
        refused = _transaction(conn, sender, recipients, raw, attempt, hand_on)
        return refused, attempt.last_reply

    @staticmethod
    def _connection_was_stale(attempt: _Attempt, err: smtplib.SMTPException) -> bool:
        """Whether ``err`` says the connection had died before this message went out."""
        if attempt.data_sent:
            return False
        if isinstance(err, smtplib.SMTPServerDisconnected):
            return True
        if isinstance(err, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _ in err.recipients.values()]
            return bool(codes) and all(code == 421 for code in codes)
        # 421: the server announced it is closing the channel (idle timeout).
        return isinstance(err, smtplib.SMTPResponseException) and err.smtp_code == 421

    @staticmethod
    def _reusable_after(err: Exception) -> bool:
        # After a plain refusal smtplib has sent RSET and the connection is still
        # good; anything else leaves it in an unknown state.
        return isinstance(err, smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused)

    # --- connections -----------------------------------------------------------------

    def _lease(self, context: _ErrorContext) -> Lease:
        """A connection from the process's pool for this server (see the module doc)."""
        cfg = self._config
        pool = shared_pool()
        held = self._server
        if held is not None and held[0] == pool.epoch:
            server = held[1]
        else:
            # Registered once (the smallest bound of the tables naming the server
            # holds for all), then kept: two locks a message less.
            server = pool.server(cfg.host, cfg.port, cfg.max_connections, cfg.idle_timeout)
            self._server = (pool.epoch, server)
        lease = server.acquire(self._identity, lambda: self._connect(context), cfg.timeout)
        if lease is None:
            raise TransientDeliveryError(
                f"no free connection to the SMTP server {cfg.host}:{cfg.port} within "
                f"{cfg.timeout}s: {server.limit} are open and busy (max_connections)",
                **context,
            )
        return lease

    def _connect(self, context: _ErrorContext) -> _TrackingMixin:
        cfg = self._config
        local_hostname = cfg.local_hostname or _default_local_hostname()
        conn: _TrackingMixin
        if cfg.ssl:
            conn = _SSLConnection(
                local_hostname=local_hostname, timeout=cfg.timeout, context=self._tls_context
            )
        else:
            conn = _Connection(local_hostname=local_hostname, timeout=cfg.timeout)
        try:
            code, greeting = conn.connect(cfg.host, cfg.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, greeting)
            conn.ehlo_or_helo_if_needed()
            if cfg.starttls:
                conn.starttls(context=self._tls_context)
                conn.ehlo()
            if cfg.username is not None and cfg.password is not None:
                conn.login(cfg.username, cfg.password.get_secret_value())
        except OSError as err:  # SMTPException and ssl.SSLError included
            conn.close()
            raise self._map_error(err, False, context, connecting=True) from err
        get_logger().debug("smtp_connected", provider=self.name, host=cfg.host, port=cfg.port)
        return conn

    def close(self) -> None:
        """Say QUIT on this provider's idle connections and close them. Safe to call twice.

        A send in progress on another thread finishes, and its connection is
        closed then rather than kept. The provider stays usable: the next send
        opens a new connection.
        """
        self._generation += 1
        cfg = self._config
        server = shared_pool().server(cfg.host, cfg.port, cfg.max_connections, cfg.idle_timeout)
        for conn in server.take_idle(self._identity):
            quit_quietly(conn)

    # --- errors ----------------------------------------------------------------------

    def _map_error(
        self,
        err: OSError,
        data_sent: bool,
        context: _ErrorContext,
        *,
        connecting: bool = False,
    ) -> DeliveryError:
        where = f"{self._config.host}:{self._config.port}"
        if isinstance(err, smtplib.SMTPAuthenticationError):
            response = self._reply_text(err.smtp_code, err.smtp_error)
            if 400 <= err.smtp_code < 500:
                return TransientDeliveryError(
                    f"SMTP authentication failed temporarily at {where}",
                    provider_response=response,
                    **context,
                )
            return PermanentDeliveryError(
                f"SMTP authentication failed at {where}; check the username and password",
                provider_response=response,
                sender_fault=True,
                **context,
            )
        if isinstance(err, smtplib.SMTPRecipientsRefused):
            replies = list(
                dict.fromkeys(self._reply_text(c, t) for c, t in err.recipients.values())
            )
            codes = [code for code, _ in err.recipients.values()]
            transient = bool(codes) and all(400 <= code < 500 for code in codes)
            cls = TransientDeliveryError if transient else PermanentDeliveryError
            texts = [_enhanced(t) for c, t in err.recipients.values() if 500 <= c < 600]
            return cls(
                "the SMTP server refused every recipient",
                provider_response="; ".join(replies) or None,
                recipient_error=not transient and _recipients_at_fault(err.recipients),
                sender_fault=any(t.startswith(_POLICY) for t in texts),
                **context,
            )
        if isinstance(err, smtplib.SMTPConnectError):
            return TransientDeliveryError(
                f"the SMTP server at {where} refused the connection",
                provider_response=self._reply_text(err.smtp_code, err.smtp_error),
                **context,
            )
        if isinstance(err, smtplib.SMTPResponseException):
            response = self._reply_text(err.smtp_code, err.smtp_error)
            what = _REFUSAL_TEXT.get(type(err), "the SMTP server answered with an error")
            if 500 <= err.smtp_code < 600:
                # 5.7.x to MAIL or DATA: the receiving side's policy refuses us (DMARC,
                # 550 5.7.26; an unauthenticated or unauthorised sender, 5.7.1).
                policy = _enhanced(err.smtp_error).startswith(_POLICY)
                return PermanentDeliveryError(
                    what, provider_response=response, sender_fault=policy, **context
                )
            return TransientDeliveryError(what, provider_response=response, **context)
        if isinstance(err, smtplib.SMTPNotSupportedError):
            return PermanentDeliveryError(
                f"the SMTP server at {where} does not support what the settings ask for: "
                f"{self._scrub(str(err))}",
                **context,
            )
        if isinstance(err, _ssl.SSLCertVerificationError):
            return PermanentDeliveryError(
                f"TLS certificate verification failed for {where}: {err.verify_message}",
                **context,
            )
        if data_sent:
            return AmbiguousDeliveryError(
                "the SMTP connection failed after the message was sent and before the "
                f"server confirmed it; it may have been delivered ({self._scrub(str(err))})",
                **context,
            )
        if isinstance(err, smtplib.SMTPServerDisconnected):
            return TransientDeliveryError(
                f"the SMTP server at {where} closed the connection ({self._scrub(str(err))})",
                **context,
            )
        if isinstance(err, socket.gaierror):
            return TransientDeliveryError(
                f"cannot resolve SMTP host {self._config.host!r}: {err.strerror or err}",
                **context,
            )
        if isinstance(err, TimeoutError):
            doing = "connecting to" if connecting else "talking to"
            return TransientDeliveryError(f"timed out {doing} the SMTP server {where}", **context)
        if isinstance(err, smtplib.SMTPException):
            return TransientDeliveryError(
                f"SMTP error with {where}: {self._scrub(str(err))}", **context
            )
        reason = err.strerror or str(err) or type(err).__name__
        doing = "cannot connect to" if connecting else "network error with"
        return TransientDeliveryError(f"{doing} the SMTP server {where}: {reason}", **context)

    def _reply_text(self, code: int, text: bytes | str) -> str:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._scrub(f"{code} {' '.join(text.split())}".strip())

    def _scrub(self, text: str) -> str:
        """Remove the password (plain or in the base64 AUTH forms) from ``text``."""
        return redact_secrets(text, self._secret_forms)

    def _auth_forms(self) -> tuple[str, ...]:
        """The password as a server may echo it: plain, and in the AUTH LOGIN and
        AUTH PLAIN base64 forms."""
        cfg = self._config
        secret = cfg.password.get_secret_value() if cfg.password is not None else ""
        if not secret:
            return ()
        user = cfg.username or ""
        return (
            secret,
            base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"\0{user}\0{secret}".encode()).decode(),
        )

    def __repr__(self) -> str:
        cfg = self._config
        user = f" user={cfg.username!r}" if cfg.username else ""
        tls = " ssl" if cfg.ssl else " starttls" if cfg.starttls else ""
        return f"<{type(self).__name__} {self.name!r} {cfg.host}:{cfg.port}{user}{tls}>"


_REFUSAL_TEXT: dict[type[smtplib.SMTPResponseException], str] = {
    smtplib.SMTPSenderRefused: "the SMTP server refused the sender",
    smtplib.SMTPDataError: "the SMTP server refused the message",
    smtplib.SMTPHeloError: "the SMTP server refused EHLO/HELO",
}


#: The enhanced status code class (RFC 3463) of a policy refusal of the sender.
_POLICY = "5.7."


def _enhanced(text: bytes | str) -> str:
    """The reply text from its enhanced status code on (a space added after it)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return text.lstrip() + " "


def _recipients_at_fault(replies: dict[str, tuple[int, bytes]]) -> bool:
    """Whether 5xx replies to RCPT refuse the recipients themselves.

    ``550 5.1.1 no such user`` does: another provider would be refused the same
    way. A 5.7.x reply (``554 5.7.1 relaying denied``, a blocked sending IP) is
    about this server's policy towards us, and another provider may get through.
    """
    permanent = [
        text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)
        for code, text in replies.values()
        if 500 <= code < 600
    ]
    return bool(permanent) and not any(text.lstrip().startswith("5.7.") for text in permanent)


@functools.cache
def _default_local_hostname() -> str:
    # What smtplib does for every connection when local_hostname is None, done
    # once per process: getfqdn() can block on a reverse DNS lookup.
    fqdn = socket.getfqdn()
    if "." in fqdn:
        return fqdn
    try:
        return f"[{socket.gethostbyname(socket.gethostname())}]"
    except OSError:
        return "[127.0.0.1]"
