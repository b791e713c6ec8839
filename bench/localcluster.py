"""A Redis Cluster of the bench's own: 3 masters (and optionally one replica each) on free
loopback ports, started with ``redis-server --cluster-enabled yes`` and joined with
``redis-cli --cluster create``; stopped by the PIDs started here.

The tests have their own (``tests/support/cluster.py``); this one is kept apart so ``bench/``
runs from a fresh clone without the test tree.  Nodes keep no data on disk (``--save ''
--appendonly no``), like the bench's single node, so the two are compared on equal terms.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

__all__ = ["MASTERS", "LocalCluster", "local_cluster", "on_distinct_masters",
           "topics_by_slot_range"]

MASTERS = 3


class LocalCluster:
    """``MASTERS`` masters and ``replicas`` replicas of each, on free loopback ports."""

    def __init__(self, replicas: int = 0) -> None:
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                raise SystemExit(f"{binary} is not installed (apt-get install redis-server)")
        self.replicas = replicas
        self.workdir = Path(tempfile.mkdtemp(prefix="chi-bench-cluster-"))
        self.ports: list[int] = []
        while len(self.ports) < MASTERS * (1 + replicas):
            port = _cluster_port()
            if port not in self.ports:
                self.ports.append(port)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """One node's URL: chi-redis finds the rest (``cluster_enabled:1``)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> LocalCluster:
        for port in self.ports:
            node_dir = self.workdir / str(port)
            node_dir.mkdir()
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(node_dir), "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node_dir / "nodes.conf"),
                 "--cluster-node-timeout", "5000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda p=port: _ping(p), f"node {port} answers")
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=120)
        self._wait(self._ready, "cluster state ok on every node")
        return self

    def _wait(self, ok: object, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ok():  # type: ignore[operator]
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.stop()
                raise SystemExit(f"local cluster: timed out waiting until {what}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        synced = 0
        for port in self.ports:
            with contextlib.closing(redis.Redis(port=port, socket_timeout=5)) as c:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
                repl = c.info("replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") == "up":
                    synced += 1
        return synced == MASTERS * self.replicas

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.ports[0], socket_timeout=10)

    def flush(self) -> None:
        """Empty every master (the bench's own nodes, never a shared server)."""
        with contextlib.closing(self.client()) as c:
            for node in c.get_primaries():
                node.redis_connection.flushall()

    def cpu_seconds(self) -> float:
        """User + system CPU of every node so far (``INFO cpu``)."""
        total = 0.0
        for port in self.ports:
            with contextlib.closing(redis.Redis(port=port, socket_timeout=5)) as c:
                info = c.info("cpu")
                total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(replicas: int = 0) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster`, stopped afterwards."""
    cluster = LocalCluster(replicas)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def on_distinct_masters(cluster: LocalCluster, keys: list[str]) -> bool:
    """Whether ``keys`` live on different masters of ``cluster``."""
    with contextlib.closing(cluster.client()) as c:
        return len({c.get_node_from_key(k).name for k in keys}) == len(keys)


def topics_by_slot_range(prefix: str) -> list[str]:
    """``MASTERS`` topic names whose hash-tag slots fall in the three ranges ``redis-cli
    --cluster create`` gives 3 masters (0-5460, 5461-10922, 10923-16383): the worker
    processes subscribe at import, before they could ask the cluster."""
    bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
    found: list[str] = []
    for lo, hi in bounds:
        topic = next(f"{prefix}-{i}" for i in range(10_000)
                     if lo <= key_slot(f"{prefix}-{i}".encode()) <= hi)
        found.append(topic)
    return found


def _ping(port: int) -> bool:
    with contextlib.suppress(redis.ConnectionError), \
            contextlib.closing(redis.Redis(port=port, socket_timeout=2)) as c:
        return bool(c.ping())
    return False


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(1000):
        with contextlib.closing(socket.socket()) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= 55535 and _free(port + 10000):
            return port
    raise SystemExit("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
