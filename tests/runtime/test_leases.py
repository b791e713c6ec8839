"""Leases (F14) and crash recovery in one process, on fakeredis and on the real server.

Two brokers with distinct consumer names stand for two workers.  A handler slower than the
lease is not reclaimed while its worker refreshes the lease; with refreshing disabled (the
negative control) the other worker does reclaim it, which shows the test can see duplicates.
Entries stranded by a worker that stopped without handing them back are reclaimed after the
lease and run once more.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from support import Recorder, Runtime, drained, wait_until

from chi_redis import Event
from chi_redis.runtime.consumer import StreamsConsumer

LEASE_MS = 900
HANDLER_S = 2.0  # more than two leases


def _two_workers(rt: Runtime, starts: Recorder, done: Recorder) -> None:
    def handler(event: Event) -> None:
        starts.add(event.id)
        time.sleep(HANDLER_S)
        done.add(event.id)

    for bus in (rt.bus, rt.new_bus()):
        bus.subscribe("slow", types=["slow.job"])(handler)
        broker = rt.broker(bus, set_global=bus is rt.bus, lease_ms=LEASE_MS,
                           reclaim_interval_ms=100)
        rt.worker(broker, threads=2)


@pytest.mark.parametrize("refresh", [True, False], ids=["refreshed", "not-refreshed"])
def test_slow_handler_is_not_reclaimed_while_its_lease_is_refreshed(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, refresh: bool
) -> None:
    if not refresh:
        monkeypatch.setattr(StreamsConsumer, "_refresh_leases", lambda self: None)
    starts, done = Recorder(), Recorder()
    _two_workers(rt, starts, done)
    events = [Event(type="slow.job", data={"n": i}) for i in range(4)]
    rt.bus.publish_batch(events)
    wait_until(lambda: set(done.items()) == {e.id for e in events}, 60,
               message="all handlers finished")
    duplicates = len(starts) - len(events)
    if refresh:
        assert duplicates == 0
    else:
        assert duplicates > 0  # the control: the test does see reclaims
    wait_until(lambda: drained(rt.client, rt.bus, "slow", ["slow"]), 30, message="drained")


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
