"""A Postmark-shaped HTTP sink for the scheduler benchmarks: asyncio, its own process.

``POST /email`` is answered ``200`` with a Postmark reply (``MessageID``,
``ErrorCode`` 0) after ``latency`` seconds, as an API across the internet would;
HTTP/1.1 keep-alive, any number of connections at once (one coroutine each, so
the sink's own CPU stays small next to the senders'). It counts the requests,
notes when the first and the last arrived, and keeps, per request, the arrival
time and the sender's address (``From``), so a benchmark can tell tenants apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import socket
import time
import uuid
from typing import Any

_REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: keep-alive\r\n\r\n%s"
)


def _serve(port: Any, ready: Any, stop: Any, count: Any, latency: float, log: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                sender = recipient = ""
                with contextlib.suppress(ValueError):
                    fields = json.loads(body)
                    sender, recipient = str(fields.get("From", "")), str(fields.get("To", ""))
                if latency:
                    await asyncio.sleep(latency)
                now = time.time()
                with count.get_lock():
                    count.value += 1
                log.put((now, sender, recipient))
                reply = json.dumps(
                    {"ErrorCode": 0, "Message": "OK", "MessageID": str(uuid.uuid4())}
                ).encode()
                writer.write(_REPLY % (len(reply), reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        server = await asyncio.start_server(handle, "127.0.0.1", free, backlog=1024)
        port.value = free
        ready.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stop.wait)
        server.close()

    asyncio.run(main())


class HttpSink:
    """``with HttpSink(latency=0.1) as sink``: ``url``, ``count``, ``arrivals()``, ``reset()``."""

    def __init__(self, latency: float = 0.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._port = context.Value("i", 0)
        self._count = context.Value("i", 0)
        self._log: Any = context.Queue()
        self._ready, self._stop = context.Event(), context.Event()
        self._process = context.Process(
            target=_serve,
            args=(self._port, self._ready, self._stop, self._count, latency, self._log),
            daemon=True,
        )
        self._arrivals: list[tuple[float, str, str]] = []

    def __enter__(self) -> HttpSink:
        self._process.start()
        if not self._ready.wait(30):
            raise RuntimeError("the HTTP sink did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port.value}"

    @property
    def count(self) -> int:
        return int(self._count.value)

    def arrivals(self) -> list[tuple[float, str, str]]:
        """(wall time, From, To) of every request since the last reset, in arrival order."""
        while True:
            try:
                self._arrivals.append(self._log.get_nowait())
            except Exception:
                return list(self._arrivals)

    def reset(self) -> None:
        self.arrivals()
        self._arrivals.clear()
        with self._count.get_lock():
            self._count.value = 0
