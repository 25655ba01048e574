"""pytest fixtures for applications that send with tenant-notify.

Installing tenant-notify registers this module under pytest's ``pytest11`` entry
point, so the fixtures are there in every test run without a ``conftest.py``
line. Every name starts with ``notify_`` (or names the object it gives) so it
does not shadow the host's own fixtures; a host fixture of the same name wins.

* ``notify_outbox``: the ``"default"`` :class:`~tenant_notify.testing.Outbox`,
  emptied before and after the test.
* ``notify_tenants``: the tenant tables the notifiers below are built with. Set
  them per test with ``@pytest.mark.notify_tenants({...})`` or override the
  fixture in a ``conftest.py``.
* ``notify_settings``: extra settings keys for those notifiers (``{}``; override
  it to add ``templates_dir``, say).
* ``notify_factory``: builds notifiers like
  :func:`~tenant_notify.testing.make_notifier` and closes them after the test.
* ``tenant_notifier``: ``notify_factory()``: eager transport, memory provider,
  ``notify_outbox`` as its outbox.
* ``scripted_provider``: builds :class:`~tenant_notify.testing.ScriptedProvider`
  instances that write to ``notify_outbox``.

Importing this module is cheap: the library is imported when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .providers.base import Provider
    from .testing import Outbox, ScriptedProvider, TestNotifier

__all__ = [
    "notify_factory",
    "notify_outbox",
    "notify_settings",
    "notify_tenants",
    "scripted_provider",
    "tenant_notifier",
]

_OUTBOX = "default"

_NO_TENANTS = (
    "tenant-notify: no tenants for this notifier. Mark the test with "
    '@pytest.mark.notify_tenants({"acme": {"name": "Acme", "email_from": "o@acme.test"}}), '
    "override the notify_tenants fixture in your conftest.py, "
    "or pass tenants= to notify_factory()."
)


def pytest_configure(config: pytest.Config) -> None:
    # Registered so that hosts running with --strict-markers can use it.
    config.addinivalue_line(
        "markers",
        "notify_tenants(tenants): tenant tables for tenant-notify's notify_factory "
        "and tenant_notifier fixtures",
    )


@pytest.fixture
def notify_outbox() -> Iterator[Outbox]:
    """The outbox the test notifiers deliver to, empty at the start of the test."""
    from .testing import get_outbox

    outbox = get_outbox(_OUTBOX)
    outbox.clear()
    yield outbox
    outbox.clear()


@pytest.fixture
def notify_tenants() -> Mapping[str, Mapping[str, Any]]:
    """Tenant tables for ``notify_factory``; override it, or use the marker."""
    pytest.fail(_NO_TENANTS, pytrace=False)


@pytest.fixture
def notify_settings() -> Mapping[str, Any]:
    """Extra settings keys for ``notify_factory``; override it to add your own."""
    return {}


@pytest.fixture
def notify_factory(
    request: pytest.FixtureRequest,
    notify_outbox: Outbox,
    notify_settings: Mapping[str, Any],
) -> Iterator[Callable[..., TestNotifier]]:
    """Build test notifiers; each is closed when the test ends.

    ``notify_factory(tenants=None, *, provider=None, transport="eager", **settings)``
    takes the arguments of :func:`~tenant_notify.testing.make_notifier`. Tenants
    come from the argument, else the ``notify_tenants`` marker, else the
    ``notify_tenants`` fixture. ``settings`` are merged over ``notify_settings``.
    """
    from .testing import make_notifier

    built: list[TestNotifier] = []

    def factory(
        tenants: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        provider: Provider | None = None,
        transport: str = "eager",
        **settings: Any,
    ) -> TestNotifier:
        if tenants is None:
            marker = request.node.get_closest_marker("notify_tenants")
            if marker is not None:
                if len(marker.args) != 1 or marker.kwargs:
                    pytest.fail(
                        "@pytest.mark.notify_tenants takes one argument: the tenant tables",
                        pytrace=False,
                    )
                tenants = marker.args[0]
            else:
                tenants = request.getfixturevalue("notify_tenants")
        notifier = make_notifier(
            tenants=tenants,
            provider=provider,
            outbox=notify_outbox.name,
            transport=transport,
            **{**notify_settings, **settings},
        )
        built.append(notifier)
        return notifier

    yield factory
    for notifier in reversed(built):
        notifier.close()


@pytest.fixture
def tenant_notifier(notify_factory: Callable[..., TestNotifier]) -> TestNotifier:
    """A notifier on the eager transport delivering into ``notify_outbox``."""
    return notify_factory()


@pytest.fixture
def scripted_provider(
    notify_outbox: Outbox,
) -> Callable[..., ScriptedProvider]:
    """Build providers that fail on demand, delivering into ``notify_outbox``.

    ``scripted_provider(script=(), *, then="ok", retry_after=None)``; pass one to
    ``notify_factory(provider=...)``. Steps: ``"ok"``, ``"transient"``,
    ``"permanent"``, ``"ambiguous"`` or an exception instance.
    """
    from .testing import ScriptedProvider

    def factory(
        script: Iterable[str | BaseException] = (),
        *,
        then: str | BaseException = "ok",
        retry_after: float | None = None,
    ) -> ScriptedProvider:
        return ScriptedProvider(
            script, then=then, outbox=notify_outbox.name, retry_after=retry_after
        )

    return factory
