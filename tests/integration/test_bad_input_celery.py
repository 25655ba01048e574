"""On the Celery transport, undeliverable input is refused at the call as on the others.

The same cases as tests/test_notifier.py (tests/bad_input.py), sent through a
Notifier on a real RabbitMQ and Redis with a queue and key prefix of this run
and no worker: each must raise its error, and the queue must stay empty, while
one good send lands in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify import Notifier
from tests.bad_input import BAD_SENDS
from tests.integration.conftest import _cleanup, queued, settings_table
from tests.smtp_server import LoopbackSMTPServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def celery_settings(run_id: str, smtp: LoopbackSMTPServer) -> Iterator[dict[str, Any]]:
    settings = settings_table(f"{run_id}v", smtp.port)
    settings["tenants"]["acme"] = {"name": "Acme Shop", "email_from": "orders@acme.test"}
    yield settings
    _cleanup(settings)


@pytest.fixture(scope="module")
def notify(celery_settings: dict[str, Any]) -> Iterator[Notifier]:
    with Notifier.from_settings(celery_settings) as notifier:
        yield notifier


@pytest.mark.parametrize("case", list(BAD_SENDS))
def test_undeliverable_input_is_refused_at_the_call_on_celery(
    notify: Notifier, celery_settings: dict[str, Any], case: str
) -> None:
    send, error, message = BAD_SENDS[case]
    before = queued(celery_settings)
    with pytest.raises(error, match=message) as caught:
        send(notify)
    assert type(caught.value) is error
    assert queued(celery_settings) == before


def test_a_good_send_is_queued_where_the_bad_ones_were_not(
    notify: Notifier, celery_settings: dict[str, Any]
) -> None:
    before = queued(celery_settings)
    notify.send_email(to_email="j@example.com", subject="Hi", body="b", tenant_id="acme")
    assert queued(celery_settings) == before + 1
