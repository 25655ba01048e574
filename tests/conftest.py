from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tenant_notify.testing import clear_outboxes

TENANTS = {
    "acme": {
        "name": "Acme Shop",
        "email_from": "Acme Shop <orders@acme.test>",
        "sms_from": "+15005550006",
        "locale": "en",
        "branding": {"primary_color": "#b91c1c"},
    },
    "globex": {
        "name": "Globex Café",
        "email_from": "hello@globex.test",
        "locale": "de",
    },
}


@pytest.fixture(autouse=True)
def _fresh_outboxes() -> Iterator[None]:
    clear_outboxes()
    yield
    clear_outboxes()


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    # The CLI configures structlog (it is an application); keep that out of other tests.
    yield
    structlog.reset_defaults()


@pytest.fixture
def tenants() -> dict[str, dict[str, object]]:
    return {key: dict(value) for key, value in TENANTS.items()}
