"""Baseline: taskiq with taskiq-redis's RedisStreamBroker (streams + a consumer group).

  taskiq.process   N tasks kicked (``await task.kiq(event)``), then taskiq's Receiver in this
                   process (what ``taskiq worker`` runs: max_async_tasks=100, stock ack
                   policy, XREADGROUP COUNT 100, one XACK per message) until the async no-op
                   task ran N times and nothing is pending

The group is declared at id 0 by ``broker.startup()`` before the kicks.  Version pinned in
the ``bench`` extra of pyproject.toml.

Run:  .venv/bin/python bench/peer_taskiq.py [-n 20000] [--port P]
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from common import base_args, fresh, log, make_event_dict, measured, redis_port, report
from taskiq.receiver import Receiver
from taskiq_redis import RedisStreamBroker

QUEUE, GROUP = "taskiq_bench", "taskiq"


async def run(args: Any, r: redis.Redis) -> None:
    n = args.n
    fresh(r)
    broker = RedisStreamBroker(f"redis://{args.host}:{args.port}/0", queue_name=QUEUE,
                               consumer_group_name=GROUP, consumer_id="0",
                               max_connection_pool_size=200)
    handled = [0]
    done = asyncio.Event()

    @broker.task(task_name="bench.handle")
    async def handle(event: dict[str, Any]) -> None:
        handled[0] += 1
        if handled[0] >= n:
            done.set()

    await broker.startup()
    for i in range(n):
        await handle.kiq(make_event_dict(i))
    broker.is_worker_process = True
    finish = asyncio.Event()
    receiver = Receiver(broker, run_startup=False, max_async_tasks=100)
    with measured(r) as m:
        task = asyncio.create_task(receiver.listen(finish))
        await asyncio.wait_for(done.wait(), timeout=600)
        for _ in range(2000):
            if r.xpending(QUEUE, GROUP)["pending"] == 0:
                break
            await asyncio.sleep(0.005)
    report("taskiq.process", n, m, pending=r.xpending(QUEUE, GROUP)["pending"])
    # The receiver stops only once one more message arrives (its listen loop waits on the
    # read): kick one, then give it 5 s.
    finish.set()
    await handle.kiq(make_event_dict(n))
    stopped, _ = await asyncio.wait({task}, timeout=5)
    if not stopped:
        log("taskiq: the receiver did not stop within 5 s; leaving it")
        return
    await broker.shutdown()


def main() -> None:
    args = base_args(__doc__ or "", 20_000).parse_args()
    logging.basicConfig(level=logging.ERROR)
    with redis_port(args):
        r = redis.Redis(host=args.host, port=args.port)
        asyncio.run(run(args, r))
        fresh(r)
    sys.stdout.flush()
    os._exit(0)  # an abandoned receiver must not hold the interpreter at exit


if __name__ == "__main__":
    main()
