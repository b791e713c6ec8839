"""Baseline: FastStream's RedisBroker on Redis streams (asyncio, one process).

  fs.publish.single   await broker.publish(event, stream=S), one at a time
  fs.e2e.single       a StreamSub(group, consumer, max_records=100) subscriber running in the
                      same event loop; publish N one at a time; first publish -> last ack
  fs.e2e.batch        the same with pipelined publishes (1000 a pipeline, FastStream's way
                      to batch-publish to a stream) and a batch subscriber (batch=True)

The stock broker: BinaryMessageFormatV1, pydantic serializer, one XACK per message after the
handler, ``logger=None``.  Handlers take the baseline event (``common.make_event``) as a
dict.  Version pinned in the ``bench`` extra of pyproject.toml.

Run:  .venv/bin/python bench/peer_faststream.py [-n 20000] [--port P]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from common import base_args, fresh, make_event_dict, measured, redis_port, report, wanted
from faststream.redis import RedisBroker, StreamSub

GROUP, CONSUMER = "g", "c1"


async def publish(broker: RedisBroker, stream: str, n: int, pipe_batch: int) -> None:
    if pipe_batch <= 1:
        for i in range(n):
            await broker.publish(make_event_dict(i), stream=stream)
        return
    client = broker._connection  # FastStream's documented pipeline takes its client
    for start in range(0, n, pipe_batch):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + pipe_batch)):
                await broker.publish(make_event_dict(i), stream=stream, pipeline=pipe)
            await pipe.execute()


async def publish_single(args: Any, r: redis.Redis) -> None:
    fresh(r)
    broker = RedisBroker(f"redis://{args.host}:{args.port}", logger=None)
    await broker.connect()
    with measured(r) as m:
        await publish(broker, "s1", args.n, 1)
    await broker.stop()
    assert r.xlen("s1") == args.n
    report("fs.publish.single", args.n, m)


async def wait_acked(r: redis.Redis, stream: str) -> None:
    """The last XACK may land just after the handler returns."""
    for _ in range(2000):
        if r.xpending(stream, GROUP)["pending"] == 0:
            return
        await asyncio.sleep(0.005)
    raise SystemExit(f"pending left on {stream}: {r.xpending(stream, GROUP)}")


async def e2e(args: Any, r: redis.Redis, name: str, stream: str, batch: bool) -> None:
    n = args.n
    fresh(r)
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    broker = RedisBroker(f"redis://{args.host}:{args.port}", logger=None)
    done = asyncio.Event()
    handled = [0]
    sub = StreamSub(stream, group=GROUP, consumer=CONSUMER, batch=batch, max_records=100)

    if batch:
        @broker.subscriber(stream=sub)
        async def handle_batch(events: list[dict[str, Any]]) -> None:
            assert events[0]["topic"] == "orders"
            handled[0] += len(events)
            if handled[0] >= n:
                done.set()
    else:
        @broker.subscriber(stream=sub)
        async def handle(event: dict[str, Any]) -> None:
            assert event["topic"] == "orders"
            handled[0] += 1
            if handled[0] >= n:
                done.set()

    await broker.start()
    with measured(r) as m:
        await publish(broker, stream, n, 1000 if batch else 1)
        await asyncio.wait_for(done.wait(), timeout=600)
        await wait_acked(r, stream)
    await broker.stop()
    assert handled[0] == n, handled
    report(name, n, m)


async def amain(args: Any) -> None:
    r = redis.Redis(host=args.host, port=args.port)
    if wanted(args, "fs.publish.single"):
        await publish_single(args, r)
    if wanted(args, "fs.e2e.single"):
        await e2e(args, r, "fs.e2e.single", "s4", batch=False)
    if wanted(args, "fs.e2e.batch"):
        await e2e(args, r, "fs.e2e.batch", "s5", batch=True)
    fresh(r)


def main() -> None:
    args = base_args(__doc__ or "", 20_000).parse_args()
    with redis_port(args):
        asyncio.run(amain(args))


if __name__ == "__main__":
    main()
