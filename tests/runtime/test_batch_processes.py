"""Batch subscriptions in real worker processes (``dramatiq chi_redis.worker
runtime.proc_batch``) on the real server, killed with ``kill -9`` (docs/design.md §5.10):

- a worker killed in the middle of a batch: every entry of its batches (running, prefetched,
  gathered) is reclaimed by the other worker and handled, nothing lost;
- an event that kills its worker every time, inside a batch: redelivered alone, it is
  dead-lettered after ``max_deliveries`` while the events that shared its batch are handled.
"""

from __future__ import annotations

import os
import signal

import pytest
import redis
from support import drained, stays, wait_groups, wait_until
from support.processes import Workers, int_hash, wait_ready

from chi_redis import Event, EventBus

pytestmark = pytest.mark.redis


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_kill_9_mid_batch_the_other_worker_handles_every_entry(
    workers: Workers, real_client: redis.Redis, ns: str
) -> None:
    bus = EventBus(real_client, namespace=ns)
    w1 = workers.start("runtime.proc_batch", threads=2)
    w2 = workers.start("runtime.proc_batch", threads=2)
    wait_ready(w1, w2)
    wait_groups(real_client, bus, {"batch-slow": ["bslow"]})
    events = [Event(type="bslow.job", data={"n": i, "sleep_ms": 1500}) for i in range(40)]
    bus.publish_batch(events)
    start_pid, done, done_pid = f"{ns}:t:start-pid", f"{ns}:t:done", f"{ns}:t:done-pid"
    victim_pid = int(wait_until(lambda: next(iter(real_client.hvals(start_pid)), None),
                                60, message="a batch started"))
    victim = w1 if _ppid(victim_pid) == w1.pid else w2
    assert _ppid(victim_pid) == victim.pid
    os.kill(victim_pid, signal.SIGKILL)  # the worker child running the batch
    held = {eid for eid, pid in int_hash(real_client, start_pid).items() if pid == victim_pid}
    wait_until(lambda: real_client.hlen(done) == len(events), 120, interval=0.1,
               message="every event finished")
    wait_until(lambda: drained(real_client, bus, "batch-slow", ["bslow"]), 30,
               message="drained")
    finished, finished_by = int_hash(real_client, done), int_hash(real_client, done_pid)
    started = int_hash(real_client, f"{ns}:t:starts")
    assert set(finished) == {e.id for e in events}  # nothing lost
    unfinished = {eid for eid in held if finished_by[eid] != victim_pid}
    assert len(unfinished) >= 2, "the victim died with a batch in flight"
    for eid in unfinished:  # the victim's batch ran again, elsewhere
        assert started[eid] >= 2 and finished_by[eid] != victim_pid
    assert real_client.xlen(bus.keys.dlq("batch-slow")) == 0  # one crash < max_deliveries


def test_an_event_that_kills_its_worker_is_isolated_and_dead_lettered_alone(
    workers: Workers, real_client: redis.Redis, ns: str
) -> None:
    """``os._exit(1)`` whenever the batch holds the poison event (the last of eight): only
    the delivery count can stop it.  Redelivered entries run alone and are acked at once, so
    the others of its batch succeed on their second delivery and only the poison one reaches
    ``CHI_MAX_DELIVERIES=3``.  (Entries prefetched *behind* such an event in the same
    process are counted as delivered at each crash, as for every subscription: §5.10.)"""
    bus = EventBus(real_client, namespace=ns)
    w = workers.start("runtime.proc_batch", threads=1)
    w.supervise(max_restarts=8)
    wait_groups(real_client, bus, {"batch-poison": ["bpoison"]})
    events = [Event(type="bpoison.exit" if i == 7 else "bpoison.ok", data={"n": i})
              for i in range(8)]
    sids = bus.publish_batch(events)
    bad = events[7]
    wait_until(lambda: real_client.xlen(bus.keys.dlq("batch-poison")) == 1, 120, interval=0.1,
               message="the poison event dead-lettered")
    good = {e.id for e in events if e is not bad}
    wait_until(lambda: set(int_hash(real_client, f"{ns}:t:done")) == good, 60, interval=0.1,
               message="the events that shared its batch handled")
    (dl,) = bus.dead_letters("batch-poison")
    assert (dl.reason, dl.event_id, dl.source_id) == ("max_deliveries", bad.id, sids[7])
    starts = f"{ns}:t:starts"
    assert int(real_client.hget(starts, bad.id) or 0) == 3  # once in the batch, twice alone
    assert stays(lambda: int(real_client.hget(starts, bad.id) or 0) == 3, 3.0)  # no loop
    assert set(int_hash(real_client, f"{ns}:t:done").values()) == {1}  # each good one once
    wait_until(lambda: drained(real_client, bus, "batch-poison", ["bpoison"]), 30,
               message="drained")
