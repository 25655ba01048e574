from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from tenant_notify.config import CONFIG_FILE_VARIABLE
from tenant_notify.log import LOGGER_NAME
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
def _config_file_variable_as_it_was() -> Iterator[None]:
    # The CLI's --config sets TENANT_NOTIFY_CONFIG_FILE in its process's environment
    # (so worker processes read the same file), and main() runs in the test process:
    # keep one test's file out of the next test's Notifier.from_env().
    before = os.environ.get(CONFIG_FILE_VARIABLE)
    yield
    if before is None:
        os.environ.pop(CONFIG_FILE_VARIABLE, None)
    else:
        os.environ[CONFIG_FILE_VARIABLE] = before


@pytest.fixture(autouse=True)
def _library_logger_as_it_was() -> Iterator[None]:
    # The CLI configures the library's logger (it is an application), and main()
    # runs in the test process: keep its level and handler out of other tests.
    logger = logging.getLogger(LOGGER_NAME)
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.fixture
def tenants() -> dict[str, dict[str, object]]:
    return {key: dict(value) for key, value in TENANTS.items()}
