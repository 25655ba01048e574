"""``Publisher.flush`` waits for every confirm, also those of a link a sender holds.

A link checked out of the pool (a sender writing, or the confirm reader polling)
is skipped by ``sweep``; flush must keep waiting for it rather than take the
skipped link's 0 for "nothing left" and report failure while confirms are still
coming in (``close`` goes through the same flush).
"""

from __future__ import annotations

import threading
import time

from tenant_notify.config import CelerySettings
from tenant_notify.transports.celery.publisher import Publisher, _Link


def _busy_link_with_one_unconfirmed(publisher: Publisher) -> _Link:
    link = _Link(publisher)
    link.unconfirmed[1] = object()  # type: ignore[assignment]
    with publisher._lock:
        publisher._links.append(link)  # checked out: not in publisher._idle
    return link


def test_flush_waits_for_a_link_in_a_senders_hands() -> None:
    publisher = Publisher(CelerySettings(broker_url="amqp://guest:guest@127.0.0.1:1//"))
    link = _busy_link_with_one_unconfirmed(publisher)

    def confirm_then_return() -> None:
        time.sleep(0.3)
        link.unconfirmed.clear()  # the broker's confirm, read by the link's holder
        publisher._release(link)

    threading.Thread(target=confirm_then_return, daemon=True).start()
    assert publisher.flush(10.0) is True


def test_flush_reports_what_stays_unconfirmed_when_time_runs_out() -> None:
    publisher = Publisher(CelerySettings(broker_url="amqp://guest:guest@127.0.0.1:1//"))
    _busy_link_with_one_unconfirmed(publisher)
    started = time.monotonic()
    assert publisher.flush(0.2) is False
    assert time.monotonic() - started >= 0.2
