"""Real worker processes: ``python -m dramatiq chi_redis.worker runtime.<module>
--processes 1 --threads N``, each a direct child of the test, on the real server (or on a
redis-server of the test's own for the restart case).

- two workers, 5,000 events: each handled once per subscription, nothing left pending;
- Redis restarted without persistence: groups re-created, new events handled, bounded logs
  (F12).

The worker-fault cases (kill -9 mid-handler, poison events, slow handlers, SIGTERM) are in
tests/reliability.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
import redis
from support import RedisServers, drained, wait_groups, wait_until
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


def test_redis_restart_without_persistence_recovers_with_bounded_logs(
    tmp_path: Path, ns: str, redis_servers: RedisServers
) -> None:
    server = redis_servers.start()
    ws = Workers(tmp_path, server.url, ns)
    client = server.client()
    try:
        bus = EventBus(client, namespace=ns)
        wait_ready(ws.start("runtime.proc_load", threads=2))
        wait_groups(client, bus, {"load-a": ["load"], "load-b": ["load"]})
        before = [Event(type="load.created", data={"i": i}) for i in range(100)]
        bus.publish_batch(before)
        wait_until(lambda: client.hlen(f"{ns}:t:done:load-b") == 100, 60, message="before")

        server.kill()  # state gone: streams, groups, scripts
        down = time.monotonic()
        time.sleep(1.5)
        server.start()  # same port, empty
        restarted = time.monotonic()
        outage = restarted - down
        after = [Event(type="load.created", data={"i": i}) for i in range(100, 200)]
        wait_until(lambda: _try_publish(bus, after), 30, interval=0.2, message="publish")
        wait_until(lambda: client.hlen(f"{ns}:t:done:load-a") == 100
                   and client.hlen(f"{ns}:t:done:load-b") == 100, 60, interval=0.1,
                   message="events published after the restart handled")
        recovered_in = time.monotonic() - restarted
        for sub in ("load-a", "load-b"):
            wait_until(partial(drained, client, bus, sub, ["load"]), 30,
                       message=f"{sub} drained")
        assert set(int_hash(client, f"{ns}:t:done:load-a").values()) == {1}
        assert {e.id for e in after} == set(int_hash(client, f"{ns}:t:done:load-b"))
        time.sleep(1.0)
    finally:
        ws.stop()
        client.close()
        server.stop()
    log = ws.logs()
    missing = [ln for ln in log.splitlines() if "consumer group" in ln and "missing" in ln]
    critical = [ln for ln in log.splitlines() if "CRITICAL" in ln]
    print(f"\nrecovered {recovered_in:.1f} s after the restart; {len(missing)} 'group missing'"
          f" warnings, {len(critical)} CRITICAL lines")
    assert 1 <= len(missing) <= 10, "\n".join(missing)
    # Dramatiq logs one CRITICAL line per consumer thread (2 here) per restart attempt,
    # one attempt per dramatiq_restart_delay (0.5 s): no hot loop.
    assert len(critical) <= 2 * (outage / 0.5 + 4), "\n".join(critical)


def _try_publish(bus: EventBus, events: list[Event]) -> bool:
    try:
        bus.publish_batch(events)
    except Exception:  # Redis coming back
        return False
    return True
