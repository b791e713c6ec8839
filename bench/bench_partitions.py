"""A partitioned topic beside the same topic unpartitioned, end to end, same run and server.

  chi.e2e.partitioned8.procs2.threads4      a topic declared with 8 partitions keyed by
                                            ``data.key`` (64 keys): publish N, 2 `dramatiq
                                            chi_redis.worker` processes x 4 threads handle
                                            them (no-op), each partition owned by one
                                            consumer and handled one event at a time
  chi.e2e.unpartitioned.procs2.threads4     the same events on a plain topic, same workers
  chi.e2e.{partitioned8,unpartitioned}.sleep1ms.procs2.threads4
                                            the same with a handler that takes 1 ms (-n-slow)

Rates are events published per second, first publish to last ack.  On a chi-redis without
partitioned topics (no ``EventBus.declare_topic``) every row prints ``n/a``.

Run:  .venv/bin/python bench/bench_partitions.py [-n 50000] [--port P]
"""

from __future__ import annotations

import contextlib
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
from common import base_args, measured, redis_port, report, report_na, wanted  # noqa: E402
from workers import cpu_seconds, start_workers, stop_workers, wait_drained  # noqa: E402

from chi_redis import Event, EventBus  # noqa: E402

NS = "benchpart"
PARTITIONS, KEYS = 8, 64
NAMES = [f"chi.e2e.{kind}{slow}.procs2.threads4" for slow in ("", ".sleep1ms")
         for kind in ("partitioned8", "unpartitioned")]


def supported() -> bool:
    return hasattr(EventBus, "declare_topic")


def scenario(name: str) -> tuple[str, str]:
    """The topic and the subscription (``bench/e2e_handlers.py``) of result ``name``."""
    slow = "slow" if "sleep1ms" in name else ""
    if "unpartitioned" in name:
        return f"benchunpart{slow}", f"bench-unpart{slow}"
    return f"benchpart{slow}", f"bench-part{slow}"


def streams_and_last(bus: EventBus, topic: str, events: list[Event],
                     ids: list[str]) -> dict[str, bytes]:
    """Each stream the events went to, with the last stream id written there."""
    decl = bus.partitions.get(topic) if "unpart" not in topic else None
    last: dict[str, bytes] = {}
    for e, sid in zip(events, ids, strict=True):
        where = decl.part(topic, e) if decl is not None else topic
        last[bus.keys.stream(where)] = sid.encode()
    return last


def e2e(args: Any, bus: EventBus, r: redis.Redis, name: str, n: int) -> None:
    topic, sub = scenario(name)
    url = f"redis://{args.host}:{args.port}/0"
    proc = start_workers(url, NS, 2, 4, [sub])
    try:
        # Warm-up: one event of every key, so every partition is owned and read.
        warm = [Event(type=f"{topic}.done", topic=topic, data={"key": f"k{k}"})
                for k in range(KEYS)]
        ids = _publish_when_read(bus, r, topic, sub, warm, proc)
        for stream, last in streams_and_last(bus, topic, warm, ids).items():
            wait_drained(r, stream, [sub], last, 120, proc)
        events = [Event(type=f"{topic}.done", topic=topic, data={"key": f"k{i % KEYS}"})
                  for i in range(n)]
        cpu0 = cpu_seconds(proc.pid)
        with measured(r) as m:
            ids = bus.publish_batch(events, chunk_size=1000)
            for stream, last in streams_and_last(bus, topic, events, ids).items():
                wait_drained(r, stream, [sub], last, 600, proc)
        workers_cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        stop_workers(proc)
    report(name, n, m, procs=2, threads=4, partitions=PARTITIONS if "unpart" not in name
           else 1, keys=KEYS, workers_cpu=f"{100 * workers_cpu / m.wall:.0f}%")


def _publish_when_read(bus: EventBus, r: redis.Redis, topic: str, sub: str,
                       warm: list[Event], proc: Any) -> list[str]:
    """Publish ``warm`` once the workers' groups exist on every stream of ``topic`` (a
    group created after an entry would start past it)."""
    deadline = time.monotonic() + 120
    decl = bus.partitions.get(topic) if "unpart" not in topic else None
    streams = ([bus.keys.stream(x) for x in decl.parts(topic)] if decl is not None
               else [bus.keys.stream(topic)])
    while True:
        ready = 0
        for s in streams:
            with contextlib.suppress(redis.ResponseError):  # no stream yet
                ready += any(g["name"] == sub.encode() for g in r.xinfo_groups(s))
        if ready == len(streams):
            return bus.publish_batch(warm)
        if proc.poll() is not None:
            raise SystemExit(f"the workers exited ({proc.returncode}) before their groups existed")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {sub}'s groups on {topic}")
        time.sleep(0.01)


def run(args: Any) -> None:
    if not supported():
        for name in NAMES:
            if wanted(args, name):
                report_na(name, "no partitioned topics (EventBus.declare_topic)")
        return
    r = redis.Redis(host=args.host, port=args.port)
    for k in r.scan_iter(match=f"{NS}:*"):
        r.delete(k)
    bus = EventBus(redis.Redis(host=args.host, port=args.port), namespace=NS)
    for slow in ("", "slow"):
        bus.declare_topic(f"benchpart{slow}", partitions=PARTITIONS,
                          key="data.key")
    for name in NAMES:
        if wanted(args, name):
            e2e(args, bus, r, name, min(args.n, args.n_slow) if "sleep" in name else args.n)
    for k in r.scan_iter(match=f"{NS}:*"):
        r.delete(k)


def main() -> None:
    parser = base_args(__doc__ or "", 50_000)
    parser.add_argument("--n-slow", type=int, default=10_000,
                        help="events for the 1 ms handler (at most -n)")
    args = parser.parse_args()
    with redis_port(args):
        run(args)


if __name__ == "__main__":
    main()
