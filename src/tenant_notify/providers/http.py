"""The pipeline every HTTP API provider runs (``sendgrid``, ``twilio``, ``ses``, ``sns``,
``postmark``): build the request, authenticate it, post it, classify the reply, parse
the result.

:class:`HttpProvider` owns what every REST adapter needs and should not get wrong
twice: pooled, keep-alive ``httpx`` clients per provider instance (created on
first use, replaced after a fork; the instance's ``max_connections`` split among
them, each worker thread keeping to one, see :meth:`HttpProvider._http`), connect and read
timeouts, authentication per request (an ``httpx.Auth``, so a signature over each
request, AWS SigV4, fits as well as a fixed token), the translation of every
``httpx`` failure into the library's error tree, the status-code ladder, rate-limit
headers, and scrubbing credentials out of anything quoted.

Subclasses set ``Config`` (an :class:`HttpConfig` subclass: ``__init__`` validates
the keyword settings against it into ``self.config``) and fill these hooks, and
nothing else (they must not override ``send``, ``send_email``, ``send_sms`` or
:meth:`HttpProvider.deliver`):

* :meth:`~HttpProvider.build_request` (must): the :class:`HttpRequest` for a message.
* :meth:`~HttpProvider.auth` (must): the ``httpx.Auth`` that authenticates each request.
* :meth:`~HttpProvider.secrets` (must): every secret string, scrubbed from error text.
* :meth:`~HttpProvider.parse_result` (may): the ``DeliveryResult`` of a 2xx reply;
  by default the provider message id from :meth:`~HttpProvider.message_id`.
* :meth:`~HttpProvider.error_details` (may): the provider's error code and text from
  an error reply; by default none, and the reply's body as text.
* :meth:`~HttpProvider.classify_error` (may): the ``DeliveryError`` for the
  provider's own error codes; return None to fall through to the ladder.

The ladder, for replies ``classify_error`` leaves alone (every error carries the
provider, the notification and tenant ids, and the reply as ``provider_response``):

==========================  ===================================================
Reply                       Raised
==========================  ===================================================
2xx                         accepted: :meth:`~HttpProvider.parse_result`
429                         ``TransientDeliveryError``, ``retry_after`` from
                            ``Retry-After`` or ``X-RateLimit-Reset``, ``throttled``
                            (the dispatcher pauses the account for every worker)
408, 5xx                    ``TransientDeliveryError`` (``retry_after`` likewise)
401, 403                    ``PermanentDeliveryError``: the credentials were refused,
                            with ``sender_fault`` (the sender-fault breaker counts it)
413                         ``PermanentDeliveryError``: the message is too large
other 4xx, 1xx, 3xx         ``PermanentDeliveryError``
==========================  ===================================================

Transport failures map like this (``AmbiguousDeliveryError`` is never retried by
the default policy and never fails over, because the provider may have the
message):

===========================================  ======================================
What happened                                Raised
===========================================  ======================================
connection refused, DNS failure, connect     ``TransientDeliveryError``: the
timeout, no free pooled connection, a write  request never reached the provider
failure or timeout before the request was
complete
TLS certificate verification failed          ``PermanentDeliveryError``
read timeout, connection dropped or a        ``AmbiguousDeliveryError``: the request
garbled reply after the whole request went   was sent, the answer was lost
out
===========================================  ======================================
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import itertools
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypedDict
from urllib.parse import urlsplit

import pydantic
from pydantic import Field, field_validator

from .. import __version__, _call_gate, _process
from .._concurrency import delivery_concurrency
from .._redact import redact_secrets, register_secret
from ..errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    MissingDependencyError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from ..models import DeliveryResult, EmailMessage, Message, SmsMessage
from .base import Provider, ProviderConfig

try:
    # httpx imports its transport (httpcore, h11) when its first client is made:
    # here instead, not in a worker's first send while the others wait for it.
    import httpcore  # noqa: F401
    import httpx
except ModuleNotFoundError as err:  # pragma: no cover - exercised with httpx hidden
    raise MissingDependencyError("httpx", "http") from err

__all__ = [
    "ErrorContext",
    "ErrorDetails",
    "HeaderAuth",
    "HttpConfig",
    "HttpProvider",
    "HttpRequest",
    "config_error",
    "json_object",
    "retry_after",
]

#: How much of a provider's reply is quoted in an error, at most.
MAX_QUOTED_CHARS = 2000
#: Keep-alive connections in each of an instance's clients (see HttpProvider._http).
CONNECTIONS_PER_CLIENT = 4
USER_AGENT = f"tenant-notify/{__version__} httpx/{httpx.__version__}"


class ErrorContext(TypedDict):
    """The context every DeliveryError of one send carries."""

    provider: str
    notification_id: str | None
    tenant_id: str | None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What :meth:`HttpProvider.build_request` returns: one POST.

    Attributes:
        path: Under ``base_url`` (``"/v3/mail/send"``).
        content: The body bytes, exactly as they go out (and are signed).
        content_type: Its ``Content-Type``.
        headers: Any further request headers.
    """

    path: str
    content: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """What a provider's error reply says, from :meth:`HttpProvider.error_details`.

    Attributes:
        text: The provider's own message(s), one line (scrubbed by the base).
        code: The provider's error code (Twilio ``21211``, AWS ``Throttling``), if any.
    """

    text: str
    code: str | int | None = None


class HeaderAuth(httpx.Auth):
    """Authenticate each request with one header (``Authorization: Bearer ...``,
    ``X-Postmark-Server-Token: ...``). The value never appears in a repr."""

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._name] = self._value
        yield request

    def __repr__(self) -> str:
        return f"<HeaderAuth {self._name}: ***>"


class HttpConfig(ProviderConfig):
    """Settings every HTTP API provider has.

    Attributes:
        base_url: Scheme and host of the API (a path prefix is allowed); point it
            at a test server or a regional endpoint.
        connect_timeout: Seconds allowed to open a connection (and to wait for a
            free pooled one). A connect timeout is transient: nothing was sent.
        read_timeout: Seconds allowed for the request to go out and for each read
            of the reply. Running out while waiting for the reply is *ambiguous*.
        max_connections: Connections the instance keeps open at most, split
            among a few pooled clients (about four connections each) that the
            worker threads keep to, one each; a thread whose client's connections
            are all busy waits up to ``connect_timeout``.
            Default: as many as the process runs deliveries at once (the
            in-process transport's ``workers``, the worker's ``threads``; 20
            when neither runs here).
        verify_tls: Verify the server certificate (turn off only for tests).
    """

    base_url: str
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=20.0, gt=0)
    max_connections: int | None = Field(default=None, ge=1, le=1000)
    verify_tls: bool = True

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        return value.rstrip("/")


class HttpProvider(Provider, ABC):
    """Base of the providers that speak a REST API over one pooled httpx client.

    Subclasses fill the hooks (see the module docstring); the client, timeouts,
    authentication, the reply ladder, error translation and secret scrubbing are
    done here.
    """

    Config: ClassVar[type[ProviderConfig]] = HttpConfig
    #: Shown in error messages ("SendGrid", "Twilio").
    service: ClassVar[str] = ""
    #: What a 401 or 403 means for this provider, for the error message.
    credentials_refused: ClassVar[str] = "the credentials were refused"

    #: The validated settings (an instance of the subclass's ``Config``).
    config: HttpConfig

    def __init__(self, **settings: Any) -> None:
        """Validate ``settings`` against ``Config``.

        Raises:
            ConfigurationError: naming the setting at fault, without its value
                (which may be a key or a token).
        """
        config_class = type(self).Config
        assert issubclass(config_class, HttpConfig)
        try:
            config = config_class.model_validate(settings)
        except pydantic.ValidationError as err:
            raise config_error(err, self.name) from None
        self.config = config
        self._http_config = config
        for secret in self.secrets():
            register_secret(secret)  # scrubbed from every text the library lets out
        # The clients of this process (see _http): created on first use, each
        # thread keeping to one of them.
        self._clients: list[httpx.Client | None] = []
        self._client_lock = threading.Lock()
        self._thread_shard = threading.local()
        self._next_shard = itertools.count()
        self._urls: dict[str, httpx.URL] = {}
        self._pid = _process.pid()

    # --- hooks ---------------------------------------------------------------------

    @abstractmethod
    def build_request(self, message: Message) -> HttpRequest:
        """The request that sends ``message``.

        Raises:
            ValidationError: the message cannot be sent by this provider (it
                propagates; nothing is posted).
        """

    @abstractmethod
    def auth(self) -> httpx.Auth:
        """What authenticates each request (called once per client)."""

    @abstractmethod
    def secrets(self) -> Iterable[str]:
        """Every secret value, to scrub from any text quoted in an error."""

    def message_id(self, response: httpx.Response) -> str | None:
        """The provider's id of an accepted message, from its reply (default: none)."""
        return None

    def parse_result(self, response: httpx.Response, message: Message) -> DeliveryResult:
        """The result of a 2xx reply (default: :meth:`message_id` and the status code)."""
        return DeliveryResult(
            provider=self.name,
            provider_message_id=self.message_id(response),
            detail={"status_code": response.status_code},
        )

    def error_details(self, response: httpx.Response) -> ErrorDetails:
        """The provider's error code and message in an error reply (default: the
        body as text, no code)."""
        return ErrorDetails(self._reply_text(response) or response.reason_phrase)

    def classify_error(
        self, response: httpx.Response, details: ErrorDetails, reply: str, context: ErrorContext
    ) -> DeliveryError | None:
        """The error for a reply the provider's own codes decide, or None for the
        ladder. ``reply`` is the scrubbed ``provider_response`` to attach."""
        return None

    # --- the pipeline ------------------------------------------------------------------

    def send_email(self, message: EmailMessage) -> DeliveryResult:
        return self.deliver(message)

    def send_sms(self, message: SmsMessage) -> DeliveryResult:
        return self.deliver(message)

    def deliver(self, message: Message) -> DeliveryResult:
        """Build, authenticate and post the request; classify the reply."""
        context: ErrorContext = {
            "provider": self.name,
            "notification_id": message.notification_id or None,
            "tenant_id": message.tenant_id or None,
        }
        request = self.build_request(message)
        response = self._post(request, context)
        return self.parse_result(response, message)

    # --- the client ------------------------------------------------------------------

    @property
    def max_connections(self) -> int:
        """Keep-alive connections kept at most: the setting, else the process's concurrency."""
        return self._http_config.max_connections or delivery_concurrency()

    def _http(self) -> httpx.Client:
        """This thread's client.

        The instance's ``max_connections`` are split among clients of about
        :data:`CONNECTIONS_PER_CLIENT` each, and each thread keeps to one, taken in
        turn when it first sends. One pool shared by every thread cost a
        quarter of httpx's CPU per request with 32 threads: each request and each
        reply's end takes the pool's lock, which the other threads wait on, and
        checks every connection of the pool under it (a ``poll`` on each idle one).
        """
        shard = getattr(self._thread_shard, "index", None)
        if shard is None:
            shard = self._thread_shard.index = next(self._next_shard)
        clients = self._clients
        if clients and self._pid == _process.pid():
            client = clients[shard % len(clients)]
            if client is not None:
                return client
        with self._client_lock:
            if self._pid != _process.pid():
                # A forked child must not share the parent's sockets: forget them
                # without closing (closing could disturb the parent's sessions).
                self._clients = []
                self._pid = _process.pid()
            if not self._clients:
                total = self.max_connections
                self._clients = [None] * -(-total // CONNECTIONS_PER_CLIENT)
            index = shard % len(self._clients)
            client = self._clients[index]
            if client is None:
                client = self._clients[index] = self._new_client(index)
            return client

    def _new_client(self, index: int = 0) -> httpx.Client:
        """Client ``index`` of the instance's: ``max_connections`` split as evenly
        as the threads are (thread k keeps to client k modulo their number, so
        with as many threads as connections each client has one per thread)."""
        cfg = self._http_config
        base, extra = divmod(self.max_connections, max(1, len(self._clients)))
        connections = base + (index < extra)
        return httpx.Client(
            base_url=cfg.base_url,
            auth=self.auth(),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=httpx.Timeout(
                connect=cfg.connect_timeout,
                read=cfg.read_timeout,
                write=cfg.read_timeout,
                pool=cfg.connect_timeout,
            ),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            verify=_ssl_context(cfg.verify_tls, tls=cfg.base_url.startswith("https:")),
            follow_redirects=False,
            # Credentials come from the settings alone, never from ~/.netrc.
            trust_env=False,
        )

    def _url(self, path: str) -> httpx.URL:
        """``base_url`` and ``path`` as one absolute URL, parsed once per path (a
        relative one is parsed and joined to the base on every request)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._http_config.base_url + path)
        return url

    def close(self) -> None:
        """Close the pooled connections. The provider stays usable: the next send
        opens new clients. Safe to call more than once."""
        with self._client_lock:
            clients, self._clients = self._clients, []
        if self._pid == _process.pid():
            for client in clients:
                if client is not None:
                    client.close()

    # --- one request -------------------------------------------------------------------

    def _post(self, request: HttpRequest, context: ErrorContext) -> httpx.Response:
        """POST ``request``; return a 2xx response or raise a DeliveryError.

        Inside a dispatcher's call (a :mod:`~tenant_notify._call_gate` is set) the
        account's pause is checked again right before the request is written, and
        a throttling reply pauses the account before the connection is free for
        another thread (see :class:`_GateTrace`).
        """
        headers = {"Content-Type": request.content_type, **request.headers}
        gate = _call_gate.current()
        trace = None if gate is None else _GateTrace(gate)
        try:
            response = self._http().post(
                self._url(request.path),
                content=request.content,
                headers=headers,
                extensions=None if trace is None else {"trace": trace},
            )
        except httpx.HTTPError as err:
            raise self._map_transport_error(err, context) from err
        if response.is_success:
            return response
        error = self._refused(response, context)
        if trace is not None and error.throttled and not trace.told:
            # A throttling the status did not show (SES's code in a 400, Twilio's
            # in the body); a 429 was told already, at its headers.
            trace.told = True
            trace.gate.throttled(error.retry_after)
        raise error

    def _refused(self, response: httpx.Response, context: ErrorContext) -> DeliveryError:
        status = response.status_code
        details = self.error_details(response)
        reply = self._scrub(f"{status} {' '.join(details.text.split())}".strip())
        specific = self.classify_error(response, details, reply, context)
        if specific is not None:
            return specific
        service = self.service
        if status == 429:
            return TransientDeliveryError(
                f"{service} rate limit reached",
                provider_response=reply,
                retry_after=retry_after(response.headers),
                throttled=True,
                **context,
            )
        if status == 408 or status >= 500:
            return TransientDeliveryError(
                f"{service} answered {status}",
                provider_response=reply,
                retry_after=retry_after(response.headers),
                **context,
            )
        if status in (401, 403):
            # The tenant's account is what was refused (its key, its unverified sender
            # identity): a sender fault, counted by the breaker.
            return PermanentDeliveryError(
                f"{service} refused the request: {self.credentials_refused}",
                provider_response=reply,
                sender_fault=True,
                **context,
            )
        if status == 413:
            return PermanentDeliveryError(
                f"the message is too large for {service}", provider_response=reply, **context
            )
        return PermanentDeliveryError(
            f"{service} refused the request ({status})", provider_response=reply, **context
        )

    def _map_transport_error(self, err: httpx.HTTPError, context: ErrorContext) -> DeliveryError:
        where = self._http_config.base_url
        reason = self._scrub(str(err)) or type(err).__name__
        if isinstance(err, httpx.ConnectError) and _cert_failure(err):
            return PermanentDeliveryError(
                f"TLS certificate verification failed for {where}: {reason}", **context
            )
        if isinstance(err, httpx.ConnectTimeout):
            return TransientDeliveryError(f"timed out connecting to {where}", **context)
        if isinstance(err, httpx.PoolTimeout):
            return TransientDeliveryError(
                f"no free connection to {where} within the connect timeout "
                "(raise max_connections?)",
                **context,
            )
        if isinstance(err, httpx.ConnectError | httpx.ProxyError):
            return TransientDeliveryError(f"cannot connect to {where}: {reason}", **context)
        if isinstance(err, httpx.WriteTimeout | httpx.WriteError):
            # The request did not go out whole, so the server cannot have acted on it.
            return TransientDeliveryError(
                f"the connection to {where} failed while sending the request: {reason}",
                **context,
            )
        if isinstance(err, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return PermanentDeliveryError(f"bad base_url {where!r}: {reason}", **context)
        if isinstance(err, httpx.LocalProtocolError):
            return PermanentDeliveryError(f"could not build the request: {reason}", **context)
        if isinstance(err, httpx.ReadTimeout):
            return AmbiguousDeliveryError(
                f"no reply from {self.service} within {self._http_config.read_timeout}s after "
                "the request was sent; the message may have been accepted",
                **context,
            )
        # ReadError, RemoteProtocolError and anything else: the request had gone out.
        return AmbiguousDeliveryError(
            f"the connection to {where} failed after the request was sent; the message may "
            f"have been accepted ({reason})",
            **context,
        )

    # --- helpers for subclasses ------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` with every secret of this provider (and every registered one) as ``***``."""
        return redact_secrets(text, self.secrets())

    def _reply_text(self, response: httpx.Response) -> str:
        """The reply body as quotable text: scrubbed, one line, capped."""
        try:
            text = response.text
        except (httpx.HTTPError, UnicodeDecodeError, LookupError):
            text = ""
        text = " ".join(text.split())
        if len(text) > MAX_QUOTED_CHARS:
            text = text[:MAX_QUOTED_CHARS] + "..."
        return self._scrub(text)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._http_config.base_url}>"


class _GateTrace:
    """httpcore's ``trace`` extension for one request, speaking to the call's gate.

    httpcore calls it at each step of the request on the connection it got: the
    step ``send_request_headers`` starts once the request has a connection, right
    before its first byte is written, so :meth:`CallGate.before_request
    <tenant_notify._call_gate.CallGate.before_request>` there sees a pause
    recorded while this thread waited (for a connection, a connect, the
    interpreter); stopping there closes that connection, the price of a call that
    did not go. Once the request may go, the gate records the hand-over
    (:meth:`CallGate.handing <tenant_notify._call_gate.CallGate.handing>`) before
    its first byte is written, and checks once more after that record (a write
    to Redis, during which other threads run), the last thing before the write.
    ``receive_response_headers`` completes with the status and headers before the
    body is read and the connection goes back to the pool: a 429 tells the gate
    then, so the next thread's check sees it.
    """

    __slots__ = ("gate", "told")

    def __init__(self, gate: _call_gate.CallGate) -> None:
        self.gate = gate
        self.told = False  # the gate heard of a throttling in this reply

    # httpcore names its steps "<http11|http2>.<step>.<started|complete|failed>".
    _WRITING = frozenset(
        {"http11.send_request_headers.started", "http2.send_request_headers.started"}
    )
    _ANSWERED = frozenset(
        {"http11.receive_response_headers.complete", "http2.receive_response_headers.complete"}
    )

    def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        if event in self._WRITING:
            self.gate.before_request()
            # The request goes now: the provider may have it from here.
            self.gate.handing()
            # Recording the hand-over wrote to Redis, and the interpreter may have
            # run other threads meanwhile (one may have read a 429): look once more,
            # the last thing before the write. Stopped here, the attempt's deferral
            # clears the hand-over record again.
            self.gate.before_request()
        elif event in self._ANSWERED:
            answer = info.get("return_value")
            if answer and answer[1] == 429:
                self.told = True
                self.gate.throttled(retry_after(httpx.Headers(answer[3])))


_SSL_CONTEXTS: dict[tuple[int, bool, bool], ssl.SSLContext] = {}
_SSL_LOCK = threading.Lock()


def _ssl_context(verify: bool, *, tls: bool) -> ssl.SSLContext:
    """The TLS settings of this process's clients: one context for every client of
    every provider instance (loading the CA bundle costs tens of milliseconds of
    CPU, and 200 tenants' accounts are 200 instances), as httpx makes it, without
    the environment's SSL_CERT_FILE or _DIR. For an ``http://`` base URL (a test
    server) one that loads nothing: it is never used (no redirect is followed),
    and it would verify against no certificate at all if it were."""
    pid = _process.pid()
    key = (pid, verify, tls)
    context = _SSL_CONTEXTS.get(key)
    if context is None:
        with _SSL_LOCK:
            context = _SSL_CONTEXTS.get(key)
            if context is None:
                if tls:
                    context = httpx.create_ssl_context(verify=verify, trust_env=False)
                else:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                # Another process's (made before a fork) go; this one's other
                # settings stay (clearing them all, a process with both would
                # load the CA bundle again at every other client).
                for other in [k for k in _SSL_CONTEXTS if k[0] != pid]:
                    del _SSL_CONTEXTS[other]
                _SSL_CONTEXTS[key] = context
    return context


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a rate-limited client should wait, from the reply's headers.

    Reads ``Retry-After`` (seconds or an HTTP date) and ``X-RateLimit-Reset``
    (epoch seconds, as SendGrid sends it); the later of the two wins. None when
    neither is there or readable.
    """
    now = time.time() if now is None else now
    waits = []
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            waits.append(float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=dt.UTC)
                waits.append(when.timestamp() - now)
    reset = headers.get("x-ratelimit-reset")
    if reset:
        with contextlib.suppress(ValueError):
            waits.append(float(reset.strip()) - now)
    if not waits:
        return None
    return max(0.0, max(waits))


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The reply's JSON object, or {} when it is not one."""
    try:
        data = response.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _cert_failure(err: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(err)


def config_error(err: pydantic.ValidationError, provider: str) -> ConfigurationError:
    """A ConfigurationError for invalid provider settings, built without the input
    values (which may hold a key or a token)."""
    errors = err.errors(include_input=False, include_url=False)
    locations = [".".join(str(part) for part in e["loc"]) for e in errors]
    problems = "; ".join(
        f"{loc or 'settings'}: {e['msg']}" for loc, e in zip(locations, errors, strict=True)
    )
    return ConfigurationError(
        f"invalid {provider} settings: {problems}", key=locations[0] or None, provider=provider
    )
