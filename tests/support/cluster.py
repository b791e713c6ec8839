"""A local Redis Cluster of the tests: 3 masters + 3 replicas on free loopback ports.

Each node is an own :class:`~support.servers.RedisServer` started with ``--cluster-enabled
yes`` in its own directory; ``redis-cli --cluster create`` joins them.  Stopping signals only
the PIDs started here.  The ``redis_cluster`` fixture (tests/conftest.py) is session-scoped:
the cluster tests share one cluster and keep apart by namespace.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from pathlib import Path

from redis.cluster import RedisCluster

from .ports import free_port
from .servers import RedisServer
from .skips import require_redis_server_binary, skip_or_fail
from .waiting import wait_until

MASTERS = 3


class LocalCluster:
    """Six cluster nodes (three masters, one replica each) this test session owns."""

    def __init__(self, workdir: Path) -> None:
        require_redis_server_binary()
        if shutil.which("redis-cli") is None:
            skip_or_fail("redis-cli is not installed")
        self.nodes = [
            RedisServer(workdir / f"node-{i}", "--cluster-enabled", "yes",
                        "--cluster-config-file", str(workdir / f"node-{i}" / "nodes.conf"),
                        "--cluster-node-timeout", "2000")
            for i in range(MASTERS * 2)
        ]
        for node in self.nodes:
            node.port = _cluster_port()

    @property
    def url(self) -> str:
        """The URL of one node (any node's URL reaches the whole cluster)."""
        return self.nodes[0].url

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas",
                        "1", "--cluster-yes"], check=True, capture_output=True, timeout=120)
        wait_until(self._ready, 60, message="cluster state ok on every node", interval=0.1)
        return self

    def _ready(self) -> bool:
        """Every node sees the cluster ok, and every replica is in sync with its master
        (else a master killed at once has no replica to take over)."""
        replicas = 0
        for node in self.nodes:
            with contextlib.closing(node.client()) as c:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
                repl = c.info("replication")
                if repl.get("role") == "slave":
                    if repl.get("master_link_status") != "up":
                        return False
                    replicas += 1
        if replicas != MASTERS:
            return False
        with contextlib.closing(self.client()) as c:
            return len(c.get_primaries()) == MASTERS

    def client(self) -> RedisCluster:
        """A plain redis-py cluster client (for test set-up and checks), through the first
        node still running."""
        node = next(n for n in self.nodes if n.alive())
        return RedisCluster.from_url(node.url, socket_timeout=10)

    def owner(self, key: str) -> str:
        """``host:port`` of the master that owns ``key``'s slot."""
        with contextlib.closing(self.client()) as c:
            node = c.get_node_from_key(key)
            return f"{node.host}:{node.port}"

    def replica_of(self, master: str) -> RedisServer:
        """The node that replicates the master at ``host:port``."""
        port = int(master.rsplit(":", 1)[1])
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.closing(node.client()) as c:
                repl = c.info("replication")
            if repl.get("role") == "slave" and int(repl.get("master_port", 0)) == port:
                return node
        raise AssertionError(f"no replica of {master}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(1000):
        port = free_port()
        if port <= 55535 and _free(port + 10000):
            return port
    raise AssertionError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def spread_topics(cluster: LocalCluster, stream_key: object, prefix: str,
                  count: int = MASTERS) -> list[str]:
    """``count`` topic names (``prefix-N``) whose streams live on different masters.

    ``stream_key`` maps a topic to its stream key (``Keys(ns).stream``).
    """
    found: dict[str, str] = {}
    for i in range(200):
        topic = f"{prefix}-{i}"
        owner = cluster.owner(stream_key(topic))  # type: ignore[operator]
        if owner not in found.values():
            found[topic] = owner
        if len(found) == count:
            return list(found)
    raise AssertionError("could not spread topics over the masters")





_SHARED: list[LocalCluster] = []


def shared_cluster(workdir: Path | None = None) -> LocalCluster:
    """The one local cluster of this test process, started on first use and stopped (by
    the PIDs started) when the process exits."""
    if not _SHARED:
        import atexit
        import tempfile

        where = workdir or Path(tempfile.mkdtemp(prefix="chi-cluster-"))
        cluster = LocalCluster(where)
        atexit.register(cluster.stop)
        _SHARED.append(cluster.start())
    return _SHARED[0]


def delete_cluster_namespace(client: RedisCluster, namespace: str) -> None:
    """Delete every key ``<namespace>:*`` on every master, one key at a time (keys of
    different slots cannot share a DEL)."""
    for node in client.get_primaries():
        conn = node.redis_connection
        for key in conn.scan_iter(match=f"{namespace}:*", count=1000):
            conn.unlink(key)
