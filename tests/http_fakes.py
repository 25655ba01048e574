"""Loopback fakes of the SendGrid, Twilio and Postmark APIs, checked against the published schemas.

Usage::

    from tests.http_fakes import FakeProviderAPI

    with FakeProviderAPI() as api:
        api.sendgrid_keys.add("SG.test")
        ...point a provider's base_url at api.url...
        [request] = api.requests
        assert request.json["subject"] == "Hello"

One real HTTP/1.1 server (stdlib ``ThreadingHTTPServer``, keep-alive) on
127.0.0.1 answers both APIs:

* ``POST /v3/mail/send``: checks ``Authorization: Bearer <key>`` against
  :attr:`FakeProviderAPI.sendgrid_keys` and the JSON body against
  ``request_body_schema`` of ``sendgrid_mail_send.json``; answers ``202`` with an
  ``X-Message-Id`` header, or SendGrid's error body.
* ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``: checks HTTP basic auth
  against :attr:`FakeProviderAPI.twilio_credentials` and the form fields against
  ``twilio_create_message.json`` (plus the rules its prose adds: ``From`` or
  ``MessagingServiceSid``; ``Body``, ``MediaUrl`` or ``ContentSid``); answers
  ``201`` with a message resource (validated against the spec's 201 schema), or
  Twilio's error body.
* ``POST /email`` (Postmark): checks ``X-Postmark-Server-Token`` against
  :attr:`FakeProviderAPI.postmark_tokens`, the ``Accept`` header and the JSON body
  against ``postmark_email.json`` (plus the documented limits its prose adds: 50
  recipients per field, base64 attachment content, the 10 MB payload); answers
  ``200`` with a ``MessageID``, or Postmark's ``{"ErrorCode", "Message"}``.

Every request is recorded (:attr:`FakeProviderAPI.requests`) with the schema
violations found in it (:attr:`FakeProviderAPI.schema_errors`). Replies can be
scripted to fail (:meth:`FakeProviderAPI.script`): an HTTP error with headers
(:func:`sendgrid_error`, :func:`twilio_error`), a reply held back past the
client's read timeout (:meth:`Reply.stall`), or a connection dropped with no
reply (:meth:`Reply.drop`). :func:`closed_port` gives a port nobody listens on.

The schemas are vendored in ``tests/specs/`` (:data:`SPECS_DIR`; its README says
where they come from), so these tests run in any clone and never skip for want of them.
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import jsonschema

__all__ = [
    "SPECS_DIR",
    "FakeProviderAPI",
    "RecordedRequest",
    "Reply",
    "closed_port",
    "postmark_error",
    "sendgrid_error",
    "twilio_error",
]

SPECS_DIR = Path(__file__).resolve().parent / "specs"
"""The vendored schema extracts, one JSON file per provider endpoint."""
SENDGRID_SPEC = "sendgrid_mail_send.json"
TWILIO_SPEC = "twilio_create_message.json"
POSTMARK_SPEC = "postmark_email.json"
_TWILIO_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")


def _nullable(schema: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` as JSON Schema (``type: [..., "null"]``)."""
    if isinstance(schema, list):
        return [_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _nullable(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable") is True and isinstance(schema.get("type"), str):
        converted["type"] = [schema["type"], "null"]
        if "enum" in converted:
            converted["enum"] = [*converted["enum"], None]
    return converted


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _problems(validator: jsonschema.protocols.Validator, instance: Any) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<body>'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


# --- replies -------------------------------------------------------------------------


@dataclass
class Reply:
    """A scripted reply.

    Attributes:
        status: HTTP status (0 with ``drop``).
        body: Response body (JSON-encoded when not bytes).
        headers: Extra response headers.
        delay: Seconds to wait before answering (past a client's read timeout:
            the client sees a timeout after its request went out).
        drop: Close the connection without answering.
    """

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    #: Process the request as usual (record it, answer success) after ``delay``.
    passthrough: bool = False

    @classmethod
    def stall(cls, seconds: float) -> Reply:
        """Process the request normally, but only answer after ``seconds``."""
        return cls(delay=seconds, passthrough=True)

    @classmethod
    def drop_connection(cls) -> Reply:
        """Read the request, then close the connection with no reply."""
        return cls(status=0, drop=True)


def sendgrid_error(
    status: int,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """A SendGrid error reply: ``{"errors": [{"message", "field", "help"}]}``."""
    return Reply(
        status=status,
        body={"errors": [{"message": message, "field": field, "help": {}}]},
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def twilio_error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> Reply:
    """A Twilio error reply: ``{"code", "message", "more_info", "status"}``."""
    return Reply(
        status=status,
        body={
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def postmark_error(status: int, code: int, message: str) -> Reply:
    """A Postmark error reply: ``{"ErrorCode", "Message"}``."""
    return Reply(
        status=status,
        body={"ErrorCode": code, "Message": message},
        headers={"Content-Type": "application/json"},
    )


# --- what was received -----------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received.

    Attributes:
        api: ``"sendgrid"``, ``"twilio"``, ``"postmark"`` or ``"unknown"``.
        method, path: As sent.
        headers: Header names lower-cased.
        body: Raw body.
        json: Decoded JSON body (SendGrid), else None.
        form: Decoded form fields (Twilio), each a list of values, else None.
        credential: The API key (SendGrid) or ``"user:secret"`` (Twilio) sent, or None.
        schema_errors: What was wrong with it against the spec (empty when valid).
        at: When it arrived (monotonic seconds).
    """

    api: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, list[str]] | None = None
    credential: str | None = None
    schema_errors: tuple[str, ...] = ()
    #: When it arrived (``time.monotonic()``).
    at: float = field(default_factory=time.monotonic)


class FakeProviderAPI:
    """SendGrid's and Twilio's send endpoints on 127.0.0.1, for tests.

    Args:
        specs_dir: Folder of ``sendgrid_mail_send.json`` and ``twilio_create_message.json``
            (the vendored :data:`SPECS_DIR` unless a test points elsewhere).

    Attributes:
        sendgrid_keys: API keys SendGrid accepts.
        twilio_credentials: ``(user, secret) -> account SID`` Twilio accepts:
            ``(account_sid, auth_token)`` and ``(api_key_sid, api_key_secret)``.
    """

    def __init__(self, specs_dir: Path = SPECS_DIR) -> None:
        sendgrid = json.loads((specs_dir / SENDGRID_SPEC).read_text(encoding="utf-8"))
        twilio = json.loads((specs_dir / TWILIO_SPEC).read_text(encoding="utf-8"))
        self._sendgrid_body = _validator(sendgrid["request_body_schema"])
        self._sendgrid_fields = frozenset(sendgrid["request_body_schema"]["properties"])
        self._sendgrid_error_reply = _validator(sendgrid["responses"]["400"]["schema"])
        form_schema = _nullable(twilio["request_body_schema"])
        self._twilio_form = _validator(form_schema)
        self._twilio_properties: dict[str, Any] = form_schema["properties"]
        [account_param] = [p for p in twilio["parameters"] if p["name"] == "AccountSid"]
        self._twilio_account = _validator(account_param["schema"])
        self._twilio_resource = _validator(
            _nullable(twilio["responses"]["201"]["content"]["application/json"]["schema"])
        )
        postmark = json.loads((specs_dir / POSTMARK_SPEC).read_text(encoding="utf-8"))
        self._postmark_body = _validator(postmark["request_body_schema"])
        self._postmark_ok = _validator(postmark["responses"]["200"]["schema"])
        self._postmark_error_reply = _validator(postmark["responses"]["error"]["schema"])
        self._postmark_max_payload = int(postmark["endpoint"]["max_payload_bytes"])
        self.sendgrid_keys: set[str] = set()
        self.twilio_credentials: dict[tuple[str, str], str] = {}
        self.postmark_tokens: set[str] = set()
        self.host = "127.0.0.1"
        self.port = 0
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._calls: deque[Callable[[], None]] = deque()
        self._stopping = threading.Event()
        self._connections = 0
        #: Seconds every reply waits before it is written (a provider across a network).
        self.latency = 0.0
        #: Hold every reply until this many requests are being answered at once
        #: (or ``hold_timeout`` passes): concurrency shown without timing anything.
        self.hold_until = 0
        self.hold_timeout = 10.0
        self._changed = threading.Condition(self._lock)
        self._in_flight = 0
        self._max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeProviderAPI:
        owner = self

        class Handler(_Handler):
            api = owner

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # many clients connecting at once

        server = Server((self.host, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.release()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeProviderAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- scripting and inspection ----------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order; then normally again."""
        with self._lock:
            self._script.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def schema_errors(self) -> list[str]:
        """Every schema violation seen so far, as ``"<path> <field>: <problem>"``."""
        with self._lock:
            return [f"{r.path} {e}" for r in self._requests for e in r.schema_errors]

    @property
    def connections(self) -> int:
        """How many client connections the server has accepted."""
        with self._lock:
            return self._connections

    def _connected(self) -> None:
        with self._lock:
            self._connections += 1

    @property
    def max_in_flight(self) -> int:
        """The most requests the server was answering at the same moment."""
        with self._lock:
            return self._max_in_flight

    def release(self) -> None:
        """Stop holding replies (see :attr:`hold_until`); the held ones go out now."""
        with self._lock:
            self.hold_until = 0
            self._changed.notify_all()

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._changed.notify_all()
            if self.hold_until:
                self._changed.wait_for(
                    lambda: self._max_in_flight >= self.hold_until or self._stopping.is_set(),
                    self.hold_timeout,
                )

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._script.clear()
            self._calls.clear()

    def call_at_next_request(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (on the server's thread) once the next request has been read
        and recorded, before it is answered (a test kills its client there)."""
        with self._lock:
            self._calls.append(fn)

    # --- request handling (server threads) --------------------------------------------

    def _next_scripted(self) -> Reply | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        match = _TWILIO_PATH.match(path)
        if method == "POST" and path == "/v3/mail/send":
            request, ok_reply = self._sendgrid(path, headers, body)
        elif method == "POST" and match:
            request, ok_reply = self._twilio(match.group(1), path, headers, body)
        elif method == "POST" and path == "/email":
            request, ok_reply = self._postmark(path, headers, body)
        else:
            self._record(RecordedRequest("unknown", method, path, headers, body))
            return Reply(404, {"errors": [{"message": "not found", "field": None}]})
        self._record(request)
        with self._lock:
            call = self._calls.popleft() if self._calls else None
        if call is not None:
            call()
        scripted = self._next_scripted()
        if scripted is not None and not scripted.passthrough:
            return scripted
        if scripted is not None:
            ok_reply.delay = scripted.delay
        return ok_reply

    def _sendgrid(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[RecordedRequest, Reply]:
        errors: list[str] = []
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            errors.append(f"content-type: {headers.get('content-type')!r} is not JSON")
        data: Any = None
        try:
            data = json.loads(body)
        except ValueError as err:
            errors.append(f"<body>: not JSON ({err})")
        else:
            errors.extend(_problems(self._sendgrid_body, data))
            if isinstance(data, dict):
                unknown = sorted(set(data) - self._sendgrid_fields)
                errors.extend(f"{key}: not a field of the API" for key in unknown)
        auth = headers.get("authorization", "")
        key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        request = RecordedRequest(
            "sendgrid", "POST", path, headers, body, json=data, credential=key,
            schema_errors=tuple(errors),
        )  # fmt: skip
        if key is None or key not in self.sendgrid_keys:
            reply = sendgrid_error(
                401, "The provided authorization grant is invalid, expired, or revoked"
            )
        elif errors:
            reply = sendgrid_error(400, errors[0].split(": ", 1)[-1], errors[0].split(":")[0])
        else:
            reply = Reply(202, b"", {"X-Message-Id": _sendgrid_message_id()})
        if reply.status >= 400:
            problems = _problems(self._sendgrid_error_reply, reply.body)
            assert not problems, f"the fake's own error reply breaks the spec: {problems}"
        return request, reply

    def _twilio(
        self, account_sid: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[RecordedRequest, Reply]:
        errors = [f"AccountSid: {p}" for p in _problems(self._twilio_account, account_sid)]
        content_type = headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            errors.append(f"content-type: {headers.get('content-type')!r} is not a form")
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as err:
            form = {}
            errors.append(f"<body>: not form-encoded ({err})")
        instance = self._form_instance(form, errors)
        errors.extend(_problems(self._twilio_form, instance))
        if "From" not in form and "MessagingServiceSid" not in form:
            errors.append("From: one of From or MessagingServiceSid is required")
        if not {"Body", "MediaUrl", "ContentSid"} & form.keys():
            errors.append("Body: one of Body, MediaUrl or ContentSid is required")
        credential = None
        account_of_credential = None
        auth = headers.get("authorization", "")
        if auth.startswith("Basic "):
            try:
                credential = base64.b64decode(auth[6:], validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                credential = None
            if credential is not None:
                user, _, secret = credential.partition(":")
                account_of_credential = self.twilio_credentials.get((user, secret))
        request = RecordedRequest(
            "twilio", "POST", path, headers, body, form=form, credential=credential,
            schema_errors=tuple(errors),
        )  # fmt: skip
        if account_of_credential is None or account_of_credential != account_sid:
            return request, twilio_error(401, 20003, "Authenticate")
        if errors:
            return request, twilio_error(400, 21602, errors[0])
        resource = self._message_resource(account_sid, instance)
        problems = _problems(self._twilio_resource, resource)
        assert not problems, f"the fake's own message resource breaks the spec: {problems}"
        return request, Reply(201, resource, {"Content-Type": "application/json"})

    def _postmark(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[RecordedRequest, Reply]:
        errors: list[str] = []
        for name in ("content-type", "accept"):
            if headers.get(name, "").split(";")[0].strip() != "application/json":
                errors.append(f"{name}: {headers.get(name)!r} is not application/json")
        data: Any = None
        try:
            data = json.loads(body)
        except ValueError as err:
            errors.append(f"<body>: not JSON ({err})")
        else:
            errors.extend(_problems(self._postmark_body, data))
        if isinstance(data, dict):
            for key in ("To", "Cc", "Bcc"):
                if isinstance(data.get(key), str) and data[key].count(",") >= 50:
                    errors.append(f"{key}: more than 50 recipients")
            for index, item in enumerate(data.get("Attachments") or []):
                try:
                    base64.b64decode(item.get("Content", ""), validate=True)
                except (ValueError, AttributeError):
                    errors.append(f"Attachments.{index}.Content: not base64")
        token = headers.get("x-postmark-server-token")
        request = RecordedRequest(
            "postmark", "POST", path, headers, body, json=data, credential=token,
            schema_errors=tuple(errors),
        )  # fmt: skip
        if len(body) > self._postmark_max_payload:
            reply = postmark_error(413, 300, "Payload Too Large")
        elif token is None or token not in self.postmark_tokens:
            reply = postmark_error(401, 10, "Request does not contain a valid Server token.")
        elif errors:
            reply = postmark_error(422, 300, f"Invalid email request: {errors[0]}")
        else:
            reply = Reply(
                200,
                {
                    "To": data["To"],
                    "SubmittedAt": "2026-12-01T10:00:00.0000000-05:00",
                    "MessageID": str(uuid.uuid4()),
                    "ErrorCode": 0,
                    "Message": "OK",
                },
                {"Content-Type": "application/json"},
            )
            assert not _problems(self._postmark_ok, reply.body)
        if reply.status >= 400:
            problems = _problems(self._postmark_error_reply, reply.body)
            assert not problems, f"the fake's own error reply breaks the spec: {problems}"
        return request, reply

    def _form_instance(self, form: dict[str, list[str]], errors: list[str]) -> dict[str, Any]:
        """The form as the JSON instance the schema describes (types from the schema)."""
        instance: dict[str, Any] = {}
        for key, values in form.items():
            schema = self._twilio_properties.get(key)
            if schema is None:
                errors.append(f"{key}: not a parameter of the API")
                continue
            kind = schema.get("type")
            kind = kind[0] if isinstance(kind, list) else kind
            if kind == "array":
                instance[key] = values
                continue
            if len(values) > 1:
                errors.append(f"{key}: given {len(values)} times")
            value = values[-1]
            try:
                if kind == "integer":
                    instance[key] = int(value)
                elif kind == "number":
                    instance[key] = float(value)
                elif kind == "boolean":
                    if value not in ("true", "false"):
                        raise ValueError(value)
                    instance[key] = value == "true"
                else:
                    instance[key] = value
            except ValueError:
                errors.append(f"{key}: {value!r} is not a {kind}")
        return instance

    @staticmethod
    def _message_resource(account_sid: str, form: dict[str, Any]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = email.utils.formatdate(usegmt=True)
        body = form.get("Body", "")
        return {
            "account_sid": account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": str(max(1, -(-len(body) // 153))),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if "MessagingServiceSid" in form else "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json"
            },
            "to": form.get("To"),
            "uri": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
        }


def _sendgrid_message_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real services
    api: FakeProviderAPI

    def setup(self) -> None:
        super().setup()
        self.api._connected()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def _serve(self, method: str) -> None:
        self.api._begin()
        try:
            self._answer(method)
        finally:
            self.api._end()

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        reply = self.api.handle(method, self.path, headers, body)
        if self.api.latency and self.api._stopping.wait(self.api.latency):
            self.close_connection = True
            return
        if reply.delay and self.api._stopping.wait(reply.delay):
            self.close_connection = True
            return
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if payload and not any(name.lower() == "content-type" for name in reply.headers):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)
        except OSError:
            # The client gave up waiting (a stalled reply): nothing to answer.
            self.close_connection = True


def closed_port() -> int:
    """A loopback port nobody listens on (connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
