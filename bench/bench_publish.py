"""chi-redis publishing and queries against raw redis-py, measured in the same run.

  chi.baseline.xadd.single / .pipe100 / .pipe1000   raw redis-py XADD of the baseline event
  chi.publish.single              EventBus.publish: one event per round trip
  chi.publish_batch.100 / .1000   EventBus.publish_batch of 100 / 1000 events per call
  chi.async.publish_batch.1000    AsyncEventBus.publish_batch of 1000 events per call
  chi.buffered                    BufferedPublisher (asyncio): publish() each event, then close()
  chi.ratio.*                     chi-redis ÷ its raw baseline (events/s; for queries: time)
  chi.query.range10k_ms           load_by_time_range returning 10k events out of 1M
  chi.baseline.xrange10k_ms       raw XRANGE of the same 10k entries (no decoding)
  chi.query.range10k.ontime_ms    the same query over 200k events published with the current
                                  time (read through the stream, not the late index), next to
                                  chi.baseline.xrange10k.ontime_ms
  chi.mem.*_bytes_per_event       MEMORY USAGE per event: stream + time index + id lookup,
                                  next to a raw XADD of the same event

Events are built and encoded inside the timed loops, for chi-redis and for the baselines.
The baseline event (``common.make_event``) carries the same data and metadata as one
msgspec JSON field.  Targets (issue #2): single >= 0.8x raw XADD, batch >= 0.5x raw
pipelined XADD, time range <= 2x raw XRANGE.

Run:  .venv/bin/python bench/bench_publish.py [--rounds 3] [--range-total 1000000] [--port P]
It FLUSHALLs its server, so without --port it starts a redis-server of its own on a free
port (port 6379 is refused).  `bench/run` runs it beside every other bench (bench/README.md).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import redis  # noqa: E402
import redis.asyncio as aredis  # noqa: E402
from common import (  # noqa: E402
    ENCODER,
    base_args,
    fresh,
    log,
    make_event,
    measured,
    redis_port,
    report,
    report_value,
    wanted,
)

from chi_redis import AsyncEventBus, BufferedPublisher, Event, EventBus  # noqa: E402

STREAM = "orders"
NS = "bench"
RATES: dict[str, float] = {}
BEST: dict[str, tuple[int, Any]] = {}  # name -> (n, Measure) of the fastest round


def chi_event(i: int, ts: datetime | None = None) -> Event:
    """The baseline event (common.make_event) as a chi-redis Event."""
    return Event(
        type="order.created",
        data={"order_id": i, "amount": 129.95, "sku": "SKU-0042", "qty": 3},
        metadata={"source": "bench", "attempt": 0},
        **({"timestamp": ts} if ts is not None else {}),
    )


def record(name: str, n: int, m: Any) -> None:
    """Keep the fastest round of each scenario (rounds interleave chi-redis and raw)."""
    if n / m.wall > RATES.get(name, 0.0):
        RATES[name] = n / m.wall
        BEST[name] = (n, m)


def ratio(name: str, num: str, den: str, target: str) -> None:
    if num in RATES and den in RATES:
        report_value(name, RATES[num] / RATES[den], target=target)


# -- raw baselines ---------------------------------------------------------------------------


def raw_xadd(r: redis.Redis, name: str, n: int, batch: int) -> None:
    fresh(r)
    enc = ENCODER.encode
    with measured(r) as m:
        if batch <= 1:
            xadd = r.xadd
            for i in range(n):
                xadd(STREAM, {"d": enc(make_event(i))})
        else:
            pipe = r.pipeline(transaction=False)
            for i in range(n):
                pipe.xadd(STREAM, {"d": enc(make_event(i))})
                if (i + 1) % batch == 0:
                    pipe.execute()
            pipe.execute()
    assert r.xlen(STREAM) == n
    record(name, n, m)


# -- chi-redis -------------------------------------------------------------------------------


def chi_single(r: redis.Redis, bus: EventBus, n: int) -> None:
    fresh(r)
    publish = bus.publish
    with measured(r) as m:
        for i in range(n):
            publish(chi_event(i))
    assert r.xlen(bus.keys.stream("order")) == n
    record("chi.publish.single", n, m)


def chi_batch(r: redis.Redis, bus: EventBus, n: int, batch: int) -> None:
    fresh(r)
    with measured(r) as m:
        for start in range(0, n, batch):
            bus.publish_batch([chi_event(i) for i in range(start, min(n, start + batch))])
    assert r.xlen(bus.keys.stream("order")) == n
    record(f"chi.publish_batch.{batch}", n, m)


def chi_async_batch(r: redis.Redis, url: str, n: int, batch: int) -> None:
    fresh(r)

    async def run() -> None:
        abus = AsyncEventBus(aredis.Redis.from_url(url), namespace=NS)
        for start in range(0, n, batch):
            await abus.publish_batch([chi_event(i) for i in range(start, min(n, start + batch))])
        await abus.close()

    with measured(r) as m:
        asyncio.run(run())
    assert r.xlen(f"{NS}:{{order}}:stream") == n
    record(f"chi.async.publish_batch.{batch}", n, m)


def chi_buffered(r: redis.Redis, url: str, n: int) -> None:
    fresh(r)

    async def run() -> int:
        abus = AsyncEventBus(aredis.Redis.from_url(url), namespace=NS)
        async with BufferedPublisher(abus, batch_size=1000, max_buffer=20_000) as publisher:
            for i in range(n):
                await publisher.publish(chi_event(i))
        await abus.close()
        return publisher.failed_count

    with measured(r) as m:
        failed = asyncio.run(run())
    assert failed == 0 and r.xlen(f"{NS}:{{order}}:stream") == n
    record("chi.buffered", n, m)


# -- queries ---------------------------------------------------------------------------------


def interleaved_best_ms(fns: list[Any], rounds: int = 9) -> list[float]:
    """Best wall time (ms) of each function, run in turn so load hits them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], (time.perf_counter() - t0) * 1000)
    return best


def query_range(r: redis.Redis, bus: EventBus, total: int, window: int) -> None:
    fresh(r)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    sids: list[str] = []
    for start in range(0, total, 10_000):
        sids += bus.publish_batch(
            [chi_event(i, base + timedelta(milliseconds=i)) for i in range(start, start + 10_000)]
        )
    log(f"filled {total} events in {time.perf_counter() - t0:.1f} s")
    lo = total // 2
    hi = lo + window - 1
    start, end = base + timedelta(milliseconds=lo), base + timedelta(milliseconds=hi)
    stream = bus.keys.stream("order")

    def chi_query() -> None:
        got = bus.store.load_by_time_range(start, end, topic="order")
        assert len(got) == window, len(got)

    def chi_query_all_topics() -> None:
        assert len(bus.store.load_by_time_range(start, end)) == window

    def raw_query() -> None:
        got = r.xrange(stream, sids[lo], sids[hi])
        assert len(got) == window

    raw_ms, chi_ms, chi_all_ms = interleaved_best_ms([raw_query, chi_query, chi_query_all_topics])
    report_value("chi.baseline.xrange10k_ms", raw_ms, n=window, of=total)
    report_value("chi.query.range10k_ms", chi_ms, n=window, of=total, topic="order")
    report_value("chi.query.range10k.alltopics_ms", chi_all_ms, n=window, of=total)
    report_value("chi.ratio.range10k_time", chi_ms / raw_ms, target="<=2")


def query_on_time(r: redis.Redis, bus: EventBus, total: int, window: int) -> None:
    """10k events by event time out of ``total`` published now: on time, so in no index."""
    fresh(r)
    events: list[Event] = []
    sids: list[str] = []
    for start in range(0, total, 1000):
        batch = [chi_event(i) for i in range(start, start + 1000)]
        events += batch
        sids += bus.publish_batch(batch)
    order = sorted(range(total), key=lambda i: (events[i].timestamp, events[i].id))
    lo, hi = total // 2, total // 2 + window - 1
    start, end = events[order[lo]].timestamp, events[order[hi]].timestamp
    want = sum(1 for e in events if start <= e.timestamp <= end)
    stream = bus.keys.stream("order")

    def chi_query() -> None:
        assert len(bus.store.load_by_time_range(start, end, topic="order")) == want

    def raw_query() -> None:
        assert len(r.xrange(stream, sids[lo], sids[hi])) == window

    raw_ms, chi_ms = interleaved_best_ms([raw_query, chi_query])
    report_value("chi.baseline.xrange10k.ontime_ms", raw_ms, n=window, of=total)
    report_value("chi.query.range10k.ontime_ms", chi_ms, n=want, of=total, topic="order")
    report_value("chi.ratio.range10k.ontime_time", chi_ms / raw_ms, target="-")


# -- memory ----------------------------------------------------------------------------------


def memory(r: redis.Redis, bus: EventBus, n: int) -> None:
    fresh(r)
    for start in range(0, n, 1000):
        bus.publish_batch([chi_event(i) for i in range(start, start + 1000)])
    k = bus.keys
    usage = {
        "stream": r.memory_usage(k.stream("order"), samples=0) or 0,
        "index": r.memory_usage(k.index("order"), samples=0) or 0,
        "ids": r.memory_usage(k.ids("order"), samples=0) or 0,
    }
    total = sum(usage.values())
    fresh(r)
    enc = ENCODER.encode
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {"d": enc(make_event(i))})
        if (i + 1) % 1000 == 0:
            pipe.execute()
    pipe.execute()
    raw = r.memory_usage(STREAM, samples=0) or 0
    parts = " ".join(f"{key}={v / n:.0f}" for key, v in usage.items())
    report_value("chi.mem.bytes_per_event", total / n, n=n, parts=parts.replace(" ", ","))
    report_value("chi.baseline.mem.xadd_bytes_per_event", raw / n, n=n)
    report_value("chi.ratio.mem", total / raw)


def main() -> None:
    p = base_args(__doc__ or "", 100_000)
    p.add_argument("--n-single", type=int, default=20_000)
    p.add_argument(
        "--range-total", type=int, default=int(os.environ.get("BENCH_RANGE_TOTAL", "1000000")),
        help="events in the history the time-range query runs over (a multiple of 10,000)",
    )
    p.add_argument("--rounds", type=int, default=3, help="best of N interleaved rounds")
    args = p.parse_args()
    with redis_port(args):
        run(args)


def run(args: Any) -> None:
    url = f"redis://{args.host}:{args.port}/0"
    r = redis.Redis(host=args.host, port=args.port)
    bus = EventBus.from_url(url, namespace=NS)
    n, n1 = args.n, min(args.n, args.n_single)

    for _ in range(args.rounds):
        # One round trip per event: short interleaved blocks, so load hits both alike.
        for _ in range(5):
            if wanted(args, "chi.baseline.xadd.single"):
                raw_xadd(r, "chi.baseline.xadd.single", n1 // 5, 1)
            if wanted(args, "chi.publish.single"):
                chi_single(r, bus, n1 // 5)
        for name, batch in [
            ("chi.baseline.xadd.pipe100", 100),
            ("chi.baseline.xadd.pipe1000", 1000),
        ]:
            if wanted(args, name):
                raw_xadd(r, name, n, batch)
        for batch in (100, 1000):
            if wanted(args, f"chi.publish_batch.{batch}"):
                chi_batch(r, bus, n, batch)
        if wanted(args, "chi.async.publish_batch.1000"):
            chi_async_batch(r, url, n, 1000)
        if wanted(args, "chi.buffered"):
            chi_buffered(r, url, n)
    for name, (count, m) in BEST.items():
        report(name, count, m, rounds=args.rounds)
    ratio("chi.ratio.single", "chi.publish.single", "chi.baseline.xadd.single", ">=0.8")
    ratio("chi.ratio.batch100", "chi.publish_batch.100", "chi.baseline.xadd.pipe100", ">=0.5")
    ratio("chi.ratio.batch1000", "chi.publish_batch.1000", "chi.baseline.xadd.pipe1000", ">=0.5")
    ratio("chi.ratio.buffered", "chi.buffered", "chi.baseline.xadd.pipe1000", "-")
    if wanted(args, "chi.mem"):
        memory(r, bus, n)
    if wanted(args, "chi.query.range10k"):
        query_range(r, bus, args.range_total, 10_000)
        query_on_time(r, bus, min(args.range_total, 200_000), 10_000)
    fresh(r)


if __name__ == "__main__":
    main()
