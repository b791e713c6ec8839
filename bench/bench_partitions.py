"""Partitioned vs unpartitioned topic, end to end, in the same run (docs/design.md §15).

  chi.e2e.keyed.procs2.threads4        events with 1000 distinct keys on an ordinary topic:
                                       2 worker processes x 4 threads, no-op handler
  chi.e2e.part8.procs2.threads4        the same events on a topic of 8 partitions keyed by
                                       them: one event per partition in flight at a time
  chi.e2e.keyed.sleep1ms.procs2.threads4 / chi.e2e.part8.sleep1ms.procs2.threads4
                                       the same pair with a handler that takes 1 ms

The ratio part8 / keyed is the price of per-key order: a partition runs one event after
another, so with a no-op handler the read round trip per event bounds it, and with 8
partitions over 8 threads the 1 ms handler keeps at most 8 events running at once.

Run:  .venv/bin/python bench/bench_partitions.py [-n 20000] [--port P]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import redis  # noqa: E402
from common import base_args, measured, redis_port, report, wanted  # noqa: E402
from workers import drained, start_workers, stop_workers, wait_groups  # noqa: E402

from chi_redis import Event, EventBus  # noqa: E402

NS = "benchpart"
PARTITIONS = 8
KEYS = 1000


def events(topic: str, n: int) -> list[Event]:
    return [Event(type=f"{topic}.done", topic=topic,
                  data={"key": f"k{i % KEYS}", "order_id": i, "amount": 129.95})
            for i in range(n)]


def wait_all(r: redis.Redis, last: dict[str, bytes], group: str, timeout: float,
             proc: Any) -> None:
    """Poll until ``group`` drained every stream of ``last`` up to its last id."""
    deadline = time.monotonic() + timeout
    left = dict(last)
    while left:
        left = {s: i for s, i in left.items() if not drained(r, s, group, i)}
        if not left:
            return
        if proc.poll() is not None:
            raise SystemExit(f"the workers exited ({proc.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {group} to drain {sorted(left)}")
        time.sleep(0.005)


def scenario(args: Any, bus: EventBus, r: redis.Redis, name: str, topic: str, group: str,
             n: int, partitioned: bool) -> None:
    url = f"redis://{args.host}:{args.port}/0"
    for k in r.scan_iter(match=f"{NS}:*{topic}*"):
        r.delete(k)
    r.hdel(bus.keys.partitions(), topic)  # a declaration left by an interrupted run
    names = [topic]
    if partitioned:
        names = bus.declare_topic(topic, partitions=PARTITIONS, key="data.key").parts(topic)
    proc = start_workers(url, NS, 2, 4, [group])
    try:
        wait_groups(r, bus.keys.stream(names[0]), [group], 120, proc)
        owners = [bus.keys.owner(group, p) for p in names] if partitioned else []
        deadline = time.monotonic() + 120
        while owners and not all(r.mget(owners)):
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for the partitions to be owned")
            time.sleep(0.01)
        warm = events(topic, 2 * PARTITIONS)
        wait_all(r, _last(bus, warm, bus.publish_batch(warm)), group, 120, proc)
        batch = events(topic, n)
        with measured(r) as m:
            ids = bus.publish_batch(batch, chunk_size=1000)
            wait_all(r, _last(bus, batch, ids), group, 600, proc)
    finally:
        stop_workers(proc)
    report(name, n, m, procs=2, threads=4, partitions=PARTITIONS if partitioned else 0)


def _last(bus: EventBus, batch: list[Event], ids: list[str]) -> dict[str, bytes]:
    """The last stream id written to each stream (topic or partition) by ``batch``."""
    routed = bus.writer.route(batch) or [e.topic for e in batch]
    return {bus.keys.stream(name): sid.encode() for name, sid in zip(routed, ids, strict=True)}


def run(args: Any) -> None:
    r = redis.Redis(host=args.host, port=args.port)
    bus = EventBus(redis.Redis(host=args.host, port=args.port), namespace=NS)
    n, n_slow = args.n, min(args.n, args.n_slow)
    plan = [
        ("chi.e2e.keyed.procs2.threads4", "benchkeyed", "bench-keyed", n, False),
        ("chi.e2e.part8.procs2.threads4", "benchpart", "bench-part", n, True),
        ("chi.e2e.keyed.sleep1ms.procs2.threads4", "benchkeyedslow", "bench-keyed-slow",
         n_slow, False),
        ("chi.e2e.part8.sleep1ms.procs2.threads4", "benchpartslow", "bench-part-slow",
         n_slow, True),
    ]
    for name, topic, group, count, partitioned in plan:
        if wanted(args, name):
            scenario(args, bus, r, name, topic, group, count, partitioned)
    for k in r.scan_iter(match=f"{NS}:*"):
        r.delete(k)


def main() -> None:
    parser = base_args(__doc__ or "", 20_000)
    parser.add_argument("--n-slow", type=int, default=5_000,
                        help="events for the 1 ms handler (at most -n)")
    args = parser.parse_args()
    with redis_port(args):
        run(args)


if __name__ == "__main__":
    main()
