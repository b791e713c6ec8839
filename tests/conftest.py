"""Fixtures shared by every suite (helpers live in the ``support`` package next to this).

- ``ns``: a namespace no other test uses; the real-server fixtures delete ``<ns>:*`` after.
- ``fake_client``: fakeredis pinned to Redis 7.0, Lua through lupa.
- ``real_client``: the redis-server at ``CHI_TEST_REDIS_URL`` (default 127.0.0.1:6379/0);
  skipped when unreachable, failed when ``CI=true``.  Never flushed.
- ``client`` / ``bus``: parametrised over fakeredis and the real server.
- ``redis_servers``: own redis-servers (:class:`support.RedisServers`), stopped afterwards.

A test that uses the real server must carry the ``redis`` marker: the collection fails
otherwise (see :mod:`support.markers`).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from chi_redis import EventBus

sys.path.insert(0, str(Path(__file__).parent))

from support.cluster import LocalCluster, shared_cluster
from support.keys import delete_namespace
from support.markers import REAL, check_collection, require_redis_marker
from support.servers import RedisServers, connect_real_redis, redis_url

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true",
                     help="run only the slow reliability tier (tests marked soak): "
                          "scripts/reliability-soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    check_collection(items)
    # The slow tier is its own command: without --soak its tests are deselected (not
    # skipped), with it only they run.
    soak = config.getoption("--soak")
    keep = [i for i in items if (i.get_closest_marker("soak") is not None) == soak]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture
def ns() -> str:
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
def real_client(request: pytest.FixtureRequest, ns: str) -> Iterator[redis.Redis]:
    """A client of the shared real server; deletes ``<ns>:*`` at teardown."""
    require_redis_marker(request.node, "real_client")
    client = connect_real_redis(redis_url())
    try:
        yield client
    finally:
        delete_namespace(client, ns)
        client.close()


@pytest.fixture(params=["fake", REAL])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    """A client of fakeredis or of the real server."""
    name = "fake_client" if request.param == "fake" else "real_client"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def bus(client: redis.Redis, ns: str) -> EventBus:
    """An EventBus in this test's namespace, on fakeredis and on the real server."""
    return EventBus(client, namespace=ns)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local Redis Cluster (3 masters + 3 replicas) shared by the session's tests."""
    cluster = shared_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServers]:
    """Own redis-servers of this test (``redis_servers.start(...)``), stopped at teardown."""
    require_redis_marker(request.node, "redis_servers")
    servers = RedisServers(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def rabbit(request: pytest.FixtureRequest, ns: str) -> Iterator[Any]:
    """A RabbitMQEventBus in this test's namespace (needs the ``rabbitmq`` marker); its
    queues and exchanges are deleted at teardown."""
    from support.rabbitmq import rabbitmq_bus, require_rabbitmq

    require_rabbitmq(request.node)
    with rabbitmq_bus(ns) as bus:
        yield bus
