"""Real worker processes: ``python -m dramatiq chi_redis.worker runtime.<module>
--processes 1 --threads N``, each a direct child of the test, on the real server: two
workers, 5,000 events, each handled once per subscription, nothing left pending.

The fault cases (kill -9 mid-handler, poison events, slow handlers, SIGTERM, Redis
restarted without persistence) are in tests/reliability.
"""

from __future__ import annotations

import time
from functools import partial

import pytest
import redis
from support import drained, wait_groups, wait_until
from support.processes import Workers, int_hash, wait_ready

from chi_redis import Event, EventBus

pytestmark = pytest.mark.redis


def test_two_worker_processes_handle_each_event_once_per_subscription(
    workers: Workers, real_client: redis.Redis, ns: str
) -> None:
    bus = EventBus(real_client, namespace=ns)
    wait_ready(workers.start("runtime.proc_load", threads=4),
               workers.start("runtime.proc_load", threads=4))
    wait_groups(real_client, bus, {"load-a": ["load"], "load-b": ["load"]})
    events = [Event(type="load.created" if i % 2 else "load.updated", data={"i": i})
              for i in range(5000)]
    t0 = time.monotonic()
    bus.publish_batch(events)
    want_a = {e.id for e in events if e.type == "load.created"}
    want_b = {e.id for e in events}
    done_a, done_b = f"{ns}:t:done:load-a", f"{ns}:t:done:load-b"
    wait_until(lambda: real_client.hlen(done_a) == len(want_a)
               and real_client.hlen(done_b) == len(want_b), 180, interval=0.1,
               message="every event handled by both subscriptions")
    elapsed = time.monotonic() - t0
    for sub in ("load-a", "load-b"):
        wait_until(partial(drained, real_client, bus, sub, ["load"]), 30,
                   message=f"{sub}: nothing pending, lag 0")
    a, b = int_hash(real_client, done_a), int_hash(real_client, done_b)
    assert set(a) == want_a and set(b) == want_b
    assert set(a.values()) == {1} and set(b.values()) == {1}  # no duplicates
    # both processes took part
    consumers = real_client.xinfo_consumers(bus.keys.stream("load"), "load-b")
    assert len(consumers) >= 2
    print(f"\n{len(want_a) + len(want_b)} handler runs in {elapsed:.2f} s "
          f"({(len(want_a) + len(want_b)) / elapsed:.0f}/s incl. one HINCRBY each)")
