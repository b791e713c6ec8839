"""Publish → handler-start latency at a fixed rate: chi-redis, raw redis-py and FastStream.

  raw.latency.<rate>.p50_ms/.p99_ms/.max_ms   redis-py XADD / a consumer process in
                                              XREADGROUP BLOCK COUNT 100 + one XACK a batch
  chi.latency.<rate>.*                        EventBus.publish / one `dramatiq
                                              chi_redis.worker` process x 4 threads
  handoff.latency.<rate>.*                    the same chi-redis worker with
                                              CHI_INLINE_WHEN_IDLE=false: every message handed
                                              to a worker thread (what inline runs save)
  fs.latency.<rate>.*                         FastStream broker.publish(stream=) / a
                                              StreamSub(group, consumer, max_records=100)
                                              subscriber process ("n/a" without faststream:
                                              ``pip install -e '.[bench]'``)

The publisher (this process) offers ``rate`` events a second, ``--samples`` events in all
(15,000: a p99 resting on 150 tail events), the same way for the three: it sleeps until the
next event is due, then sends every event due by now in one batch — one call when one is
due, else one pipelined round trip (``EventBus.publish`` / ``publish_batch``, a redis-py
pipeline of XADDs, FastStream ``publish(pipeline=)``) — so a publisher that falls behind
catches up instead of lowering the rate.  Each event is stamped
with ``time.time()`` when it is built, just before it is sent; the consumer records
``time.time() - stamp`` when its handler starts.  The first 50 events (connection warm-up)
are dropped.  The three run one after the other at each rate, on the same redis-server.
Each figure carries the rate achieved (``rate=``); below 95 % of the offered rate it also
says ``invalid=rate`` and the table marks the row invalid (its latencies are queueing).
``consumed=`` is the rate the consumer kept (events ÷ (publishing time + the latency of the
last event handled)); below 95 % of the offered rate the line says ``queueing=consumer``:
that consumer could not keep up, and its figures are its backlog, not a latency.  After the
three, a ``#`` line gives chi-redis's p99 over each baseline's in that same run.

The chi-redis handler keeps its latencies in memory and pushes them in one RPUSH once the
events stopped, as the baselines keep theirs until the end (nothing else runs in the
worker while events arrive).

Run:  .venv/bin/python bench/bench_latency.py [--rates 1000,5000] [--samples N] [--port P]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    ENCODER,
    BaselineEvent,
    base_args,
    make_event,
    make_event_dict,
    percentiles,
    redis_port,
    report_na,
    report_value,
    wanted,
)
from workers import start_workers, stop_workers, wait_drained, wait_groups  # noqa: E402

from chi_redis import Event, EventBus  # noqa: E402

NS = "benchlat"
STREAM, GROUP = "lat", "g"
WARMUP = 50
PAYLOAD = {"order_id": 1, "amount": 129.95, "sku": "SKU-0042", "qty": 3}


#: A row whose publisher achieved less than this share of the offered rate is invalid.
VALID_SHARE = 0.95
#: Events per contestant and rate.  A p99 is the 1 % tail: from 5,000 events (the former
#: 5 s at 1,000/s) it rested on about 50 events, and one stall of the box moved it; 15,000
#: put 150 events in the tail (15 s at 1,000/s, 3 s at 5,000/s).
SAMPLES = 15_000
#: The largest batch one round trip sends (a publisher far behind catches up in steps).
MAX_BATCH = 100


def ticks(rate: float, total: int) -> Iterator[int]:
    """How many events to send now, until ``total`` were sent at ``rate`` a second: sleep
    until the next one is due, then every event due by now (at most ``MAX_BATCH``)."""
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        while (d := t0 + sent / rate - time.perf_counter()) > 0:
            time.sleep(d if d > 0.0002 else 0)
        due = min(total, sent + MAX_BATCH,
                  max(sent + 1, int((time.perf_counter() - t0) * rate) + 1))
        yield due - sent
        sent = due


# consumers (child processes) -------------------------------------------------------------------
def consume_raw(args: Any, total: int, out: str) -> None:
    r = redis.Redis(host=args.host, port=args.port)
    decode = msgspec.json.Decoder(BaselineEvent).decode
    lat: list[float] = []
    print("READY", flush=True)
    deadline = time.time() + args.seconds + 30
    while len(lat) < total and time.time() < deadline:
        resp = r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=100, block=1000)
        if not resp:
            continue
        for _, fields in resp[0][1]:
            lat.append((time.time() - decode(fields[b"d"]).timestamp) * 1000)
        r.xack(STREAM, GROUP, *[mid for mid, _ in resp[0][1]])
    Path(out).write_text(json.dumps(lat))


def consume_fs(args: Any, total: int, out: str) -> None:
    from faststream.redis import RedisBroker, StreamSub

    async def run() -> None:
        broker = RedisBroker(f"redis://{args.host}:{args.port}", logger=None)
        lat: list[float] = []
        done = asyncio.Event()

        @broker.subscriber(stream=StreamSub(STREAM, group=GROUP, consumer="c1", max_records=100))
        async def handle(event: dict[str, Any]) -> None:
            lat.append((time.time() - event["timestamp"]) * 1000)
            if len(lat) >= total:
                done.set()

        await broker.start()
        print("READY", flush=True)
        try:
            await asyncio.wait_for(done.wait(), timeout=args.seconds + 30)
        finally:
            Path(out).write_text(json.dumps(lat))
            await broker.stop()

    asyncio.run(run())


# publishers -------------------------------------------------------------------------------------
def publish_raw(args: Any, rate: int, total: int) -> float:
    r = redis.Redis(host=args.host, port=args.port)
    pipe = r.pipeline(transaction=False)
    i = 0
    t0 = time.perf_counter()
    for n in ticks(rate, total):
        if n == 1:
            r.xadd(STREAM, {"d": ENCODER.encode(make_event(i))})
        else:
            for j in range(i, i + n):
                pipe.xadd(STREAM, {"d": ENCODER.encode(make_event(j))})
            pipe.execute()
        i += n
    return total / (time.perf_counter() - t0)


def publish_fs(args: Any, rate: int, total: int) -> float:
    from faststream.redis import RedisBroker

    async def run() -> float:
        broker = RedisBroker(f"redis://{args.host}:{args.port}", logger=None)
        await broker.connect()
        i = 0
        t0 = time.perf_counter()
        # The same pacing as the others (a blocking sleep: this loop has nothing else to do).
        for n in ticks(rate, total):
            if n == 1:
                await broker.publish(make_event_dict(i), stream=STREAM)
            else:
                async with broker._connection.pipeline(transaction=False) as pipe:
                    for j in range(i, i + n):
                        await broker.publish(make_event_dict(j), stream=STREAM, pipeline=pipe)
                    await pipe.execute()
            i += n
        achieved = total / (time.perf_counter() - t0)
        await broker.stop()
        return achieved

    return asyncio.run(run())


def publish_chi(bus: EventBus, rate: int, total: int) -> float:
    t0 = time.perf_counter()
    for n in ticks(rate, total):
        if n == 1:
            bus.publish(Event(type="benchlat.tick", data=PAYLOAD))
        else:
            bus.publish_batch([Event(type="benchlat.tick", data=PAYLOAD) for _ in range(n)])
    return total / (time.perf_counter() - t0)


def samples(args: Any, rate: int) -> int:
    """How many events each contestant gets at ``rate``: ``--samples``, or ``--seconds``
    worth when given (the smoke run)."""
    return int(rate * args.seconds) if args.seconds else args.samples


def child_latency(args: Any, impl: str, rate: int) -> tuple[list[float], float]:
    """Run ``impl``'s consumer as a child process and publish to it; its latencies (ms)."""
    r = redis.Redis(host=args.host, port=args.port)
    r.delete(STREAM)
    r.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    total = samples(args, rate)
    fd, out = tempfile.mkstemp(suffix=".json", prefix="chi-bench-lat-")
    os.close(fd)
    child = subprocess.Popen(
        [sys.executable, __file__, "--role", "consumer", "--impl", impl, "--out", out,
         "--port", str(args.port), "--host", args.host, "--seconds", str(total / rate),
         "--total", str(total)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "READY":
            raise SystemExit(f"the {impl} consumer did not start")
        time.sleep(0.3)
        achieved = (publish_raw if impl == "raw" else publish_fs)(args, rate, total)
        child.wait(timeout=total / rate + 60)
        lat: list[float] = json.loads(Path(out).read_text() or "[]")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.unlink(out)
        r.delete(STREAM)
    return lat, achieved


def chi_latency(args: Any, rate: int, inline: bool = True) -> tuple[list[float], float]:
    url = f"redis://{args.host}:{args.port}/0"
    r = redis.Redis(host=args.host, port=args.port)
    bus = EventBus(redis.Redis(host=args.host, port=args.port), namespace=NS)
    key = f"{NS}:bench:latency"
    stream = bus.keys.stream("benchlat")
    r.delete(key, stream)
    total = samples(args, rate)
    proc = start_workers(url, NS, 1, 4, ["bench-latency"],
                         env={"CHI_INLINE_WHEN_IDLE": "true" if inline else "false"})
    try:
        wait_groups(r, stream, ["bench-latency"], 120, proc)
        warm = bus.publish(Event(type="benchlat.tick", data=PAYLOAD))
        wait_drained(r, stream, ["bench-latency"], warm.encode(), 120, proc)
        deadline = time.monotonic() + 60  # its latency is pushed once the events stop
        while not r.llen(key) and time.monotonic() < deadline:
            time.sleep(0.01)
        r.delete(key)
        achieved = publish_chi(bus, rate, total)
        deadline = time.monotonic() + 60
        while r.llen(key) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        lat = [float(x) for x in r.lrange(key, 0, -1)]
    finally:
        stop_workers(proc)
    r.delete(key, stream)
    return lat, achieved


def report_latency(impl: str, rate: int, lat: list[float], achieved: float) -> None:
    got = lat[WARMUP:] if len(lat) > 2 * WARMUP else lat
    # The last event handled was published about when publishing ended: the consumer kept
    # len(lat) events in (publishing time + that event's latency).
    consumed = len(lat) / (len(lat) / achieved + (lat[-1] / 1000 if lat else 0.0))
    p50, p99, mx = percentiles(got)
    extra: dict[str, object] = {"rate": f"{achieved:.0f}/s", "consumed": f"{consumed:.0f}/s",
                                "n": len(got)}
    if achieved < VALID_SHARE * rate:
        extra["invalid"] = "rate"  # the publisher fell behind: these latencies are queueing
    elif consumed < VALID_SHARE * rate:
        extra["queueing"] = "consumer"  # the consumer could not keep up with the rate
    for label, value in (("p50", p50), ("p99", p99), ("max", mx)):
        report_value(f"{impl}.latency.{rate}.{label}_ms", value, **extra)


def run(args: Any) -> None:
    for rate in [int(x) for x in args.rates.split(",") if x]:
        p99: dict[str, float] = {}
        for impl in ("raw", "chi", "handoff", "fs"):
            name = f"{impl}.latency.{rate}"
            if not wanted(args, name):
                continue
            if impl == "fs" and not _has_faststream():
                for label in ("p50", "p99", "max"):
                    report_na(f"{name}.{label}_ms", "faststream not installed")
                continue
            lat, achieved = (chi_latency(args, rate, inline=impl == "chi")
                             if impl in ("chi", "handoff") else child_latency(args, impl, rate))
            report_latency(impl, rate, lat, achieved)
            p99[impl] = percentiles(lat[WARMUP:] if len(lat) > 2 * WARMUP else lat)[1]
        same_run_ratios(rate, p99)


def same_run_ratios(rate: int, p99: dict[str, float]) -> None:
    """A comment line with chi-redis's p99 over each baseline's *in this run*: the table keeps
    the best figure of each name over the rounds, which may pair figures of two rounds, so
    the per-round ratios are what shows whether a target holds (the suite keeps the line)."""
    if "chi" not in p99:
        return
    parts = [f"{base}={p99['chi'] / p99[base]:.2f}" for base in ("fs", "raw", "handoff")
             if p99.get(base, 0.0) > 0.0]
    if parts:
        print(f"# latency.{rate} p99 chi/baseline in this run: {' '.join(parts)}", flush=True)


def _has_faststream() -> bool:
    try:
        import faststream.redis  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    p = base_args(__doc__ or "", 0)
    p.add_argument("--rates", default="1000,5000", help="events per second, comma-separated")
    p.add_argument("--samples", type=int, default=SAMPLES,
                   help="events per contestant and rate (the first 50 are dropped)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="publish for this long instead of --samples events")
    p.add_argument("--role", default="parent", choices=["parent", "consumer"])
    p.add_argument("--impl", default="raw", choices=["raw", "fs"])
    p.add_argument("--out", default="")
    p.add_argument("--total", type=int, default=0)
    args = p.parse_args()
    if args.role == "consumer":
        (consume_raw if args.impl == "raw" else consume_fs)(args, args.total, args.out)
        return
    with redis_port(args):
        run(args)


if __name__ == "__main__":
    main()
