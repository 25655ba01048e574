"""Fixtures for the reputation tests: each store contract runs on memory and on a real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tenant_notify.reputation import MemoryReputationStore
from tenant_notify.reputation.redis import RedisReputationStore

# The provider fakes and moto's server, here too.
from tests.providers.conftest import aws, fake_api, moto_session  # noqa: F401

REDIS_URL = "redis://127.0.0.1:6379/15"


def redis_client() -> Any:
    """A client on DB 15, or a skip (a failure under CI) when Redis is not there."""
    import redis

    client = redis.Redis.from_url(
        REDIS_URL, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        client.ping()
    except redis.RedisError as err:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is needed under CI: {err}")
        pytest.skip(f"Redis is not reachable: {err}")
    return client


@pytest.fixture
def redis_prefix() -> Iterator[tuple[Any, str]]:
    """A Redis client and a key prefix of this test's own; its keys are deleted after."""
    client = redis_client()
    prefix = f"tn_rep:{uuid.uuid4().hex[:10]}:"
    yield client, prefix
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryReputationStore()
    client, prefix = request.getfixturevalue("redis_prefix")
    return RedisReputationStore(client, key_prefix=prefix, engagement_ttl=60)
