"""Crash recovery in one process, on fakeredis and on the real server: entries stranded by
a worker that stopped without handing them back are reclaimed after the lease and run once
more.  (Lease refresh of slow handlers, with its negative control, is a reliability case in
worker processes: tests/reliability/test_slow_handlers.py.)
"""

from __future__ import annotations

import threading
from typing import Any

from support import Runtime, drained, wait_until

from chi_redis import Event

LEASE_MS = 900


def test_stranded_entries_are_reclaimed_after_the_lease(rt: Runtime) -> None:
    """Entries a dead worker held (read, never acked, never handed back) are claimed by a
    live worker once idle past the lease, with their delivery count increased (F1/F11)."""
    seen: list[Any] = []
    lock = threading.Lock()

    def handler(event: Event) -> None:
        with lock:
            seen.append(event.data["n"])

    rt.bus.subscribe("jobs", types=["job.run"])(handler)
    rt.broker(lease_ms=LEASE_MS, reclaim_interval_ms=100)
    stream = rt.bus.keys.stream("job")
    rt.bus.publish_batch([Event(type="job.run", data={"n": i}) for i in range(5)])
    # a "dead" worker: read everything and vanished
    rt.client.xreadgroup("jobs", "dead-worker", {stream: ">"}, count=5)
    assert rt.client.xpending(stream, "jobs")["pending"] == 5
    rt.worker(rt.brokers[0], threads=2)
    wait_until(lambda: sorted(seen) == list(range(5)), 30, message="reclaimed and handled")
    wait_until(lambda: drained(rt.client, rt.bus, "jobs", ["job"]), 30, message="drained")
    assert sorted(seen) == list(range(5))


def test_max_deliveries_counts_handler_starts_with_a_hard_cap(rt: Runtime) -> None:
    """Given three stranded entries, each delivered more than ``max_deliveries`` (3) times: one
    whose handler never started (read ahead behind a crashing event), one that started three
    times, one delivered past the hard cap (4 x 3) without a start.  When reclaimed, the first
    runs (acked at once) and the other two are dead-lettered with
    reason ``max_deliveries`` (docs/design.md §5.5)."""
    seen: list[int] = []
    rt.bus.subscribe("jobs", types=["job.run"])(lambda e: seen.append(e.data["n"]))
    rt.broker(lease_ms=LEASE_MS, reclaim_interval_ms=100, max_deliveries=3)
    stream, keys = rt.bus.keys.stream("job"), rt.bus.keys
    ids = rt.bus.publish_batch([Event(type="job.run", data={"n": i}) for i in range(3)])
    rt.client.xreadgroup("jobs", "dead-worker", {stream: ">"}, count=3)
    for sid, delivered in zip(ids, (5, 3, 12), strict=True):  # the next claim adds one
        rt.client.xclaim(stream, "jobs", "dead-worker", 0, [sid], retrycount=delivered)
    rt.client.set(keys.starts("jobs", stream, ids[1]), 2)  # + its first delivery: 3 starts
    rt.worker(rt.brokers[0], threads=2)
    wait_until(lambda: drained(rt.client, rt.bus, "jobs", ["job"]), 30, message="drained")
    assert seen == [0]
    letters = {d.source_id: d for d in rt.bus.dead_letters("jobs")}
    assert sorted(letters) == sorted(ids[1:])
    assert [(letters[s].reason, letters[s].deliveries) for s in ids[1:]] == [
        ("max_deliveries", 4), ("max_deliveries", 13)]
    assert rt.client.get(keys.starts("jobs", stream, ids[0])) == b"1"  # its start, then acked
