"""A real DNS server on loopback for tests, built on dnslib: it answers TXT records.

Usage::

    with StubDNSServer({"acme.example": ["v=spf1 -all"]}) as dns:
        resolver = dns.resolver()          # a dnspython resolver asking only this server
        resolver.resolve("acme.example", "TXT")

Names are matched case-insensitively (without the final dot); a TXT value longer
than 255 bytes is split into several strings, as DNS publishes long DKIM keys.
A name it does not know answers NXDOMAIN; ``fail`` names answer SERVFAIL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import dns.resolver
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

__all__ = ["StubDNSServer"]


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, owner: StubDNSServer) -> None:
        self.owner = owner

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        self.owner.queries.append((name, QTYPE[request.q.qtype]))
        if name in self.owner.failing:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        records = self.owner.records.get(name)
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype == QTYPE.TXT:
            for value in records:
                data = value.encode("utf-8")
                chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
        return reply


class StubDNSServer:
    """Answers TXT queries for ``records`` (name -> TXT values) on 127.0.0.1 (UDP)."""

    def __init__(self, records: Mapping[str, Iterable[str]] | None = None) -> None:
        self.records: dict[str, list[str]] = {
            name.rstrip(".").lower(): list(values) for name, values in (records or {}).items()
        }
        self.failing: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._server = DNSServer(
            _Resolver(self),
            address="127.0.0.1",
            port=0,
            logger=DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data"),
        )
        self.port: int = self._server.server.server_address[1]
        self._thread: threading.Thread | None = None

    def set(self, name: str, *values: str) -> None:
        self.records[name.rstrip(".").lower()] = list(values)

    def nameserver(self) -> str:
        """``127.0.0.1:<port>``, as ``tenant-notify check-domain --nameserver`` takes it."""
        return f"127.0.0.1:{self.port}"

    def resolver(self) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 3.0
        return resolver

    def start(self) -> StubDNSServer:
        self._thread = threading.Thread(
            target=self._server.server.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits for one poll
            name="stub-dns",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.server.shutdown()
        self._server.server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> StubDNSServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
