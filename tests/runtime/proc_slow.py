"""Worker-process handlers of the runtime conformance suite (hand-over between workers).

``slow``: records its start (count and PID) per event id, sleeps ``data["sleep_ms"]``,
then records that it finished (count and PID).
"""

from __future__ import annotations

import os
import time

from chi_redis import Event
from chi_redis.worker import bus

_client = bus.client
_ns = bus.namespace


@bus.subscribe("slow", types=["slow.job"])
def slow(event: Event) -> None:
    pid = os.getpid()
    pipe = _client.pipeline(transaction=False)
    pipe.hincrby(f"{_ns}:t:starts", event.id, 1)
    pipe.hset(f"{_ns}:t:start-pid", event.id, pid)
    pipe.execute()
    time.sleep(event.data.get("sleep_ms", 0) / 1000)
    pipe = _client.pipeline(transaction=False)
    pipe.hincrby(f"{_ns}:t:done", event.id, 1)
    pipe.hset(f"{_ns}:t:done-pid", event.id, pid)
    pipe.execute()
