"""Fixtures shared by every suite.

- ``fake_client``: fakeredis pinned to Redis 7.0, Lua through lupa.
- ``real_client``: the redis-server at ``CHI_TEST_REDIS_URL`` (default 127.0.0.1:6379/0);
  skipped when unreachable, failed when ``CI=true``.  Never flushed: each test works in its
  own ``namespace`` and the keys ``<namespace>:*`` are deleted afterwards.
- ``bus``: an :class:`~chi_redis.EventBus` on fakeredis and on the real server.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from chi_redis import EventBus

sys.path.insert(0, str(Path(__file__).parent))

from helpers import connect_real_redis, delete_namespace

REAL = pytest.param("real", marks=pytest.mark.redis)


def redis_url() -> str:
    """The shared test server's URL."""
    return os.environ.get("CHI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses (keys are cleaned up by the client fixtures)."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer(version=(7, 0))


@pytest.fixture
def fake_client(fake_server: fakeredis.FakeServer) -> Iterator[redis.Redis]:
    client = fakeredis.FakeRedis(server=fake_server, version=(7, 0))
    yield client
    client.close()


@pytest.fixture
def real_client(namespace: str) -> Iterator[redis.Redis]:
    """A client of the shared real server; deletes ``<namespace>:*`` at teardown."""
    client = connect_real_redis(redis_url())
    try:
        yield client
    finally:
        delete_namespace(client, namespace)
        client.close()


@pytest.fixture(params=["fake", REAL])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    """A client of fakeredis or of the real server."""
    name = "fake_client" if request.param == "fake" else "real_client"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def bus(client: redis.Redis, namespace: str) -> EventBus:
    """An EventBus in this test's namespace, on fakeredis and on the real server."""
    return EventBus(client, namespace=namespace)
