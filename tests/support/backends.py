"""Backends of the runtime conformance suite (tests/contract/test_runtime_conformance.py).

A :class:`Backend` says how to open a :class:`Session` (a bus in a fresh namespace, and how
other processes reach it) and which :class:`Features` it has.  A behaviour that needs a
feature (``@pytest.mark.needs``) is generated only for the backends that have it; the
stated reason of each missing feature says why a combination does not exist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from chi_redis import EventBus

from .cluster import delete_cluster_namespace, shared_cluster
from .keys import delete_namespace
from .servers import REDIS_URL, RedisServer, connect_real_redis


@dataclass(frozen=True)
class Features:
    """What a backend can do.  ``reasons`` explains each ``False``."""

    multi_process: bool = True  # `dramatiq chi_redis.worker` subprocesses can share it
    kill_and_restart: bool = False  # a test may `kill -9` the server and start it again
    persistence: bool = False  # what was written survives that restart
    server_time_reclaim: bool = True  # idle entries are reclaimed by their idle time
    guaranteed_order: bool = True  # one consumer thread handles one topic in publish order
    replay: bool = True  # `bus.replay` / `chi-redis replay` (checkpointed redelivery)
    batch: bool = True  # batch subscriptions (`batch_size`)
    reasons: dict[str, str] = field(default_factory=dict)

    def missing(self, *names: str) -> str | None:
        """Why the backend lacks one of ``names`` (None when it has them all)."""
        for name in names:
            if not getattr(self, name):
                return self.reasons.get(name, f"the backend has no {name}")
        return None


@dataclass
class Session:
    """One test's view of a backend: a bus in a fresh namespace.

    ``url`` reaches the same data from another process (None without ``multi_process``);
    ``server`` is the redis-server the session owns (only with ``kill_and_restart``).
    """

    bus: EventBus
    url: str | None = None
    server: RedisServer | None = None
    #: Run workers as :class:`chi_redis.embedded.InProcessWorker` (the embedded bus's way)
    #: instead of the toolkit's own StreamsBroker + Dramatiq Worker.
    in_process_worker: bool = False

    @property
    def client(self) -> Any:
        return self.bus.client

    def strand(self, sub: str, topic: str, count: int) -> int:
        """Read up to ``count`` entries of ``topic`` for ``sub`` as a consumer that then dies
        (never acks, never hands them back); returns how many it took."""
        stream = self.bus.keys.stream(topic)
        got = self.client.xreadgroup(sub, "dead-consumer", {stream: ">"}, count=count)
        return sum(len(entries) for _, entries in got or [])


Opener = Callable[[str, Path], contextlib.AbstractContextManager[Session]]


@dataclass(frozen=True)
class Backend:
    """A backend the conformance suite runs against: ``open(ns, tmp_path)`` gives a session."""

    name: str
    open: Opener
    features: Features
    marks: tuple[pytest.MarkDecorator, ...] = ()

    def param(self) -> Any:
        """This backend as a ``pytest.param`` (id = name, with its marks)."""
        return pytest.param(self, id=self.name, marks=self.marks)


# the backends ------------------------------------------------------------------------------
@contextlib.contextmanager
def _fakeredis(ns: str, tmp_path: Path) -> Iterator[Session]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)), version=(7, 0))
    try:
        yield Session(EventBus(client, namespace=ns))
    finally:
        client.close()


@contextlib.contextmanager
def _embedded(ns: str, tmp_path: Path) -> Iterator[Session]:
    bus = EventBus.embedded(namespace=ns)
    try:
        yield Session(bus, in_process_worker=True)
    finally:
        bus.close()


@contextlib.contextmanager
def _shared_redis(ns: str, tmp_path: Path) -> Iterator[Session]:
    client = connect_real_redis(REDIS_URL)
    try:
        yield Session(EventBus(client, namespace=ns), url=REDIS_URL)
    finally:
        delete_namespace(client, ns)
        client.close()


@contextlib.contextmanager
def _own_redis(ns: str, tmp_path: Path) -> Iterator[Session]:
    server = RedisServer(tmp_path / "redis", persistence=True).start()
    client: redis.Redis = server.client(socket_timeout=30)
    try:
        yield Session(EventBus(client, namespace=ns), url=server.url, server=server)
    finally:
        client.close()
        server.stop()


@contextlib.contextmanager
def _cluster(ns: str, tmp_path: Path) -> Iterator[Session]:
    url = shared_cluster().url
    bus = EventBus.from_url(url, namespace=ns)  # detects the cluster from one node's URL
    try:
        yield Session(bus, url=url)
    finally:
        delete_cluster_namespace(bus.client, ns)
        bus.close()


FAKEREDIS = Backend(
    "fakeredis",
    _fakeredis,
    Features(
        multi_process=False,
        reasons={
            "multi_process": "fakeredis lives in the test process; a worker subprocess "
                             "cannot reach it",
            "kill_and_restart": "fakeredis has no server process to kill",
            "persistence": "fakeredis keeps nothing across a restart",
        },
    ),
)
EMBEDDED = Backend(
    "embedded",
    _embedded,
    Features(
        multi_process=False,
        reasons={
            "multi_process": "the embedded bus's server lives in the test process; a worker "
                             "subprocess cannot reach it",
            "kill_and_restart": "the embedded bus has no server process to kill",
            "persistence": "the embedded bus keeps nothing beyond its process",
        },
    ),
)
SHARED_REDIS = Backend(
    "redis",
    _shared_redis,
    Features(reasons={
        "kill_and_restart": "the shared server at 127.0.0.1:6379 is never killed by a test",
        "persistence": "the shared server is never restarted by a test",
    }),
    marks=(pytest.mark.redis,),
)
OWN_REDIS = Backend(
    "redis-own-aof",
    _own_redis,
    Features(kill_and_restart=True, persistence=True),
    marks=(pytest.mark.redis,),
)

CLUSTER = Backend(
    "redis-cluster",
    _cluster,
    Features(reasons={
        "kill_and_restart": "a cluster node's failover is its own scenario, not a restart",
        "persistence": "the test cluster runs without persistence",
    }),
    marks=(pytest.mark.redis,),
)

BACKENDS: list[Backend] = [FAKEREDIS, EMBEDDED, SHARED_REDIS, OWN_REDIS, CLUSTER]
