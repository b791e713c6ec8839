"""Real worker processes: ``python -m dramatiq chi_redis.worker runtime.<module>
--processes 1 --threads N``, each a direct child of the test, on the real server (Redis
restarts and other server faults: tests/reliability).

- two workers, 5,000 events: each handled once per subscription, nothing left pending;
- kill -9 of a worker in the middle of a handler: the other one finishes its entries (F1);
- a handler that kills its process every time: dead-lettered after ``max_deliveries``, then
  never delivered again (F3b);
- a handler slower than the lease is not reclaimed from its live worker (F14).
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial

import pytest
import redis
from support import drained, stays, wait_groups, wait_until
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


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_kill_9_mid_handler_the_other_worker_finishes(
    workers: Workers, real_client: redis.Redis, ns: str
) -> None:
    bus = EventBus(real_client, namespace=ns)
    w1 = workers.start("runtime.proc_slow", threads=2)
    w2 = workers.start("runtime.proc_slow", threads=2)
    wait_ready(w1, w2)
    wait_groups(real_client, bus, {"slow": ["slow"]})
    events = [Event(type="slow.job", data={"n": i, "sleep_ms": 1500}) for i in range(12)]
    bus.publish_batch(events)
    starts, start_pid = f"{ns}:t:starts", f"{ns}:t:start-pid"
    done, done_pid = f"{ns}:t:done", f"{ns}:t:done-pid"
    victim_pid = int(wait_until(lambda: next(iter(real_client.hvals(start_pid)), None),
                                60, message="a handler started"))
    victim = w1 if _ppid(victim_pid) == w1.pid else w2
    survivor = w2 if victim is w1 else w1
    assert _ppid(victim_pid) == victim.pid
    os.kill(victim_pid, signal.SIGKILL)  # the worker child running the handler
    killed_at = time.monotonic()
    held = {eid for eid, pid in int_hash(real_client, start_pid).items() if pid == victim_pid}
    wait_until(lambda: real_client.hlen(done) == len(events), 60, interval=0.1,
               message="every event finished")
    recovered_in = time.monotonic() - killed_at
    wait_until(lambda: drained(real_client, bus, "slow", ["slow"]), 30, message="drained")
    finished = int_hash(real_client, done)
    finished_by = int_hash(real_client, done_pid)
    started = int_hash(real_client, starts)
    assert set(finished) == {e.id for e in events}  # nothing lost
    # what the victim was running when it died was redelivered to the survivor
    unfinished_by_victim = {eid for eid in held if finished_by[eid] != victim_pid}
    assert unfinished_by_victim, "the victim died with handlers in flight"
    for eid in unfinished_by_victim:
        assert started[eid] >= 2 and finished_by[eid] != victim_pid
    # duplicates are bounded by what the victim held (2 running + 2 prefetched)
    assert sum(finished.values()) - len(events) <= 4
    assert real_client.xlen(bus.keys.dlq("slow")) == 0  # one crash < max_deliveries
    assert survivor.alive()
    print(f"\nkill -9 → all {len(events)} finished {recovered_in:.1f} s later")


def test_handler_that_kills_its_process_is_dead_lettered_after_max_deliveries(
    workers: Workers, real_client: redis.Redis, ns: str
) -> None:
    """``os._exit(1)`` on every delivery: Retries never runs, only the delivery count can
    stop it.  A bounded restart loop brings the worker back each time; after
    ``CHI_MAX_DELIVERIES=3`` deliveries the entry is dead-lettered and never runs again."""
    bus = EventBus(real_client, namespace=ns)
    w = workers.start("runtime.proc_poison", threads=1)
    w.supervise(max_restarts=8)
    wait_groups(real_client, bus, {"poison": ["poison"]})
    bad = Event(type="poison.exit", data={"n": 1})
    (sid,) = bus.publish_batch([bad])
    starts = f"{ns}:t:starts"
    wait_until(lambda: real_client.xlen(bus.keys.dlq("poison")) == 1, 120, interval=0.1,
               message="the poison event dead-lettered")
    (dl,) = bus.dead_letters("poison")
    assert dl.reason == "max_deliveries"
    assert dl.event_id == bad.id and dl.source_id == sid
    assert dl.source_stream == bus.keys.stream("poison")
    assert dl.deliveries == 4  # three runs, and the fourth claim that dead-lettered it
    assert int(real_client.hget(starts, bad.id) or 0) == 3
    # no loop: the handler is not started again
    assert stays(lambda: int(real_client.hget(starts, bad.id) or 0) == 3, 3.0)
    # and the (restarted) worker still handles good events
    good = Event(type="poison.ok", data={"n": 2})
    bus.publish(good)
    wait_until(lambda: real_client.hget(f"{ns}:t:done", good.id) == b"1", 60,
               message="a good event after the poison one")
    assert w.starts == 4  # started once, restarted after each of the 3 crashes
    wait_until(lambda: drained(real_client, bus, "poison", ["poison"]), 30, message="drained")


def test_handler_slower_than_the_lease_is_not_reclaimed(
    workers: Workers, real_client: redis.Redis, ns: str
) -> None:
    """Lease 1.5 s, handlers 4 s, a second worker sweeping every 0.3 s: the owner keeps
    refreshing its leases, so nothing is reclaimed and nothing runs twice (F14)."""
    bus = EventBus(real_client, namespace=ns)
    wait_ready(workers.start("runtime.proc_slow", threads=2),
               workers.start("runtime.proc_slow", threads=2))
    wait_groups(real_client, bus, {"slow": ["slow"]})
    events = [Event(type="slow.job", data={"n": i, "sleep_ms": 4000}) for i in range(6)]
    bus.publish_batch(events)
    wait_until(lambda: real_client.hlen(f"{ns}:t:done") == len(events), 90, interval=0.1,
               message="all slow handlers finished")
    wait_until(lambda: drained(real_client, bus, "slow", ["slow"]), 30, message="drained")
    started = int_hash(real_client, f"{ns}:t:starts")
    assert started == {e.id: 1 for e in events}  # duplicates = 0
