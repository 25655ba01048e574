"""Helpers the reputation tests share."""

from __future__ import annotations

from typing import Any

__all__ = ["router_client"]


def router_client(notify: Any, secrets: dict[str, str] | None = None) -> Any:
    """A TestClient on the notifier's router under /api; ``secrets``: provider -> the
    webhook secret of every tenant."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tenant_notify.contrib.fastapi import make_router
    from tests.contrib.test_fastapi import current_tenant

    table = dict(secrets or {})
    app = FastAPI()
    app.include_router(
        make_router(
            notify,
            admin_dependency=lambda: None,
            tenant_dependency=current_tenant,
            webhook_secrets=lambda tenant_id, provider: table.get(provider),
        ),
        prefix="/api",
    )
    return TestClient(app)
