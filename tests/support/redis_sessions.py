"""The Redis backends of the runtime conformance suite: fakeredis, the embedded bus, the
shared redis-server, an own redis-server with AOF (killed and restarted by a test) and the
session's Redis Cluster.

Workers run in this process as the toolkit's StreamsBroker + Dramatiq Worker
(:class:`support.runtime.Runtime`), or as :class:`chi_redis.embedded.InProcessWorker` on the
embedded bus; worker processes are ``dramatiq chi_redis.worker``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from chi_redis import EventBus
from chi_redis.embedded import InProcessWorker
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker

from .backends import DEADLINE_S, Backend, Features, Session
from .cluster import delete_cluster_namespace, shared_cluster
from .keys import delete_namespace
from .processes import WorkerProcess, wait_ready, worker_env
from .runtime import FAST, Runtime, in_process_runtime, wait_groups
from .servers import REDIS_URL, RedisServer, connect_real_redis


def malformed_fields(type_: str, event_id: str) -> dict[str, Any]:
    """The fields of a topic entry whose payload (``data``) is not valid MessagePack."""
    return {"id": event_id, "type": type_, "ts": "1", "ver": "1.0", "meta": "{}",
            "enc": "mp", "data": b"\xc1"}


class RedisSession(Session):
    """A session on an :class:`EventBus`; ``in_process_worker``: run workers as
    :class:`InProcessWorker` (the embedded bus's way) instead of StreamsBroker + Worker."""

    def __init__(self, bus: EventBus, *, url: str | None = None, server: Any = None,
                 in_process_worker: bool = False) -> None:
        super().__init__(bus, url=url, server=server)
        self.in_process_worker = in_process_worker
        self.rt: Runtime | None = None
        self.workers: list[InProcessWorker] = []
        self.prepared: StreamsBroker | None = None
        self.started: list[StreamsBroker] = []

    @property
    def client(self) -> Any:
        return self.bus.client

    @contextlib.contextmanager
    def running(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        with in_process_runtime(self.bus, monkeypatch, kind="conformance") as rt:
            self.rt = rt
            try:
                yield
            finally:
                for worker in self.workers:
                    worker.close()
                assert [t for w in self.workers for t in w.alive_threads()] == []

    def prepare(self, **options: Any) -> None:
        """A broker with every subscription registered so far (groups created), not running."""
        assert self.rt is not None, "prepare() outside running()"
        if not self.in_process_worker:
            self.prepared = self.rt.broker(**options)
            return
        worker = InProcessWorker(self.bus, options=BrokerOptions(**{**FAST, **options}))
        self.workers.append(worker)
        self.prepared = worker.broker

    def run(self, threads: int = 4) -> None:
        broker, self.prepared = self.prepared, None
        assert broker is not None and self.rt is not None, "run() without prepare()"
        self.started.append(broker)
        for worker in self.workers:
            if worker.broker is broker:
                worker.threads = threads
                worker.start()
                return
        self.rt.worker(broker, threads=threads)

    def join(self, sub: str) -> None:
        """StreamsBroker.join: nothing pending, nothing unread, nothing delayed."""
        self.started[-1].join(sub, timeout=int(DEADLINE_S * 1000))

    def strand(self, sub: str, topic: str, count: int) -> int:
        stream = self.bus.keys.stream(topic)
        got = self.client.xreadgroup(sub, "dead-consumer", {stream: ">"}, count=count)
        return sum(len(entries) for _, entries in got or [])

    def inject_malformed(self, topic: str, type_: str, event_id: str) -> str:
        sid = self.client.xadd(self.bus.keys.stream(topic), malformed_fields(type_, event_id))
        return sid.decode() if isinstance(sid, bytes) else str(sid)

    def worker_process(self, module: str, threads: int, log: Path, **env: str) -> WorkerProcess:
        assert self.url is not None
        full = worker_env(self.url, self.bus.namespace, **env)
        return WorkerProcess(module, full, log, threads=threads).start()

    def wait_ready(self, proc: WorkerProcess, subs: dict[str, list[str]]) -> None:
        wait_ready(proc)
        wait_groups(self.client, self.bus, subs)


# the backends ------------------------------------------------------------------------------
@contextlib.contextmanager
def _fakeredis(ns: str, tmp_path: Path) -> Iterator[Session]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)), version=(7, 0))
    try:
        yield RedisSession(EventBus(client, namespace=ns))
    finally:
        client.close()


@contextlib.contextmanager
def _embedded(ns: str, tmp_path: Path) -> Iterator[Session]:
    bus = EventBus.embedded(namespace=ns)
    try:
        yield RedisSession(bus, in_process_worker=True)
    finally:
        bus.close()


@contextlib.contextmanager
def _shared_redis(ns: str, tmp_path: Path) -> Iterator[Session]:
    client = connect_real_redis(REDIS_URL)
    try:
        yield RedisSession(EventBus(client, namespace=ns), url=REDIS_URL)
    finally:
        delete_namespace(client, ns)
        client.close()


@contextlib.contextmanager
def _own_redis(ns: str, tmp_path: Path) -> Iterator[Session]:
    server = RedisServer(tmp_path / "redis", persistence=True).start()
    client: redis.Redis = server.client(socket_timeout=30)
    try:
        yield RedisSession(EventBus(client, namespace=ns), url=server.url, server=server)
    finally:
        client.close()
        server.stop()


@contextlib.contextmanager
def _cluster(ns: str, tmp_path: Path) -> Iterator[Session]:
    url = shared_cluster().url
    bus = EventBus.from_url(url, namespace=ns)  # detects the cluster from one node's URL
    try:
        yield RedisSession(bus, url=url)
    finally:
        delete_cluster_namespace(bus.client, ns)
        bus.close()


#: What no Redis backend has yet.
_REDIS_REASONS = {
    "refuses": "the Redis runtime takes every option the suite knows",
    "key_order": "partitioned topics (issue #13, item 2) are not built yet: a subscription's"
                 " consumers share a topic's entries with no per-key lease",
}
FAKEREDIS = Backend(
    "fakeredis",
    _fakeredis,
    Features(
        multi_process=False,
        reasons={
            **_REDIS_REASONS,
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
            **_REDIS_REASONS,
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
        **_REDIS_REASONS,
        "kill_and_restart": "the shared server at 127.0.0.1:6379 is never killed by a test",
        "persistence": "the shared server is never restarted by a test",
    }),
    marks=(pytest.mark.redis,),
)
OWN_REDIS = Backend(
    "redis-own-aof",
    _own_redis,
    Features(kill_and_restart=True, persistence=True, reasons=dict(_REDIS_REASONS)),
    marks=(pytest.mark.redis,),
)
CLUSTER = Backend(
    "redis-cluster",
    _cluster,
    Features(reasons={
        **_REDIS_REASONS,
        "kill_and_restart": "a cluster node's failover is its own scenario, not a restart",
        "persistence": "the test cluster runs without persistence",
    }),
    marks=(pytest.mark.redis,),
)

REDIS_BACKENDS: list[Backend] = [FAKEREDIS, EMBEDDED, SHARED_REDIS, OWN_REDIS, CLUSTER]
