"""``tenant-notify check-domain``: the SPF, DKIM and DMARC records of a sending domain.

Since 2024 Gmail, Yahoo and Microsoft refuse mail from domains without SPF or
DKIM and a DMARC policy they align with (``550 5.7.26``, ``550 5.7.515``).
:func:`check_domain` looks the three records up with dnspython and says what is
missing or does not fit the tenant's settings:

* **SPF** (``TXT`` at the domain): one ``v=spf1`` record; ``+all`` lets anyone
  send as the domain; two records are a permanent error to receivers.
* **DKIM** (``TXT`` at ``<selector>._domainkey.<domain>``): a key is published
  for the configured selector, not revoked (empty ``p=``), and, when the
  tenant's private key is known (its SMTP table), it is that key's public half.
* **DMARC** (``TXT`` at ``_dmarc.<domain>``, else at the organisational
  domain): a ``v=DMARC1`` record; ``p=none`` only monitors; the DKIM signing
  domain aligns with the From domain (strictly, with ``adkim=s``).

The resolver is injectable (anything with dnspython's ``resolve(name, "TXT")``),
so tests answer from a DNS server of their own on loopback.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import MissingDependencyError

__all__ = ["DomainReport", "Finding", "Status", "check_domain", "make_resolver"]


class Status(enum.StrEnum):
    """What a finding says."""

    OK = "ok"
    WARNING = "warning"  # works, but weakly (p=none, ~all missing, ...)
    MISSING = "missing"
    MISALIGNED = "misaligned"
    ERROR = "error"  # the record is there but broken, or DNS failed


@dataclass(frozen=True, slots=True)
class Finding:
    """One record's verdict.

    Attributes:
        record: ``SPF``, ``DKIM`` or ``DMARC``.
        status: The verdict.
        name: The DNS name looked up.
        message: What is wrong (or right), in words.
        value: The record's text, if one was found.
    """

    record: str
    status: Status
    name: str
    message: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class DomainReport:
    """Every finding for one sending domain.

    Attributes:
        domain: The From domain checked.
        selector: The DKIM selector checked, if any.
        findings: SPF, DKIM, DMARC (in that order).
    """

    domain: str
    selector: str | None
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """No record is missing, misaligned or broken (warnings allowed)."""
        return all(f.status in (Status.OK, Status.WARNING) for f in self.findings)


class Resolver(Protocol):
    def resolve(self, qname: str, rdtype: str) -> Any: ...


def _dns() -> Any:
    try:
        import dns.exception
        import dns.resolver
    except ModuleNotFoundError as err:
        raise MissingDependencyError("dnspython", "deliverability") from err
    return dns


def make_resolver(nameserver: str | None = None, *, timeout: float = 5.0) -> Resolver:
    """dnspython's resolver: the system's, or ``nameserver`` (``host`` or ``host:port``)."""
    dns = _dns()
    if nameserver is None:
        resolver = dns.resolver.Resolver()
    else:
        host, _, port = (
            nameserver.rpartition(":")
            if nameserver.count(":") == 1
            else (
                nameserver,
                "",
                "",
            )
        )
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host or nameserver]
        if port:
            resolver.port = int(port)
    resolver.lifetime = timeout
    return resolver  # type: ignore[no-any-return]


def _txt(resolver: Resolver, name: str) -> list[str]:
    """Every TXT record at ``name`` (the strings of each joined), [] when there is none.

    Raises:
        OSError: DNS did not answer (timeout, SERVFAIL).
    """
    dns = _dns()
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as err:
        raise OSError(f"DNS lookup of {name} failed: {err}") from err
    return [b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in answer]


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        key, eq, value = part.partition("=")
        if eq:
            tags[key.strip().lower()] = "".join(value.split())
    return tags


def _organisational(domain: str) -> str:
    # Without the public suffix list, the last two labels: right for shop.example
    # and mail.shop.example, not for shop.co.uk (which then has no fallback).
    labels = domain.split(".")
    return ".".join(labels[-2:])


def check_spf(resolver: Resolver, domain: str) -> Finding:
    try:
        records = [r for r in _txt(resolver, domain) if r.lower().startswith("v=spf1")]
    except OSError as err:
        return Finding("SPF", Status.ERROR, domain, str(err))
    if not records:
        return Finding("SPF", Status.MISSING, domain, "no v=spf1 TXT record")
    if len(records) > 1:
        return Finding(
            "SPF",
            Status.ERROR,
            domain,
            f"{len(records)} v=spf1 records: receivers treat that as a permanent error",
            " | ".join(records),
        )
    record = records[0]
    terms = record.lower().split()
    if "+all" in terms or "all" in terms:
        return Finding("SPF", Status.ERROR, domain, "'+all' lets anyone send as the domain", record)
    if not any(t.endswith("all") or t.startswith("redirect=") for t in terms):
        return Finding("SPF", Status.WARNING, domain, "no 'all' term: '~all' or '-all'", record)
    return Finding("SPF", Status.OK, domain, "published", record)


def check_dkim(
    resolver: Resolver, domain: str, selector: str | None, public_key: bytes | None = None
) -> Finding:
    if selector is None:
        return Finding(
            "DKIM",
            Status.MISSING,
            f"<selector>._domainkey.{domain}",
            "no selector configured (dkim_selector in the tenant's SMTP table, or --selector)",
        )
    name = f"{selector}._domainkey.{domain}"
    try:
        records = [r for r in _txt(resolver, name) if "p=" in r]
    except OSError as err:
        return Finding("DKIM", Status.ERROR, name, str(err))
    if not records:
        return Finding("DKIM", Status.MISSING, name, "no DKIM key published for the selector")
    record = records[0]
    tags = _tags(record)
    if tags.get("v", "DKIM1") != "DKIM1" or tags.get("k", "rsa") not in ("rsa", "ed25519"):
        return Finding("DKIM", Status.ERROR, name, "not a DKIM1 rsa or ed25519 key", record)
    published = tags.get("p", "")
    if not published:
        return Finding("DKIM", Status.ERROR, name, "the key is revoked (empty p=)", record)
    if public_key is not None:
        try:
            matches = base64.b64decode(published) == public_key
        except ValueError:
            matches = False
        if not matches:
            return Finding(
                "DKIM",
                Status.MISALIGNED,
                name,
                "the published key is not the public half of the configured private key",
                record,
            )
        return Finding("DKIM", Status.OK, name, "published; matches the configured key", record)
    return Finding("DKIM", Status.OK, name, "published", record)


def check_dmarc(resolver: Resolver, domain: str, signing_domain: str | None) -> Finding:
    names = [f"_dmarc.{domain}"]
    organisational = _organisational(domain)
    if organisational != domain:
        names.append(f"_dmarc.{organisational}")
    record = None
    name = names[0]
    for name in names:
        try:
            found = [r for r in _txt(resolver, name) if r.upper().startswith("V=DMARC1")]
        except OSError as err:
            return Finding("DMARC", Status.ERROR, name, str(err))
        if found:
            record = found[0]
            break
    if record is None:
        return Finding("DMARC", Status.MISSING, names[0], "no v=DMARC1 TXT record")
    tags = _tags(record)
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Finding("DMARC", Status.ERROR, name, "no valid p= policy", record)
    if signing_domain is not None:
        strict = tags.get("adkim", "r").lower() == "s"
        aligned = (
            signing_domain.lower() == domain.lower()
            if strict
            else _organisational(signing_domain.lower()) == _organisational(domain.lower())
        )
        if not aligned:
            how = "strictly (adkim=s)" if strict else "with the From domain's organisation"
            return Finding(
                "DMARC",
                Status.MISALIGNED,
                name,
                f"DKIM signs as {signing_domain}, which does not align {how}",
                record,
            )
    if policy == "none":
        return Finding(
            "DMARC", Status.WARNING, name, "p=none only monitors: nothing is refused", record
        )
    return Finding("DMARC", Status.OK, name, f"published, p={policy}", record)


def check_domain(
    domain: str,
    *,
    selector: str | None = None,
    signing_domain: str | None = None,
    private_key: str | None = None,
    resolver: Resolver | None = None,
) -> DomainReport:
    """Look up and judge the SPF, DKIM and DMARC records of ``domain``.

    Args:
        domain: The From domain (the tenant's ``email_from``).
        selector: The DKIM selector the tenant signs with.
        signing_domain: The DKIM ``d=`` domain; default ``domain``.
        private_key: The tenant's PEM private key, to check the published key is its pair.
        resolver: A dnspython-like resolver (default: the system's).

    Raises:
        MissingDependencyError: dnspython is not installed (extra ``deliverability``).
    """
    resolver = resolver or make_resolver()
    public_key = _public_key(private_key) if private_key else None
    findings: Sequence[Finding] = (
        check_spf(resolver, domain),
        check_dkim(resolver, signing_domain or domain, selector, public_key),
        check_dmarc(resolver, domain, signing_domain or domain if selector else None),
    )
    return DomainReport(domain=domain, selector=selector, findings=tuple(findings))


def _public_key(private_key: str) -> bytes | None:
    """The DER SubjectPublicKeyInfo of a PEM private key (what ``p=`` holds), or
    None for a key that cannot be read (the SMTP provider refuses it anyway)."""
    try:
        from cryptography.hazmat.primitives import serialization
    except ModuleNotFoundError as err:
        raise MissingDependencyError("cryptography", "deliverability") from err
    try:
        key = serialization.load_pem_private_key(private_key.strip().encode("ascii"), None)
    except (ValueError, TypeError, UnicodeEncodeError):
        return None
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
