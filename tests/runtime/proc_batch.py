"""Worker-process handlers for the batch crash tests (tests/runtime/test_batch_processes.py).

``batch-slow``: batches of up to 5; records each event's start (count and PID), sleeps the
longest ``data["sleep_ms"]`` of the batch once, then records that each finished (count and
PID).  ``batch-poison``: batches of up to 8; an event of type ``bpoison.exit`` kills the
worker process (``os._exit``: no Retries, no nack), the others are recorded as done.
"""

from __future__ import annotations

import os
import time

from chi_redis import Event
from chi_redis.worker import bus

_client = bus.client
_ns = bus.namespace


@bus.subscribe("batch-slow", topics=["bslow"], batch_size=5, batch_wait_ms=50)
def batch_slow(events: list[Event]) -> None:
    pid = os.getpid()
    pipe = _client.pipeline(transaction=False)
    for e in events:
        pipe.hincrby(f"{_ns}:t:starts", e.id, 1)
        pipe.hset(f"{_ns}:t:start-pid", e.id, pid)
    pipe.execute()
    time.sleep(max(e.data.get("sleep_ms", 0) for e in events) / 1000)
    pipe = _client.pipeline(transaction=False)
    for e in events:
        pipe.hincrby(f"{_ns}:t:done", e.id, 1)
        pipe.hset(f"{_ns}:t:done-pid", e.id, pid)
    pipe.execute()


@bus.subscribe("batch-poison", topics=["bpoison"], batch_size=8, batch_wait_ms=200)
def batch_poison(events: list[Event]) -> None:
    pipe = _client.pipeline(transaction=False)
    for e in events:
        pipe.hincrby(f"{_ns}:t:starts", e.id, 1)
    pipe.execute()
    if any(e.type == "bpoison.exit" for e in events):
        os._exit(1)
    pipe = _client.pipeline(transaction=False)
    for e in events:
        pipe.hincrby(f"{_ns}:t:done", e.id, 1)
    pipe.execute()
