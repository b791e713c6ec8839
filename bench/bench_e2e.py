"""chi-redis end to end: publish N events, wait until a no-op subscription handled them all.

  chi.e2e.procs1.threads4   one `dramatiq chi_redis.worker` process x 4 threads
  chi.e2e.procs2.threads4   two worker processes x 4 threads (the issue's target: ≥14,400/s)
  chi.consume.procs2.threads4  the same, events published before the workers start
  chi.latency_p50_ms/_p99_ms   publish→handler start at 1,000 events/s for 5 s

Workers are real Dramatiq CLI processes started by this script; "handled" means acked:
the group has nothing pending and has read the last published entry.  Baselines in the
same run: raw redis-py XREADGROUP COUNT 100 + one XACK per batch (no framework), and
the peers' scripts (FastStream, stock Dramatiq) when run through run_all.sh.

Run standalone:  python bench/bench_e2e.py --port 6391   (a redis-server you started)
Or beside the peers:  EXTRA_BENCH_DIRS=$PWD/bench PY=$PWD/.venv/bin/python \
    /work/shared/peers/run_all.sh 6391
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = ROOT.parent / "shared" / "peers"
for p in (str(ROOT), str(PEERS)):
    if p not in sys.path:
        sys.path.insert(0, p)

import redis  # noqa: E402

from chi_redis import Event, EventBus  # noqa: E402

try:
    from common import base_args, measured, percentiles, report, report_value
except ImportError:  # pragma: no cover - standalone without the peers folder
    raise SystemExit("needs /work/shared/peers/common.py on the path") from None

NS = "benche2e"
PAYLOAD = {"order_id": 1, "amount": 129.95, "sku": "SKU-0042", "qty": 3}


def start_workers(url: str, processes: int, threads: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHI_REDIS_URL": url,
        "CHI_NAMESPACE": NS,
        "PYTHONPATH": f"{ROOT}:{HERE}",
        "dramatiq_queue_prefetch": os.environ.get("BENCH_PREFETCH", "64"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "chi_redis.worker", "bench_handlers",
         "--processes", str(processes), "--threads", str(threads), "--queues", "bench-noop",
         "bench-latency"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def stop_workers(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def drained(r: redis.Redis, stream: str, group: str, last_id: bytes) -> bool:
    for g in r.xinfo_groups(stream):
        if g["name"] == group.encode():
            return g["pending"] == 0 and g["last-delivered-id"] == last_id
    return False


def wait_drained(r: redis.Redis, stream: str, group: str, last_id: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not drained(r, stream, group, last_id):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {group} to drain {stream}")
        time.sleep(0.005)


def wait_ready(bus: EventBus, r: redis.Redis, stream: str) -> None:
    """Publish one warm-up event and wait until the workers acked it."""
    sid = bus.publish(Event(type="bench.warmup", topic="bench", data=PAYLOAD)).encode()
    wait_drained(r, stream, "bench-noop", sid, 120)


def e2e(args: object, bus: EventBus, r: redis.Redis, procs: int, threads: int, pre: bool) -> None:
    n = args.n  # type: ignore[attr-defined]
    url = f"redis://{args.host}:{args.port}/0"  # type: ignore[attr-defined]
    stream = bus.keys.stream("bench")
    events = [Event(type="bench.done", topic="bench", data=PAYLOAD) for _ in range(n)]
    if pre:
        r.delete(stream)
        r.xgroup_create(stream, "bench-noop", id="$", mkstream=True)
        ids = bus.publish_batch(events, chunk_size=1000)
        proc = start_workers(url, procs, threads)
        try:
            with measured(r) as m:
                wait_drained(r, stream, "bench-noop", ids[-1].encode(), 600)
        finally:
            stop_workers(proc)
        report(f"chi.consume.procs{procs}.threads{threads}", n, m)
        return
    proc = start_workers(url, procs, threads)
    try:
        wait_ready(bus, r, stream)
        with measured(r) as m:
            ids = bus.publish_batch(events, chunk_size=1000)
            wait_drained(r, stream, "bench-noop", ids[-1].encode(), 600)
    finally:
        stop_workers(proc)
    report(f"chi.e2e.procs{procs}.threads{threads}", n, m)


def raw_baseline(args: object, r: redis.Redis) -> None:
    """XADD pipelined then XREADGROUP COUNT 100 + one XACK per batch, one client."""
    n = args.n  # type: ignore[attr-defined]
    r.delete("raw")
    r.xgroup_create("raw", "g", id="$", mkstream=True)
    import msgspec

    body = msgspec.msgpack.encode(PAYLOAD)
    with measured(r) as m:
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd("raw", {"id": str(i), "type": "bench.done", "data": body})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        done = 0
        while done < n:
            resp = r.xreadgroup("g", "c", {"raw": ">"}, count=100, block=1000)
            ids = [mid for mid, f in resp[0][1] if msgspec.msgpack.decode(f[b"data"]) is not None]
            r.xack("raw", "g", *ids)
            done += len(ids)
    report("chi.baseline.raw_xreadgroup_e2e", n, m)


def latency(
    args: object, bus: EventBus, r: redis.Redis, rate: int = 1000, seconds: float = 5.0
) -> None:
    url = f"redis://{args.host}:{args.port}/0"  # type: ignore[attr-defined]
    key = f"{NS}:bench:latency"
    r.delete(key)
    proc = start_workers(url, 1, 4)
    try:
        wait_ready(bus, r, bus.keys.stream("bench"))
        total = int(rate * seconds)
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            bus.publish(Event(type="benchlat.tick", data=PAYLOAD))
        achieved = total / (time.perf_counter() - t0)
        deadline = time.monotonic() + 60
        while r.llen(key) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        lat = [float(x) for x in r.lrange(key, 0, -1)][50:]
    finally:
        stop_workers(proc)
    p50, p99, mx = percentiles(lat)
    report_value("chi.latency_p50_ms", p50, rate=f"{achieved:.0f}/s", n=len(lat))
    report_value("chi.latency_p99_ms", p99, rate=f"{achieved:.0f}/s", n=len(lat))
    report_value("chi.latency_max_ms", mx, n=len(lat))


def main() -> None:
    parser = base_args(__doc__, 50_000)
    args = parser.parse_args()
    r = redis.Redis(host=args.host, port=args.port)
    bus = EventBus(redis.Redis(host=args.host, port=args.port), namespace=NS)
    only = [s for s in args.only.split(",") if s]

    def want(name: str) -> bool:
        return not only or any(s in name for s in only)

    if want("chi.baseline"):
        raw_baseline(args, r)
    for procs in (1, 2):
        if want(f"chi.e2e.procs{procs}"):
            e2e(args, bus, r, procs, 4, pre=False)
    if want("chi.consume"):
        e2e(args, bus, r, 2, 4, pre=True)
    if want("chi.latency"):
        latency(args, bus, r)


if __name__ == "__main__":
    main()
