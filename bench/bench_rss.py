"""Worker memory over a long run: RSS of the worker processes while they handle N events.

  chi.rss.warmup_mb    total RSS of the `dramatiq chi_redis.worker` processes (2 x 4 threads,
                       the no-op subscription) once 10 % of the events were handled
  chi.rss.final_mb     the same once all N were handled
  chi.rss.max_mb       the largest sample of the run
  chi.rss.growth       final / warm-up: flat is close to 1 (no per-event leak)

The events are published in batches of 1,000 while the workers run, the publisher keeping
at most 20,000 unhandled; RSS (psutil, every worker process of the group) is sampled every
half second.  The default N is 1,000,000 (``bench/run`` uses a tiny N under ``--smoke``).

Run:  .venv/bin/python bench/bench_rss.py [-n 1000000] [--port P]
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import psutil  # noqa: E402
import redis  # noqa: E402
from common import base_args, log, redis_port, report_value  # noqa: E402
from workers import start_workers, stop_workers, wait_drained  # noqa: E402

from chi_redis import Event, EventBus  # noqa: E402

NS = "benchrss"
PAYLOAD = {"order_id": 1, "amount": 129.95, "sku": "SKU-0042", "qty": 3}
BACKLOG = 20_000


def worker_rss(pid: int) -> int:
    """Bytes of RSS of every process under the dramatiq master ``pid`` (and its own)."""
    try:
        master = psutil.Process(pid)
        procs = [master, *master.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def handled(r: redis.Redis, stream: str) -> int:
    for g in r.xinfo_groups(stream):
        if g["name"] == b"bench-noop":
            return int(g.get("entries-read") or 0) - int(g["pending"])
    return 0


def run(args: Any) -> None:
    n = args.n
    url = f"redis://{args.host}:{args.port}/0"
    r = redis.Redis(host=args.host, port=args.port)
    bus = EventBus(redis.Redis(host=args.host, port=args.port), namespace=NS)
    stream = bus.keys.stream("bench")
    samples: list[tuple[int, int]] = []  # (events handled, RSS bytes)
    stop = threading.Event()
    proc = start_workers(url, NS, 2, 4, ["bench-noop"])

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((handled(r, stream), worker_rss(proc.pid)))

    try:
        warm = bus.publish(Event(type="bench.done", data=PAYLOAD))
        wait_drained(r, stream, ["bench-noop"], warm.encode(), 120, proc)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        last = warm
        for start in range(0, n, 1000):
            while start - handled(r, stream) > BACKLOG:
                time.sleep(0.01)
            last = bus.publish_batch(
                [Event(type="bench.done", data=PAYLOAD) for _ in range(min(1000, n - start))]
            )[-1]
        wait_drained(r, stream, ["bench-noop"], last.encode(), 600, proc)
        samples.append((handled(r, stream), worker_rss(proc.pid)))
        stop.set()
        sampler.join()
        log(f"{n} events in {time.monotonic() - t0:.1f} s, {len(samples)} RSS samples")
    finally:
        stop.set()
        stop_workers(proc)
    for k in r.scan_iter(match=f"{NS}:*"):
        r.delete(k)
    warm_rss = next((rss for done, rss in samples if done >= n // 10), samples[0][1])
    final = samples[-1][1]
    mb = 1024 * 1024
    report_value("chi.rss.warmup_mb", warm_rss / mb, n=n, procs=2, at="10%")
    report_value("chi.rss.final_mb", final / mb, n=n)
    report_value("chi.rss.max_mb", max(rss for _, rss in samples) / mb, n=n)
    report_value("chi.rss.growth", final / warm_rss, n=n, target="<=1.1")


def main() -> None:
    args = base_args(__doc__ or "", 1_000_000).parse_args()
    with redis_port(args):
        run(args)


if __name__ == "__main__":
    main()
