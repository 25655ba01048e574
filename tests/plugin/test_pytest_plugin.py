"""The pytest plugin, run the way a host application's suite would run it."""

from __future__ import annotations

import os
from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]


def _plugin_args() -> list[str]:
    """Load the plugin in the inner run unless pytest will load it itself.

    Installed (as CI installs it), the ``pytest11`` entry point loads it, and
    naming it again with ``-p`` would register it twice. From a source tree
    (``PYTHONPATH=src``) there is no entry point, so name the module.
    """
    installed = any(
        ep.value == "tenant_notify.pytest_plugin" for ep in entry_points(group="pytest11")
    )
    if installed and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return []
    return ["-p", "tenant_notify.pytest_plugin"]


HOST_CONFTEST = """
import pytest

TENANTS = {
    "acme": {"name": "Acme Shop", "email_from": "Acme Shop <orders@acme.test>",
             "sms_from": "+15005550006"},
    "globex": {"name": "Globex", "email_from": "hello@globex.test", "locale": "de"},
}


@pytest.fixture
def notify_tenants():
    return TENANTS
"""

HOST_TESTS = """
import pytest

from tenant_notify.testing import assert_not_sent, assert_sent


def place_order(notifier, order_id, email, tenant_id="acme"):
    return notifier.send_order_confirmation(
        order_id=order_id, customer_email=email, order_total="12.50",
        currency="EUR", tenant_id=tenant_id,
    )


def test_confirmation(tenant_notifier, notify_outbox):
    place_order(tenant_notifier, "A-1", "jane@example.com")
    email = assert_sent(notify_outbox, kind="order_confirmation", to="jane@example.com",
                        tenant_id="acme")
    assert "A-1" in email.subject
    assert_not_sent(notify_outbox, tenant_id="globex")


def test_outbox_starts_empty(notify_outbox):
    assert len(notify_outbox) == 0


@pytest.mark.notify_tenants({"solo": {"name": "Solo", "email_from": "s@solo.test"}})
def test_marker_tenants(tenant_notifier, notify_outbox):
    tenant_notifier.send_welcome_email(user_email="a@example.com", user_name="A",
                                       tenant_id="solo")
    assert_sent(notify_outbox, kind="welcome", tenant_id="solo")


def test_error_path(notify_factory, scripted_provider, notify_outbox):
    notifier = notify_factory(provider=scripted_provider(["permanent"]))
    status = place_order(notifier, "A-2", "jane@example.com").wait(timeout=5)
    assert status.state == "failed"
    assert_not_sent(notify_outbox)


def test_retry_path(notify_factory, scripted_provider):
    provider = scripted_provider(["transient"])
    notifier = notify_factory(provider=provider)
    status = place_order(notifier, "A-3", "jane@example.com").wait(timeout=5)
    assert status.state == "sent" and status.attempts == 2


def test_wrong_recipient_fails(tenant_notifier, notify_outbox):
    place_order(tenant_notifier, "A-4", "jane@example.com")
    assert_sent(notify_outbox, kind="order_confirmation", to="john@example.com")
"""


def test_a_host_suite_uses_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HOST_CONFTEST)
    pytester.makepyfile(test_shop=HOST_TESTS)
    result = pytester.runpytest("--strict-markers", *_plugin_args())
    result.assert_outcomes(passed=5, failed=1)
    # The failure says what was wanted and lists what was sent instead.
    result.stdout.fnmatch_lines(
        [
            "*expected one message matching kind='order_confirmation', to='john@example.com',"
            " found none*",
            "*1. email 'order_confirmation' to jane@example.com for tenant 'acme'*",
        ]
    )


def test_without_tenants_the_failure_says_how_to_give_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_it(tenant_notifier):
            pass
        """
    )
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.notify_tenants*notify_tenants fixture*"])


def test_notifiers_are_closed_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        built = []

        @pytest.mark.notify_tenants({"acme": {"name": "Acme", "email_from": "o@acme.test"}})
        def test_build(notify_factory):
            built.append(notify_factory())
            built.append(notify_factory(transport="inprocess"))

        def test_closed():
            assert all(n._closed for n in built)
        """
    )
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(passed=2)


def test_loading_the_plugin_imports_no_optional_dependency() -> None:
    # pytest loads the plugin in every run of a host's suite, whatever it tests.
    import subprocess
    import sys

    code = "import sys, tenant_notify.pytest_plugin; print(' '.join(sorted(sys.modules)))"
    modules = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    optional = {"celery", "kombu", "redis", "httpx", "cryptography", "yaml", "prometheus_client"}
    assert optional.isdisjoint(modules)
    assert "tenant_notify.testing" not in modules
