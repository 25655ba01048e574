"""The provider pool: a tenant's provider table is built once, and rebuilt when the
tenant changes."""

from __future__ import annotations

import pytest

from tenant_notify import _pool
from tenant_notify._pool import ProviderPool
from tenant_notify.models import Channel
from tenant_notify.providers.smtp import SmtpProvider
from tenant_notify.tenants import Tenant

DEFAULTS = {
    Channel.EMAIL: {"provider": "smtp", "host": "relay.platform.test"},
    Channel.SMS: {"provider": "console"},
}


def tenant(**email: object) -> Tenant:
    return Tenant(id="acme", name="Acme", email_from="orders@acme.test", email=email or None)


def test_a_delivery_does_not_merge_the_tenant_table_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = ProviderPool(DEFAULTS)
    acme = tenant(host="smtp.acme.test")
    pool.check(acme)  # what the Notifier does at build time
    merges: list[object] = []
    merge = _pool.merge_tables
    monkeypatch.setattr(_pool, "merge_tables", lambda *a: merges.append(a) or merge(*a))
    for _ in range(3):  # what every delivery asks
        pool.provider_names(acme, Channel.EMAIL)
        pool.get(acme, Channel.EMAIL)
    assert merges == []


def test_a_changed_tenant_gets_its_new_provider() -> None:
    # A resolver reading tenants from a database hands out a new object when a
    # tenant's settings change; the pool must not keep serving the old provider.
    pool = ProviderPool(DEFAULTS)
    before = pool.get(tenant(host="smtp.acme.test"), Channel.EMAIL)
    after = pool.get(tenant(host="smtp2.acme.test"), Channel.EMAIL)
    assert isinstance(before, SmtpProvider) and isinstance(after, SmtpProvider)
    assert (before.config.host, after.config.host) == ("smtp.acme.test", "smtp2.acme.test")
    # An equal tenant object shares the instance (and its pooled connections).
    assert pool.get(tenant(host="smtp2.acme.test"), Channel.EMAIL) is after
    assert pool.get(tenant(), Channel.EMAIL).config.host == "relay.platform.test"  # type: ignore[attr-defined]
