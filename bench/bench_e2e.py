"""chi-redis end to end: publish N events, wait until a no-op subscription handled them all.

  chi.baseline.raw_xreadgroup_e2e  raw redis-py: pipelined XADD, then XREADGROUP COUNT 100 and
                                   one XACK per batch, one client, no framework (the baseline)
  chi.e2e.procs1.threads4          one `dramatiq chi_redis.worker` process x 4 threads
  chi.e2e.procs2.threads4          two worker processes x 4 threads (target: >= 14,400/s)
  chi.consume.procs2.threads4      the same, events published before the workers start
  chi.e2e_worker_cpu_us_per_event.*  CPU (user + system) of the worker processes over the
                                   measured window / events (steadier than events/s)
  chi.ratio.*                      each chi-redis figure / the raw baseline of the same run
  chi.baseline.latency_*_ms        raw redis-py: XADD at 1,000 events/s, a reader blocked in
                                   XREADGROUP BLOCK (publish -> read latency)
  chi.latency_p50_ms/_p99_ms       chi-redis: publish -> handler start at 1,000 events/s

Workers are real Dramatiq CLI processes started by this script; "handled" means acked:
the group has nothing pending and has read the last published entry.  The baselines run
in the same process against the same redis-server.  Peer frameworks (FastStream, stock
Dramatiq, taskiq) are not measured here: see bench/README.md for running beside a peers'
harness (CHI_PEERS_DIR).

Run:  .venv/bin/python bench/bench_e2e.py [-n 50000] [--port P]
      (without --port it starts a redis-server of its own on a free port)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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
    percentiles,
    redis_port,
    report,
    report_value,
)

from chi_redis import Event, EventBus  # noqa: E402

NS = "benche2e"
PAYLOAD = {"order_id": 1, "amount": 129.95, "sku": "SKU-0042", "qty": 3}
RATES: dict[str, float] = {}


def start_workers(url: str, processes: int, threads: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHI_REDIS_URL": url,
        "CHI_NAMESPACE": NS,
        "PYTHONPATH": f"{ROOT}:{HERE}",
        "dramatiq_queue_prefetch": os.environ.get("BENCH_PREFETCH", "64"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "chi_redis.worker", "e2e_handlers",
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


def workers_cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds (user + system) used so far by the dramatiq master and its worker
    processes (Linux /proc; NaN elsewhere): CPU per event is steadier than events/s on a
    shared machine."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        pids = [str(proc.pid), *Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                .read_text().split()]
    except OSError:
        return float("nan")
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(stat[11]) + int(stat[12])) / tick
    return total


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


def has_group(r: redis.Redis, stream: str, group: str) -> bool:
    try:
        return any(g["name"] == group.encode() for g in r.xinfo_groups(stream))
    except redis.ResponseError:  # no stream yet
        return False


def wait_ready(bus: EventBus, r: redis.Redis, stream: str, group: str = "bench-noop",
               topic: str = "bench") -> None:
    """Wait until the workers declared ``group``, then publish one warm-up event to ``topic``
    and wait until they acked it.  (An event published before the group exists is not
    delivered: the group starts after it, and the workers would still be booting.)"""
    deadline = time.monotonic() + 120
    while not has_group(r, stream, group):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for the workers to declare {group}")
        time.sleep(0.05)
    sid = bus.publish(Event(type=f"{topic}.warmup", topic=topic, data=PAYLOAD)).encode()
    wait_drained(r, stream, group, sid, 120)


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
        name = f"chi.consume.procs{procs}.threads{threads}"
        RATES[name] = report(name, n, m)
        return
    proc = start_workers(url, procs, threads)
    try:
        wait_ready(bus, r, stream)
        cpu0 = workers_cpu_s(proc)
        with measured(r) as m:
            ids = bus.publish_batch(events, chunk_size=1000)
            wait_drained(r, stream, "bench-noop", ids[-1].encode(), 600)
        cpu = workers_cpu_s(proc) - cpu0
    finally:
        stop_workers(proc)
    name = f"chi.e2e.procs{procs}.threads{threads}"
    RATES[name] = report(name, n, m)
    report_value(f"chi.e2e_worker_cpu_us_per_event.procs{procs}", cpu / n * 1e6)


def raw_baseline(args: object, r: redis.Redis) -> None:
    """XADD pipelined then XREADGROUP COUNT 100 + one XACK per batch, one client."""
    n = args.n  # type: ignore[attr-defined]
    r.delete("raw")
    r.xgroup_create("raw", "g", id="$", mkstream=True)
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
    RATES["chi.baseline.raw_xreadgroup_e2e"] = report("chi.baseline.raw_xreadgroup_e2e", n, m)
    r.delete("raw")


def paced(publish: object, rate: int, seconds: float) -> float:
    """Call ``publish(i)`` ``rate`` times a second for ``seconds``; returns the rate achieved."""
    total = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        publish(i)  # type: ignore[operator]
    return total / (time.perf_counter() - t0)


def raw_latency(r: redis.Redis, rate: int, seconds: float) -> None:
    """Raw redis-py publish -> read latency: XADD with the send time, a reader thread blocked
    in XREADGROUP (what a minimal consumer achieves on this box, the latency baseline)."""
    r.delete("rawlat")
    r.xgroup_create("rawlat", "g", id="$", mkstream=True)
    total = int(rate * seconds)
    lat: list[float] = []
    kw = r.connection_pool.connection_kwargs
    reader_client = redis.Redis(host=kw["host"], port=kw["port"])

    def read() -> None:
        deadline = time.monotonic() + seconds + 60
        while len(lat) < total and time.monotonic() < deadline:
            resp = reader_client.xreadgroup("g", "c", {"rawlat": ">"}, count=100, block=500)
            now = time.time()
            for _, entries in resp or ():
                lat.extend((now - float(f[b"t"])) * 1000 for _, f in entries)
                reader_client.xack("rawlat", "g", *[sid for sid, _ in entries])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    achieved = paced(lambda i: r.xadd("rawlat", {"t": repr(time.time())}), rate, seconds)
    reader.join(timeout=seconds + 60)
    got = lat[50:] if len(lat) > 100 else lat
    p50, p99, mx = percentiles(got)
    report_value("chi.baseline.latency_p50_ms", p50, rate=f"{achieved:.0f}/s", n=len(got))
    report_value("chi.baseline.latency_p99_ms", p99, rate=f"{achieved:.0f}/s", n=len(got))
    report_value("chi.baseline.latency_max_ms", mx, n=len(got))
    r.delete("rawlat")


def latency(args: object, bus: EventBus, r: redis.Redis, rate: int, seconds: float) -> None:
    url = f"redis://{args.host}:{args.port}/0"  # type: ignore[attr-defined]
    key = f"{NS}:bench:latency"
    r.delete(key)
    proc = start_workers(url, 1, 4)
    try:
        wait_ready(bus, r, bus.keys.stream("bench"))
        wait_ready(bus, r, bus.keys.stream("benchlat"), "bench-latency", "benchlat")
        r.delete(key)  # the warm-up's latency
        total = int(rate * seconds)
        achieved = paced(
            lambda i: bus.publish(Event(type="benchlat.tick", data=PAYLOAD)), rate, seconds
        )
        deadline = time.monotonic() + 60
        while r.llen(key) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        raw = [float(x) for x in r.lrange(key, 0, -1)]
        lat = raw[50:] if len(raw) > 100 else raw
    finally:
        stop_workers(proc)
    p50, p99, mx = percentiles(lat)
    report_value("chi.latency_p50_ms", p50, rate=f"{achieved:.0f}/s", n=len(lat))
    report_value("chi.latency_p99_ms", p99, rate=f"{achieved:.0f}/s", n=len(lat))
    report_value("chi.latency_max_ms", mx, n=len(lat))


def ratios() -> None:
    """Each chi-redis end-to-end rate over the raw baseline measured in this run."""
    base = RATES.get("chi.baseline.raw_xreadgroup_e2e")
    if not base:
        return
    for name, rate in RATES.items():
        if name.startswith(("chi.e2e.", "chi.consume.")):
            report_value(f"chi.ratio.{name[4:]}", rate / base, baseline="raw_xreadgroup_e2e")


def main() -> None:
    parser = base_args(__doc__ or "", 50_000)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--latency-rate", type=int, default=1000, help="events per second")
    args = parser.parse_args()
    with redis_port(args):
        run(args)


def run(args: object) -> None:
    host, port = args.host, args.port  # type: ignore[attr-defined]
    r = redis.Redis(host=host, port=port)
    bus = EventBus(redis.Redis(host=host, port=port), namespace=NS)
    only = [s for s in args.only.split(",") if s]  # type: ignore[attr-defined]

    def want(name: str) -> bool:
        return not only or any(s in name for s in only)

    if want("chi.baseline.raw"):
        raw_baseline(args, r)
    for procs in (1, 2):
        if want(f"chi.e2e.procs{procs}"):
            e2e(args, bus, r, procs, 4, pre=False)
    if want("chi.consume"):
        e2e(args, bus, r, 2, 4, pre=True)
    ratios()
    rate, seconds = args.latency_rate, args.latency_seconds  # type: ignore[attr-defined]
    if want("chi.baseline.latency"):
        raw_latency(r, rate, seconds)
    if want("chi.latency"):
        latency(args, bus, r, rate, seconds)
    for k in r.scan_iter(match=f"{NS}:*"):
        r.delete(k)


if __name__ == "__main__":
    main()
