"""check-domain against a real DNS server on loopback (dnslib), over UDP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tenant_notify.cli import main
from tenant_notify.reputation.domain import Status, check_domain
from tests.dns_server import StubDNSServer
from tests.providers.test_dkim import make_key

DOMAIN = "acme.test"
SELECTOR = "tn2026"


@pytest.fixture(scope="module")
def key() -> tuple[str, str]:
    return make_key()


@pytest.fixture
def dns(key: tuple[str, str]) -> Iterator[StubDNSServer]:
    records = {
        DOMAIN: ["v=spf1 include:_spf.relay.test -all", "google-site-verification=abc"],
        f"{SELECTOR}._domainkey.{DOMAIN}": [f"v=DKIM1; k=rsa; p={key[1]}"],
        f"_dmarc.{DOMAIN}": ["v=DMARC1; p=reject; rua=mailto:dmarc@acme.test"],
    }
    with StubDNSServer(records) as server:
        yield server


def statuses(report: object) -> dict[str, Status]:
    return {f.record: f.status for f in report.findings}  # type: ignore[attr-defined]


def test_a_well_set_up_domain_passes(dns: StubDNSServer, key: tuple[str, str]) -> None:
    report = check_domain(DOMAIN, selector=SELECTOR, private_key=key[0], resolver=dns.resolver())
    assert report.ok
    assert statuses(report) == {"SPF": Status.OK, "DKIM": Status.OK, "DMARC": Status.OK}
    assert "matches the configured key" in report.findings[1].message
    assert (f"_dmarc.{DOMAIN}", "TXT") in dns.queries


def test_missing_records_are_reported(dns: StubDNSServer) -> None:
    dns.records.clear()
    report = check_domain(DOMAIN, selector=SELECTOR, resolver=dns.resolver())
    assert not report.ok
    assert statuses(report) == {
        "SPF": Status.MISSING,
        "DKIM": Status.MISSING,
        "DMARC": Status.MISSING,
    }


def test_a_published_key_that_is_not_the_tenants_is_misaligned(dns: StubDNSServer) -> None:
    other, _ = make_key()
    report = check_domain(DOMAIN, selector=SELECTOR, private_key=other, resolver=dns.resolver())
    assert statuses(report)["DKIM"] is Status.MISALIGNED


def test_signing_as_another_organisation_is_misaligned(
    dns: StubDNSServer, key: tuple[str, str]
) -> None:
    dns.set(f"{SELECTOR}._domainkey.relay.example", f"v=DKIM1; p={key[1]}")
    report = check_domain(
        DOMAIN, selector=SELECTOR, signing_domain="relay.example", resolver=dns.resolver()
    )
    assert statuses(report)["DMARC"] is Status.MISALIGNED
    # A subdomain aligns relaxed, not strict.
    dns.set(f"{SELECTOR}._domainkey.mail.{DOMAIN}", f"v=DKIM1; p={key[1]}")
    relaxed = check_domain(
        DOMAIN, selector=SELECTOR, signing_domain=f"mail.{DOMAIN}", resolver=dns.resolver()
    )
    assert statuses(relaxed)["DMARC"] is Status.OK
    dns.set(f"_dmarc.{DOMAIN}", "v=DMARC1; p=quarantine; adkim=s")
    strict = check_domain(
        DOMAIN, selector=SELECTOR, signing_domain=f"mail.{DOMAIN}", resolver=dns.resolver()
    )
    assert statuses(strict)["DMARC"] is Status.MISALIGNED


@pytest.mark.parametrize(
    ("name", "records", "record", "status"),
    [
        (DOMAIN, ["v=spf1 +all"], "SPF", Status.ERROR),
        (DOMAIN, ["v=spf1 -all", "v=spf1 ~all"], "SPF", Status.ERROR),
        (DOMAIN, ["v=spf1 include:x.test"], "SPF", Status.WARNING),
        (f"{SELECTOR}._domainkey.{DOMAIN}", ["v=DKIM1; p="], "DKIM", Status.ERROR),
        (f"_dmarc.{DOMAIN}", ["v=DMARC1; p=none"], "DMARC", Status.WARNING),
        (f"_dmarc.{DOMAIN}", ["v=DMARC1; rua=mailto:x@y"], "DMARC", Status.ERROR),
    ],
)
def test_weak_or_broken_records(
    dns: StubDNSServer, name: str, records: list[str], record: str, status: Status
) -> None:
    dns.set(name, *records)
    report = check_domain(DOMAIN, selector=SELECTOR, resolver=dns.resolver())
    assert statuses(report)[record] is status


def test_a_subdomain_falls_back_to_the_organisational_dmarc(dns: StubDNSServer) -> None:
    dns.set(f"mail.{DOMAIN}", "v=spf1 -all")
    report = check_domain(f"mail.{DOMAIN}", resolver=dns.resolver())
    dmarc = report.findings[2]
    assert dmarc.status is Status.OK and dmarc.name == f"_dmarc.{DOMAIN}"


def test_a_failing_dns_is_an_error_not_a_missing_record(dns: StubDNSServer) -> None:
    dns.failing.add(DOMAIN)
    report = check_domain(DOMAIN, selector=SELECTOR, resolver=dns.resolver())
    assert statuses(report)["SPF"] is Status.ERROR
    assert "failed" in report.findings[0].message


def test_without_a_selector_dkim_is_missing(dns: StubDNSServer) -> None:
    report = check_domain(DOMAIN, resolver=dns.resolver())
    assert statuses(report)["DKIM"] is Status.MISSING
    assert "selector" in report.findings[1].message


# --- the command -----------------------------------------------------------------------


def config(tmp_path: Path, key: str) -> Path:
    file = tmp_path / "tenant-notify.toml"
    pem = key.replace("\n", "\\n")
    file.write_text(
        f"""
transport = "eager"
[tenants.acme]
name = "Acme"
email_from = "Acme <orders@{DOMAIN}>"
[tenants.acme.email]
provider = "smtp"
dkim_selector = "{SELECTOR}"
dkim_private_key = "{pem}"
[tenants.globex]
name = "Globex"
email_from = "hello@globex.test"
""",
        encoding="utf-8",
    )
    return file


def test_the_command_reports_each_record_and_exits_by_verdict(
    dns: StubDNSServer,
    key: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TENANT_NOTIFY_CONFIG_FILE", raising=False)
    file = str(config(tmp_path, key[0]))
    code = main(["check-domain", "acme", "--config", file, "--nameserver", dns.nameserver()])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ok         DKIM  tn2026._domainkey.acme.test: published; matches" in out
    assert "records OK" in out
    assert key[0].splitlines()[1] not in out  # the key never shows

    code = main(["check-domain", "globex", "--config", file, "--nameserver", dns.nameserver()])
    captured = capsys.readouterr()
    assert code == 1
    assert "missing    SPF   globex.test" in captured.out
    assert "need attention" in captured.err
