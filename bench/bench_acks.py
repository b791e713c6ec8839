"""The cost of ``acks="replicas"`` (WAIT for one replica) beside the default acks, same run.

  chi.acks.node.single[.replicas]      EventBus.publish, one event per call, on a master
                                       with one replica (default acks / acks="replicas")
  chi.acks.cluster.single[.replicas]   the same on a 3-master cluster (one replica each),
                                       three topics, one on each master
  chi.acks.cluster.batch100[.replicas] publish_batch of 100 events (three topics) per call

Every server is started here on free loopback ports (``redis-server --save ''``, the
cluster with ``redis-cli --cluster create``) and stopped by its PID at the end, so the
figures do not depend on ``--port``.  ``bench/run --only acks`` runs it in the suite.

Run:  .venv/bin/python bench/bench_acks.py [-n 5000] [--rounds 3]
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import redis  # noqa: E402
from common import _free_port, base_args, log, wanted  # noqa: E402
from redis.cluster import RedisCluster  # noqa: E402

from chi_redis import Event, EventBus  # noqa: E402


@contextlib.contextmanager
def servers(count: int, *extra: str) -> Iterator[list[int]]:
    """``count`` redis-servers (``extra`` options) on free ports; stopped by their PIDs."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    procs: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="chi-bench-acks-"))
    try:
        ports = []
        while len(ports) < count:
            port = _free_port()
            if port <= 55535 and port not in ports:  # a cluster bus port is port + 10000
                ports.append(port)
        for port in ports:
            folder = workdir / str(port)
            folder.mkdir()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(folder), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            _until(lambda p=port: _ping(p), f"redis-server on port {port}")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())
    except redis.ConnectionError:
        return False


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _replica_synced(port: int) -> bool:
    info = redis.Redis(port=port).info("replication")
    return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")


def _cluster_ready(ports: list[int]) -> bool:
    for port in ports:
        if redis.Redis(port=port).cluster("info").get("cluster_state") != "ok":
            return False
    return sum(_replica_synced(p) for p in ports) == 3


def _rate(bus: EventBus, topics: list[str], n: int, batch: int) -> float:
    events = [Event(type="bench.acked", topic=topics[i % len(topics)], data={"n": i})
              for i in range(n)]
    start = time.perf_counter()
    if batch == 1:
        for event in events:
            bus.publish(event)
    else:
        for i in range(0, n, batch):
            bus.publish_batch(events[i:i + batch])
    return n / (time.perf_counter() - start)


def _pair(name: str, url: str, topics: list[str], n: int, batch: int, rounds: int) -> None:
    """The default and the acks="replicas" figure of one scenario, rounds interleaved
    (the best of each), each round on fresh topics."""
    best = {"": 0.0, ".replicas": 0.0}
    for r in range(rounds):
        for suffix, acks in (("", "master"), (".replicas", "replicas")):
            bus = EventBus.from_url(url, namespace=f"bench{r}{suffix.strip('.')}", acks=acks)
            try:
                best[suffix] = max(best[suffix], _rate(bus, topics, n, batch))
            finally:
                bus.close()
    for suffix, rate in best.items():
        print(f"{name}{suffix} {rate:.0f}  n={n}  rounds={rounds}", flush=True)


def _spread(url: str) -> list[str]:
    """Three topics whose streams are on three different masters."""
    client = RedisCluster.from_url(url)
    owners: dict[str, str] = {}
    try:
        for i in range(500):
            topic = f"acks-{i}"
            node = client.get_node_from_key(f"bench:{{{topic}}}:stream").name
            if node not in owners.values():
                owners[topic] = node
            if len(owners) == 3:
                return list(owners)
    finally:
        client.close()
    raise SystemExit("could not spread three topics over the masters")


def main() -> None:
    parser = base_args(__doc__ or "", default_n=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n, rounds = args.n, args.rounds
    if wanted(args, "chi.acks.node"):
        with servers(1) as (master,), servers(1, "--replicaof", "127.0.0.1",
                                              str(master)) as (replica,):
            _until(lambda: _replica_synced(replica), "the replica in sync")
            log(f"master {master}, replica {replica}")
            _pair("chi.acks.node.single", f"redis://127.0.0.1:{master}/0", ["a", "b", "c"],
                  n, 1, rounds)
    if wanted(args, "chi.acks.cluster"):
        with servers(6, "--cluster-enabled", "yes", "--cluster-node-timeout", "5000") as ports:
            subprocess.run(["redis-cli", "--cluster", "create",
                            *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "1",
                            "--cluster-yes"], check=True, capture_output=True, timeout=120)
            _until(lambda: _cluster_ready(ports), "the cluster ok, replicas in sync")
            url = f"redis://127.0.0.1:{ports[0]}/0"
            # The namespaces differ per round: the hash tag is the topic, so the same
            # three topics stay on their three masters.
            topics = _spread(url)
            if wanted(args, "chi.acks.cluster.single"):
                _pair("chi.acks.cluster.single", url, topics, n, 1, rounds)
            if wanted(args, "chi.acks.cluster.batch100"):
                _pair("chi.acks.cluster.batch100", url, topics, n * 10, 100, rounds)


if __name__ == "__main__":
    main()
