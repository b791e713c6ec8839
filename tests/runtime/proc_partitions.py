"""Worker-process handler of the partitioned-topic tests (tests/runtime/test_partitions.py).

Subscription ``ordered`` on topic ``orders``: each run pushes ``s <key> <seq> <pid>`` onto
``<ns>:t:log`` when it starts and ``d <key> <seq> <pid>`` when it ends (one Redis list: the
server orders every process's lines).  An event with ``data["fail"]`` fails its first run
(marker ``<ns>:t:failed:<id>``), so its retry must hold the partition.
"""

from __future__ import annotations

import os
import time

from chi_redis import Event
from chi_redis.worker import bus

_ns = bus.namespace
_pid = os.getpid()


@bus.subscribe("ordered", topics=["orders"], min_backoff_ms=50, max_backoff_ms=100)
def ordered(event: Event) -> None:
    client = bus.client
    key, seq = event.data["key"], event.data["seq"]
    client.rpush(f"{_ns}:t:log", f"s {key} {seq} {_pid}")
    if event.data.get("fail") and client.set(f"{_ns}:t:failed:{event.id}", 1, nx=True):
        raise RuntimeError("first run fails: the retry must hold the partition")
    time.sleep(event.data.get("sleep_ms", 0) / 1000)
    client.rpush(f"{_ns}:t:log", f"d {key} {seq} {_pid}")
