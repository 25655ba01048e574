"""The pipeline shared by the HTTP API providers (``sendgrid``, ``twilio``).

:class:`HttpProvider` owns what every REST adapter needs and should not get
wrong twice: one pooled, keep-alive ``httpx.Client`` per provider instance
(created on first use, shared by all threads, replaced after a fork), connect and
read timeouts, the translation of every ``httpx`` failure into the library's
error tree, rate-limit headers, and scrubbing credentials out of anything quoted.

Subclasses fill narrow hooks and must not override ``send``, ``send_email``,
``send_sms`` (when they do not serve that channel) or :meth:`HttpProvider._post`:

* ``_auth_header()`` (must): the value of the ``Authorization`` header.
* ``_secrets()`` (must): every secret string, to be scrubbed from error text.
* ``_refused(response, context)`` (must): the :class:`DeliveryError` for a
  non-success reply; :meth:`HttpProvider._reply_text` and :func:`retry_after`
  help.
* ``send_email`` / ``send_sms`` (must, for the channels served): build the request
  body, call :meth:`HttpProvider._post`, turn the reply into a ``DeliveryResult``.

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
import os
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import ClassVar, TypedDict
from urllib.parse import urlsplit

import pydantic
from pydantic import Field, field_validator

from .. import __version__
from ..errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    MissingDependencyError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from .base import Provider, ProviderConfig

try:
    import httpx
except ModuleNotFoundError as err:  # pragma: no cover - exercised with httpx hidden
    raise MissingDependencyError("httpx", "http") from err

__all__ = ["ErrorContext", "HttpConfig", "HttpProvider", "config_error", "retry_after"]

#: How much of a provider's reply is quoted in an error, at most.
MAX_QUOTED_CHARS = 2000
USER_AGENT = f"tenant-notify/{__version__} httpx/{httpx.__version__}"


class ErrorContext(TypedDict):
    provider: str
    notification_id: str | None
    tenant_id: str | None


class HttpConfig(ProviderConfig):
    """Settings every HTTP API provider has.

    Attributes:
        base_url: Scheme and host of the API (a path prefix is allowed); point it
            at a test server or a regional endpoint.
        connect_timeout: Seconds allowed to open a connection (and to wait for a
            free pooled one). A connect timeout is transient: nothing was sent.
        read_timeout: Seconds allowed for the request to go out and for each read
            of the reply. Running out while waiting for the reply is *ambiguous*.
        max_connections: Connections the instance keeps open at most (shared by
            every worker thread; more threads wait up to ``connect_timeout``).
        verify_tls: Verify the server certificate (turn off only for tests).
    """

    base_url: str
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=20.0, gt=0)
    max_connections: int = Field(default=20, ge=1, le=1000)
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

    Subclasses must fill the three hooks below; the client, timeouts, error
    translation of transport failures and secret scrubbing are done here.
    """

    Config: ClassVar[type[ProviderConfig]] = HttpConfig
    #: Shown in error messages ("SendGrid", "Twilio").
    service: ClassVar[str] = ""

    def __init__(self, config: HttpConfig) -> None:
        self._http_config = config
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._pid = os.getpid()

    # --- hooks ---------------------------------------------------------------------

    @abstractmethod
    def _auth_header(self) -> str:
        """The ``Authorization`` header value."""

    @abstractmethod
    def _secrets(self) -> Iterable[str]:
        """Every secret value, to scrub from any text quoted in an error."""

    @abstractmethod
    def _refused(self, response: httpx.Response, context: ErrorContext) -> DeliveryError:
        """The library error for a reply that did not accept the message."""

    # --- the client ------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        client = self._client
        if client is not None and self._pid == os.getpid():
            return client
        with self._client_lock:
            if self._pid != os.getpid():
                # A forked child must not share the parent's sockets: forget them
                # without closing (closing could disturb the parent's sessions).
                self._client = None
                self._pid = os.getpid()
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> httpx.Client:
        cfg = self._http_config
        return httpx.Client(
            base_url=cfg.base_url,
            headers={
                "Authorization": self._auth_header(),
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(
                connect=cfg.connect_timeout,
                read=cfg.read_timeout,
                write=cfg.read_timeout,
                pool=cfg.connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=cfg.max_connections,
                max_keepalive_connections=cfg.max_connections,
            ),
            verify=cfg.verify_tls,
            follow_redirects=False,
            # Credentials come from the settings alone, never from ~/.netrc.
            trust_env=False,
        )

    def close(self) -> None:
        """Close the pooled connections. The provider stays usable: the next send
        opens a new client. Safe to call more than once."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()

    # --- one request -------------------------------------------------------------------

    def _post(
        self, path: str, content: bytes, content_type: str, context: ErrorContext
    ) -> httpx.Response:
        """POST ``content`` to ``path``; return a 2xx response or raise a DeliveryError."""
        try:
            response = self._http().post(
                path, content=content, headers={"Content-Type": content_type}
            )
        except httpx.HTTPError as err:
            raise self._map_transport_error(err, context) from err
        if response.is_success:
            return response
        raise self._refused(response, context)

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
        """``text`` with every secret of this provider replaced by ``***``."""
        for secret in sorted((s for s in self._secrets() if s), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

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
