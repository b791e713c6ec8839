"""Baseline: stock Dramatiq (the same Dramatiq chi-redis runs its actors on), one process.

  dramatiq.process.threads8         stock RedisBroker (Lua over lists), N messages enqueued,
                                    then dramatiq.Worker(worker_threads=8) until the no-op
                                    actor ran N times and the queue drained
  dramatiq.stub.process.threads8    the in-memory StubBroker, the same Worker: Dramatiq's own
                                    ceiling with no Redis at all, one process
  dramatiq.stub.sleep1ms.threads4   StubBroker, Worker(4 threads), an actor that takes 1 ms

Each case has a fresh broker and actor, stock middleware, max_retries=0; the message is the
baseline event (``common.make_event``) as a dict.  Timed from ``worker.start()``.  Version
pinned in the ``bench`` extra of pyproject.toml.

Run:  .venv/bin/python bench/peer_dramatiq.py [-n 20000] [--port P]
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dramatiq
import redis
from common import (
    base_args,
    fresh,
    make_event_dict,
    measured,
    redis_port,
    report,
    report_na,
    report_value,
    wanted,
)
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

QUEUE = "bench"


def run_case(args: Any, r: redis.Redis, name: str, stub: bool, threads: int, n: int,
             sleep_s: float = 0.0) -> None:
    fresh(r)
    broker: Any = StubBroker() if stub else RedisBroker(host=args.host, port=args.port)
    dramatiq.set_broker(broker)
    counter = itertools.count(1)
    done = threading.Event()

    def handle(event: dict[str, Any]) -> None:
        if sleep_s:
            time.sleep(sleep_s)
        if next(counter) >= n:
            done.set()

    actor = dramatiq.actor(handle, broker=broker, queue_name=QUEUE, max_retries=0)
    for i in range(n):
        actor.send(make_event_dict(i))
    worker = dramatiq.Worker(broker, worker_threads=threads)
    with measured(r) as m:
        worker.start()
        if not done.wait(timeout=600):
            raise SystemExit(f"{name}: timed out")
        if stub:
            broker.join(QUEUE)
        else:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and broker.do_qsize(QUEUE) > 0:
                time.sleep(0.002)
    left = 0 if stub else broker.do_qsize(QUEUE)
    worker.stop()
    broker.close()
    # Messages per CPU-second of this process (the Worker: the messages were sent before).
    per_cpu = f"{n / m.py_cpu:.0f}" if m.py_cpu else "nan"
    report(name, n, m, threads=threads, left=left, per_cpu_s=per_cpu)
    if stub and m.py_cpu > 0:
        report_value(f"{name}.per_cpu_s", n / m.py_cpu, threads=threads)
    elif stub:
        report_na(f"{name}.per_cpu_s", "no CPU time measured")


def main() -> None:
    p = base_args(__doc__ or "", 20_000)
    p.add_argument("--n-slow", type=int, default=10_000, help="messages for the 1 ms actor")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with redis_port(args):
        r = redis.Redis(host=args.host, port=args.port)
        for name, stub, threads, n, sleep_s in (
            ("dramatiq.process.threads8", False, 8, args.n, 0.0),
            ("dramatiq.stub.process.threads8", True, 8, args.n, 0.0),
            ("dramatiq.stub.sleep1ms.threads4", True, 4, min(args.n, args.n_slow), 0.001),
        ):
            if wanted(args, name):
                run_case(args, r, name, stub, threads, n, sleep_s)
        fresh(r)


if __name__ == "__main__":
    main()
