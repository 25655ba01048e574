from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

SHOP_DIR = Path(__file__).resolve().parents[2] / "examples" / "shop"


def pytest_configure(config: pytest.Config) -> None:
    # Installed, tenant-notify registers its pytest plugin through the pytest11 entry
    # point (as in CI). Run from a source checkout (PYTHONPATH=src) it is not
    # installed, so register the same module here; a host application needs neither.
    if not config.pluginmanager.has_plugin("tenant_notify"):
        from tenant_notify import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "tenant_notify")


@pytest.fixture
def notify_tenants() -> dict[str, Any]:
    """The plugin's notifiers know the shop's tenants, exactly as its notify.toml has them."""
    with (SHOP_DIR / "notify.toml").open("rb") as file:
        tenants: dict[str, Any] = tomllib.load(file)["tenants"]
    return tenants
