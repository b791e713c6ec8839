"""chi-redis end to end: publish N events, wait until the subscriptions handled them all.

  chi.baseline.raw_xreadgroup_e2e   raw redis-py: pipelined XADD, then XREADGROUP COUNT 100
                                    and one XACK per batch, one client (the baseline)
  chi.e2e.procs1.threads4           one `dramatiq chi_redis.worker` process x 4 threads, no-op
  chi.e2e.procs2.threads4           two worker processes x 4 threads, no-op
  chi.e2e.sleep1ms.procs{1,2}.threads4   the same with a handler that takes 1 ms
  chi.consume.procs2.threads4       events published before the workers start, timed
                                    from their first read (their boot is not consuming)
  chi.e2e.batch.procs{1,2}.threads4 a batch subscription (batch_size=100): "n/a" on a
                                    chi-redis without batch subscriptions
  chi.e2e.fanout4.procs2.threads4   4 subscriptions on one topic, each handles every event
  chi.baseline.raw_fanout4          raw: 4 groups read in turn by one client (deliveries/s)
  chi.e2e.glob1of8.procs2.threads4  a glob subscription that matches 1 event in 8
  chi.baseline.raw_glob1of8         raw: read every entry, match the type, decode the 1 in 8

Rates are events published per second, first publish to last ack (fan-out: deliveries, 4
per event); ``workers_cpu`` is the CPU of every worker process together (% of one core) and
``per_cpu_s`` the deliveries per CPU-second of the workers (also printed as a line of its own,
``<name>.per_cpu_s``, which the table compares with StubBroker's); ``workers_runq`` the time
their threads were runnable but waited for a CPU (the kernel's run queue, all threads
summed, % of the wall time; "nan" without Linux's schedstat).  Workers are real Dramatiq CLI
processes (``bench/workers.py``); the baselines run in this process against the same
redis-server.  Stock Dramatiq, FastStream and taskiq
run in ``bench/peer_*.py``; ``bench/run`` prints them side by side.

Run:  .venv/bin/python bench/bench_e2e.py [-n 50000] [--port P]
      (without --port it starts a redis-server of its own on a free port)
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import msgspec  # noqa: E402
import redis  # noqa: E402
from common import (  # noqa: E402
    base_args,
    measured,
    redis_port,
    report,
    report_na,
    report_value,
    wanted,
)
from workers import (  # noqa: E402
    batch_supported,
    cpu_seconds,
    run_delay_seconds,
    start_workers,
    stop_workers,
    wait_drained,
    wait_groups,
    wait_reading,
)

from chi_redis import Event, EventBus  # noqa: E402

NS = "benche2e"
PAYLOAD = {"order_id": 1, "amount": 129.95, "sku": "SKU-0042", "qty": 3}
GLOB = "benchglob.k0.*"


class Scenario:
    """One end-to-end scenario: its topic, the type of its i-th event, queues and groups."""

    def __init__(self, topic: str, groups: list[str],
                 type_of: Callable[[int], str] | None = None) -> None:
        self.topic = topic
        self.groups = groups
        self.type_of = type_of or (lambda i: f"{topic}.done")

    def events(self, n: int) -> list[Event]:
        return [Event(type=self.type_of(i), topic=self.topic, data=PAYLOAD) for i in range(n)]


NOOP = Scenario("bench", ["bench-noop"])
SLEEP = Scenario("benchslow", ["bench-sleep"])
FANOUT = Scenario("benchfan", [f"bench-fan{i}" for i in range(4)])
GLOBS = Scenario("benchglob", ["bench-glob"], lambda i: f"benchglob.k{i % 8}.created")
BATCH = Scenario("benchbatch", ["bench-batch"])


def e2e(args: Any, bus: EventBus, r: redis.Redis, sc: Scenario, name: str, n: int,
        procs: int, pre: bool = False) -> None:
    """Publish ``n`` events of ``sc`` and time until every group of ``sc`` acked them all."""
    url = f"redis://{args.host}:{args.port}/0"
    stream = bus.keys.stream(sc.topic)
    events = sc.events(n)
    r.delete(stream)
    if pre:
        for g in sc.groups:
            r.xgroup_create(stream, g, id="$", mkstream=True)
        ids = bus.publish_batch(events, chunk_size=1000)
    proc = start_workers(url, NS, procs, 4, sc.groups)
    try:
        if pre:
            # From the workers' first read: their boot (imports, fork) is not consuming.
            wait_reading(r, stream, sc.groups, 120, proc)
            cpu0, delay0 = cpu_seconds(proc.pid), run_delay_seconds(proc.pid)
            with measured(r) as m:
                wait_drained(r, stream, sc.groups, ids[-1].encode(), 600, proc)
        else:
            wait_groups(r, stream, sc.groups, 120, proc)
            warm = bus.publish(Event(type=sc.type_of(0), topic=sc.topic, data=PAYLOAD))
            wait_drained(r, stream, sc.groups, warm.encode(), 120, proc)
            cpu0, delay0 = cpu_seconds(proc.pid), run_delay_seconds(proc.pid)
            with measured(r) as m:
                ids = bus.publish_batch(events, chunk_size=1000)
                wait_drained(r, stream, sc.groups, ids[-1].encode(), 600, proc)
        workers_cpu = cpu_seconds(proc.pid) - cpu0
        delay1 = run_delay_seconds(proc.pid)
    finally:
        stop_workers(proc)
    deliveries = n * len(sc.groups) if sc is FANOUT else n
    # Worker CPU: every worker process together, % of one core over the wall time, and
    # deliveries per CPU-second of the workers (compare StubBroker's, bench/peer_dramatiq.py).
    cpu = f"{100 * workers_cpu / m.wall:.0f}%" if m.wall else "nan"
    # Runnable but not running: every worker thread's wait for a CPU, % of the wall time.
    runq = (f"{100 * (delay1 - delay0) / m.wall:.0f}%"
            if m.wall and delay0 is not None and delay1 is not None else "nan")
    per_cpu = f"{deliveries / workers_cpu:.0f}" if workers_cpu else "nan"
    report(name, deliveries, m, events=n, procs=procs, threads=4, workers_cpu=cpu,
           workers_runq=runq, per_cpu_s=per_cpu)
    if workers_cpu > 0:
        report_value(f"{name}.per_cpu_s", deliveries / workers_cpu, procs=procs)
    else:
        report_na(f"{name}.per_cpu_s", "no worker CPU time measured")
    r.delete(stream)


def prefill_raw(r: redis.Redis, n: int, groups: list[str], type_of: Callable[[int], str]) -> None:
    r.delete("raw")
    for g in groups:
        r.xgroup_create("raw", g, id="$", mkstream=True)
    body = msgspec.msgpack.encode(PAYLOAD)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("raw", {"id": str(i), "type": type_of(i), "data": body})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def consume_raw(r: redis.Redis, group: str, n: int, match: str | None = None) -> None:
    """XREADGROUP COUNT 100 until ``n`` entries read; decode (the matching) ones; one XACK."""
    done = 0
    decode = msgspec.msgpack.decode
    while done < n:
        resp = r.xreadgroup(group, "c", {"raw": ">"}, count=100, block=1000)
        entries = resp[0][1]
        for _, f in entries:
            if match is None or fnmatch.fnmatchcase(f[b"type"].decode(), match):
                decode(f[b"data"])
        r.xack("raw", group, *[mid for mid, _ in entries])
        done += len(entries)


def raw_baselines(args: Any, r: redis.Redis) -> None:
    n = args.n
    if wanted(args, "chi.baseline.raw_xreadgroup_e2e"):
        with measured(r) as m:
            prefill_raw(r, n, ["g"], lambda i: "bench.done")
            consume_raw(r, "g", n)
        report("chi.baseline.raw_xreadgroup_e2e", n, m)
    if wanted(args, "chi.baseline.raw_fanout4"):
        groups = [f"g{i}" for i in range(4)]
        with measured(r) as m:
            prefill_raw(r, n, groups, lambda i: "bench.done")
            for g in groups:
                consume_raw(r, g, n)
        report("chi.baseline.raw_fanout4", 4 * n, m, events=n)
    if wanted(args, "chi.baseline.raw_glob1of8"):
        with measured(r) as m:
            prefill_raw(r, n, ["g"], GLOBS.type_of)
            consume_raw(r, "g", n, match=GLOB)
        report("chi.baseline.raw_glob1of8", n, m, matched=n // 8)
    r.delete("raw")


def run(args: Any) -> None:
    r = redis.Redis(host=args.host, port=args.port)
    bus = EventBus(redis.Redis(host=args.host, port=args.port), namespace=NS)
    n, n_slow = args.n, min(args.n, args.n_slow)
    raw_baselines(args, r)
    for procs in (1, 2):
        name = f"chi.e2e.procs{procs}.threads4"
        if wanted(args, name):
            e2e(args, bus, r, NOOP, name, n, procs)
    for procs in (1, 2):
        name = f"chi.e2e.sleep1ms.procs{procs}.threads4"
        if wanted(args, name):
            e2e(args, bus, r, SLEEP, name, n_slow, procs)
    if wanted(args, "chi.consume.procs2.threads4"):
        e2e(args, bus, r, NOOP, "chi.consume.procs2.threads4", n, 2, pre=True)
    for procs in (1, 2):
        name = f"chi.e2e.batch.procs{procs}.threads4"
        if not wanted(args, name):
            continue
        if batch_supported():
            e2e(args, bus, r, BATCH, name, n, procs)
        else:
            report_na(name, "no batch subscriptions")
    if wanted(args, "chi.e2e.fanout4"):
        e2e(args, bus, r, FANOUT, "chi.e2e.fanout4.procs2.threads4", n, 2)
    if wanted(args, "chi.e2e.glob1of8"):
        e2e(args, bus, r, GLOBS, "chi.e2e.glob1of8.procs2.threads4", n, 2)
    for k in r.scan_iter(match=f"{NS}:*"):
        r.delete(k)


def main() -> None:
    parser = base_args(__doc__ or "", 50_000)
    parser.add_argument("--n-slow", type=int, default=20_000,
                        help="events for the 1 ms handler (at most -n)")
    args = parser.parse_args()
    with redis_port(args):
        run(args)


if __name__ == "__main__":
    main()
