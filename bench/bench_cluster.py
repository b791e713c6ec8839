"""chi-redis on a 3-master Redis Cluster beside the single node, same machine, same run.

Starts its own cluster (``bench/localcluster.py``: 3 masters on free loopback ports, no
replicas unless ``--replicas 1``) beside the single node (``--port``, else a redis-server of
its own), and runs each scenario on both, one after the other, with three topics whose
streams live on the three masters (on the single node the same three topics)::

  chi.{single,cluster}.publish.single        EventBus.publish one at a time, the topics in turn
  chi.{single,cluster}.publish_batch.1000    publish_batch of 1000 events of one topic (each
                                             call the next topic)
  chi.{single,cluster}.publish_batch.mixed   publish_batch of 1000 events whose topics
                                             alternate (a cluster runs one script call per
                                             run of one topic: 1000 calls, pipelined by node)
  chi.{single,cluster}.e2e.procs2.threads4   publish N (batches of 1000, the topics in turn),
                                             one subscription on all three topics handles
                                             them in 2 `dramatiq chi_redis.worker` processes
                                             x 4 threads (a no-op handler); first publish to
                                             last ack
  raw.{single,cluster}.xadd.single           raw redis-py XADD one at a time, the topics in
                                             turn (what the cluster client itself costs)

``redis_cpu`` is every node's CPU together (% of one core).  ``bench/run`` prints the
ratios cluster ÷ single node.  On a 2-core machine a cluster cannot be faster than one
node: three redis-servers, the client and the workers share the same two cores, and the
cluster client does more per command (slot lookup, a connection per node); the ratios
show what running on a cluster costs, not what it gains on real hosts.

Run:  .venv/bin/python bench/bench_cluster.py [-n 20000] [--port P] [--replicas 1]
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import redis  # noqa: E402
from common import base_args, fresh, log, redis_port, wanted  # noqa: E402
from localcluster import LocalCluster, local_cluster, on_distinct_masters  # noqa: E402
from workers import (  # noqa: E402
    cpu_seconds,
    start_workers,
    stop_workers,
    wait_drained,
    wait_groups,
)

from chi_redis import Event, EventBus, connect  # noqa: E402

NS = "benchcl"
PAYLOAD = {"order_id": 1, "amount": 129.95, "sku": "SKU-0042", "qty": 3}
SPREAD_SUB = "bench-spread"


def spread_topics() -> list[str]:
    """The e2e handlers' topics (``e2e_handlers.SPREAD_TOPICS``), one on each master."""
    from localcluster import topics_by_slot_range

    return topics_by_slot_range("benchspread")


class Target:
    """One side of the comparison: a client, the bus on it, and the CPU of its nodes."""

    def __init__(self, name: str, url: str, cpu: Callable[[], float],
                 flush: Callable[[], None]) -> None:
        self.name = name
        self.url = url
        self.client = connect(url)
        self.bus = EventBus(self.client, namespace=NS)
        self.cpu = cpu
        self.flush = flush


@contextlib.contextmanager
def timed(t: Target) -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    c0, p0, w0 = t.cpu(), time.process_time(), time.perf_counter()
    try:
        yield out
    finally:
        out["wall"] = time.perf_counter() - w0
        out["py"] = time.process_time() - p0
        out["redis"] = t.cpu() - c0


def emit(name: str, n: int, m: dict[str, float], **extra: object) -> None:
    wall = m["wall"] or float("nan")
    cols = [f"{name} {n / wall:.0f}", f"py_cpu={100 * m['py'] / wall:.0f}%",
            f"redis_cpu={100 * m['redis'] / wall:.0f}%", f"n={n}", f"wall={m['wall']:.2f}s"]
    print("  ".join(cols + [f"{k}={v}" for k, v in extra.items()]), flush=True)


def events(topics: list[str], n: int, per_topic_run: int) -> list[Event]:
    """``n`` events whose topic changes every ``per_topic_run`` events."""
    return [Event(type="order.created", topic=topics[(i // per_topic_run) % len(topics)],
                  data=PAYLOAD) for i in range(n)]


def run_length(n: int) -> int:
    """Events of one topic in a row: 1000 (a batch), fewer when ``n`` is small, so every
    topic (every master) gets some."""
    return max(1, min(1000, n // 3))


def publish_single(t: Target, topics: list[str], n: int) -> None:
    evs = events(topics, n, 1)
    t.bus.publish(evs[0])  # connections to every node, scripts loaded
    with timed(t) as m:
        for e in evs:
            t.bus.publish(e)
    emit(f"chi.{t.name}.publish.single", n, m)


def publish_batch(t: Target, topics: list[str], n: int, mixed: bool) -> None:
    evs = events(topics, n, 1 if mixed else run_length(n))
    t.bus.publish_batch(evs[:1000])
    with timed(t) as m:
        for i in range(0, n, 1000):
            t.bus.publish_batch(evs[i:i + 1000], chunk_size=1000)
    emit(f"chi.{t.name}.publish_batch.{'mixed' if mixed else '1000'}", n, m)


def raw_xadd(t: Target, topics: list[str], n: int) -> None:
    keys = [f"{NS}:raw:{{{topic}}}" for topic in topics]
    body: dict[Any, Any] = {"data": b"x" * 120, "type": b"order.created"}
    for k in keys:
        t.client.xadd(k, body)
    with timed(t) as m:
        for i in range(n):
            t.client.xadd(keys[i % 3], body)
    emit(f"raw.{t.name}.xadd.single", n, m)


def e2e(t: Target, topics: list[str], n: int, procs: int) -> None:
    streams = [t.bus.keys.stream(topic) for topic in topics]
    proc = start_workers(t.url, NS, procs, 4, [SPREAD_SUB])
    try:
        for s in streams:
            wait_groups(t.client, s, [SPREAD_SUB], 120, proc)
        warm = t.bus.publish_batch([Event(type="order.created", topic=x, data=PAYLOAD)
                                    for x in topics])
        for s, last in zip(streams, warm, strict=True):
            wait_drained(t.client, s, [SPREAD_SUB], last.encode(), 120, proc)
        evs = events(topics, n, run_length(n))
        cpu0 = cpu_seconds(proc.pid)
        with timed(t) as m:
            ids = t.bus.publish_batch(evs, chunk_size=1000)
            last_ids = {e.topic: sid for e, sid in zip(evs, ids, strict=True)}
            for topic, s in zip(topics, streams, strict=True):
                if topic in last_ids:
                    wait_drained(t.client, s, [SPREAD_SUB], last_ids[topic].encode(), 600,
                                 proc)
        workers_cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        stop_workers(proc)
    emit(f"chi.{t.name}.e2e.procs{procs}.threads4", n, m, procs=procs, threads=4,
         workers_cpu=f"{100 * workers_cpu / m['wall']:.0f}%")


def run(args: Any, cluster: LocalCluster) -> None:
    single_r = redis.Redis(host=args.host, port=args.port)
    fresh(single_r)
    cluster.flush()

    def single_cpu() -> float:
        info = single_r.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    targets = [
        Target("single", f"redis://{args.host}:{args.port}/0", single_cpu,
               lambda: fresh(single_r)),
        Target("cluster", cluster.url, cluster.cpu_seconds, cluster.flush),
    ]
    topics = spread_topics()
    if not on_distinct_masters(cluster, [targets[1].bus.keys.stream(x) for x in topics]):
        raise SystemExit(f"the topics {topics} are not on three different masters")
    n, n_single = args.n, min(args.n, args.n_single)
    scenarios: list[tuple[str, Callable[[Target], None]]] = [
        ("publish.single", lambda t: publish_single(t, topics, n_single)),
        ("publish_batch.1000", lambda t: publish_batch(t, topics, n, mixed=False)),
        ("publish_batch.mixed", lambda t: publish_batch(t, topics, n, mixed=True)),
        ("xadd.single", lambda t: raw_xadd(t, topics, n_single)),
        ("e2e.procs2.threads4", lambda t: e2e(t, topics, n, 2)),
    ]
    for name, fn in scenarios:
        for t in targets:  # one scenario on both sides back to back: the same box state
            prefix = "raw" if name.startswith("xadd") else "chi"
            if wanted(args, f"{prefix}.{t.name}.{name}"):
                fn(t)
                t.flush()


def main() -> None:
    parser = base_args(__doc__ or "", 20_000)
    parser.add_argument("--n-single", type=int, default=5_000,
                        help="events published one at a time (at most -n)")
    parser.add_argument("--replicas", type=int, default=0, choices=(0, 1),
                        help="replicas of each master (default 0)")
    args = parser.parse_args()
    with redis_port(args), local_cluster(args.replicas) as cluster:
        log(f"cluster: {len(cluster.ports)} nodes ({args.replicas} replica(s) a master)"
            f" on ports {cluster.ports}")
        run(args, cluster)

if __name__ == "__main__":
    main()
