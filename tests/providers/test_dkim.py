"""DKIM signing on the SMTP provider: messages captured by a real SMTP server verify
with dkimpy's own verifier, which looks the key up on a DNS server on loopback."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tenant_notify.errors import ConfigurationError
from tenant_notify.log import capture_logs
from tenant_notify.models import Address
from tenant_notify.providers.smtp import SmtpProvider
from tests.dns_server import StubDNSServer
from tests.providers.test_smtp import make_email
from tests.smtp_server import LoopbackSMTPServer

SELECTOR = "tn2026"
DOMAIN = "acme.test"


def make_key(bits: int = 2048) -> tuple[str, str]:
    """A PEM private key and the ``p=`` value of its DNS record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode("ascii")


@pytest.fixture(scope="module")
def key() -> tuple[str, str]:
    return make_key()


@pytest.fixture
def dns_server(key: tuple[str, str]) -> Iterator[StubDNSServer]:
    with StubDNSServer({f"{SELECTOR}._domainkey.{DOMAIN}": [f"v=DKIM1; k=rsa; p={key[1]}"]}) as s:
        yield s


def verify(raw: bytes, server: StubDNSServer) -> bool:
    """dkimpy's verifier, with its key lookups answered by ``server`` over UDP."""
    resolver = server.resolver()

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii").rstrip("."), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(b"".join(rdata.strings) for rdata in answer)

    return bool(dkim.verify(raw, dnsfunc=lookup))


def signing_provider(server: LoopbackSMTPServer, pem: str, **options: object) -> SmtpProvider:
    return SmtpProvider(
        host=server.host,
        port=server.port,
        timeout=5,
        dkim_selector=SELECTOR,
        dkim_private_key=pem,
        **options,  # type: ignore[arg-type]
    )


def test_a_signed_message_verifies_against_the_published_key(
    smtp_server: LoopbackSMTPServer, key: tuple[str, str], dns_server: StubDNSServer
) -> None:
    unsubscribe = "https://shop.test/api/notifications/unsubscribe/acme/" + "t" * 120
    message = make_email(
        html="<p>Thanks, <b>Jane</b>!</p>",
        cc=(Address("joe@example.com"),),
        reply_to=Address("help@acme.test"),
        headers={
            "List-Unsubscribe": f"<{unsubscribe}>, <mailto:unsubscribe@acme.test>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    with signing_provider(smtp_server, key[0]) as provider:
        provider.send(message)

    [received] = smtp_server.wait_for(1)
    assert verify(received.raw, dns_server)
    assert (f"{SELECTOR}._domainkey.{DOMAIN}", "TXT") in dns_server.queries
    tags = dict(
        part.strip().split("=", 1)
        for part in "".join(received.message["DKIM-Signature"].split()).split(";")
        if part
    )
    assert tags["d"] == DOMAIN and tags["s"] == SELECTOR and tags["a"] == "rsa-sha256"
    signed = tags["h"].lower().split(":")
    for header in ("from", "subject", "date", "message-id", "list-unsubscribe"):
        assert header in signed
    assert "list-unsubscribe-post" in signed
    assert signed.count("from") == 2  # over-signed: a second From breaks it


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Subject", "Your refund is ready"),
        ("List-Unsubscribe", "<https://evil.test/u>"),
        ("From", "Acme <orders@evil.test>"),
    ],
)
def test_changing_a_signed_header_breaks_the_signature(
    smtp_server: LoopbackSMTPServer,
    key: tuple[str, str],
    dns_server: StubDNSServer,
    header: str,
    value: str,
) -> None:
    message = make_email(headers={"List-Unsubscribe": "<https://shop.test/u/1>"})
    with signing_provider(smtp_server, key[0]) as provider:
        provider.send(message)
    [received] = smtp_server.wait_for(1)
    assert verify(received.raw, dns_server)

    head, body = received.raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    name = header.encode().lower() + b":"
    if header == "From":
        lines.insert(0, f"{header}: {value}".encode())  # a second From
    else:
        new = f"{header}: {value}".encode()
        lines = [new if ln.lower().startswith(name) else ln for ln in lines]
    assert not verify(b"\r\n".join(lines) + b"\r\n\r\n" + body, dns_server)


def test_a_changed_body_breaks_the_signature(
    smtp_server: LoopbackSMTPServer, key: tuple[str, str], dns_server: StubDNSServer
) -> None:
    with signing_provider(smtp_server, key[0]) as provider:
        provider.send(make_email())
    [received] = smtp_server.wait_for(1)
    assert not verify(received.raw.replace(b"Thanks", b"Thank"), dns_server)


def test_a_key_the_dns_does_not_publish_fails_verification(
    smtp_server: LoopbackSMTPServer, dns_server: StubDNSServer
) -> None:
    other_pem, _ = make_key()
    with signing_provider(smtp_server, other_pem) as provider:
        provider.send(make_email())
    [received] = smtp_server.wait_for(1)
    assert not verify(received.raw, dns_server)


def test_dkim_domain_signs_as_that_domain(
    smtp_server: LoopbackSMTPServer, key: tuple[str, str], dns_server: StubDNSServer
) -> None:
    dns_server.set(f"{SELECTOR}._domainkey.mail.acme.test", f"v=DKIM1; k=rsa; p={key[1]}")
    with signing_provider(smtp_server, key[0], dkim_domain="mail.acme.test") as provider:
        provider.send(make_email())
    [received] = smtp_server.wait_for(1)
    assert "d=mail.acme.test" in "".join(received.message["DKIM-Signature"].split())
    assert verify(received.raw, dns_server)


def test_without_dkim_settings_nothing_is_signed(smtp_server: LoopbackSMTPServer) -> None:
    with SmtpProvider(host=smtp_server.host, port=smtp_server.port, timeout=5) as provider:
        provider.send(make_email())
    [received] = smtp_server.wait_for(1)
    assert received.message["DKIM-Signature"] is None


def test_the_private_key_is_a_secret(key: tuple[str, str]) -> None:
    pem = key[0]
    body = pem.splitlines()[1]
    with capture_logs() as logs:
        provider = SmtpProvider(host="127.0.0.1", dkim_selector=SELECTOR, dkim_private_key=pem)
    assert body not in repr(provider) and body not in repr(provider.config)
    assert body not in repr(logs)


@pytest.mark.parametrize(
    ("options", "key_name"),
    [
        ({"dkim_selector": SELECTOR}, None),
        ({"dkim_private_key": "x"}, None),
        (
            {"dkim_selector": SELECTOR, "dkim_private_key": "-----BEGIN PRIVATE KEY-----\nnope"},
            "dkim_private_key",
        ),
        ({"dkim_selector": "bad selector", "dkim_private_key": "k"}, "dkim_selector"),
    ],
)
def test_bad_dkim_settings_fail_when_the_provider_is_built(
    options: dict[str, str], key_name: str | None
) -> None:
    with pytest.raises(ConfigurationError) as info:
        SmtpProvider(host="127.0.0.1", **options)  # type: ignore[arg-type]
    if key_name is not None:
        assert info.value.key == key_name
    assert "nope" not in str(info.value)


def test_a_pkcs1_key_signs_too(
    smtp_server: LoopbackSMTPServer, key: tuple[str, str], dns_server: StubDNSServer
) -> None:
    loaded = serialization.load_pem_private_key(key[0].encode(), None)
    pkcs1 = loaded.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert "BEGIN RSA PRIVATE KEY" in pkcs1
    with signing_provider(smtp_server, pkcs1) as provider:
        provider.send(make_email())
    [received] = smtp_server.wait_for(1)
    assert verify(received.raw, dns_server)
