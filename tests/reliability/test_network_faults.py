"""Network faults between one worker and Redis, through the fault proxy; a second worker
has a healthy path.

- F11: the reply to worker A's XREADGROUP is lost after Redis assigned it entries: they
  sit in A's pending list, A waits for a reply that never comes; worker B reclaims and
  handles them after the lease, long before A's socket timeout (10 s).
- F17: A is partitioned from Redis (blackhole) for longer than the lease while its handlers
  hold entries: B reclaims them; when the partition heals, A's late XACKs break nothing.
  Duplicates are counted (A ran them, B ran them again), never more than A held.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import RedisServers, wait_until
from support.faultcase import FaultCase, handler_rows
from support.faultproxy import FaultProxy
from support.figures import record
from support.logged_publish import event, publish_batch

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

LEASE_S = 1.5  # CHI_LEASE_MS of the test workers (support.processes.worker_env)


def _pid_of(case: FaultCase, index: int) -> int:
    """The PID of worker ``index``'s Dramatiq child (the process that runs handlers)."""
    w = case.workers[index]
    return int(wait_until(lambda: (w.children() or [0])[0], 30, "worker child"))


def test_lost_read_reply_entries_are_reclaimed_by_the_healthy_worker(
    tmp_path: Path, ns: str, redis_servers: RedisServers
) -> None:
    server = redis_servers.start()
    case = FaultCase(tmp_path, ns)
    client = server.client()
    try:
        with FaultProxy(server.port) as proxy:
            case.worker(proxy.url)  # A
            case.worker(server.url)  # B
            case.ready(client)
            pid_b = _pid_of(case, 1)
            bus = case.bus(server.url)
            proxy.drop_reply_containing(case.stream().encode())
            n = 0
            while not proxy.dropped and n < 2000:  # until a read of A's loses its reply
                publish_batch(bus, case.history, [event(n + i) for i in range(10)])
                n += 10
                time.sleep(0.05)
            dropped_at = time.monotonic()
            assert proxy.dropped == 1, "no XREADGROUP reply of A carried entries"
            stranded = _pending_of_others(client, case, pid_b)
            case.wait_committed(60)
            recovered_s = time.monotonic() - dropped_at
    finally:
        case.stop()
        client.close()
    verdict = case.history.check()
    reclaimed = {e for e, _, _, pid in handler_rows(case) if pid == pid_b}
    record("F11-lost-read-reply", **verdict.figures(), stranded=stranded,
           drop_to_all_handled_s=round(recovered_s, 3))
    verdict.assert_nothing_lost(max_duplicated=0)
    assert stranded >= 1, "the dropped reply stranded nothing"
    assert recovered_s < 8, "not reclaimed: handled only after A's own socket timeout"
    assert reclaimed, "worker B handled nothing"


def _pending_of_others(client: object, case: FaultCase, pid_b: int) -> int:
    """Entries pending for consumers other than B's (A's stranded ones, just after the drop)."""
    summary = client.xpending(case.stream(), "hist")  # type: ignore[attr-defined]
    return sum(int(c["pending"]) for c in summary.get("consumers") or []
               if str(pid_b) not in c["name"].decode())


def test_partitioned_worker_entries_are_reclaimed_and_its_late_acks_break_nothing(
    tmp_path: Path, ns: str, redis_servers: RedisServers
) -> None:
    server = redis_servers.start()
    case = FaultCase(tmp_path, ns)
    client = server.client()
    try:
        with FaultProxy(server.port) as proxy:
            case.worker(proxy.url, CHI_TEST_DEDUPE="1")  # A
            case.ready(client)
            pid_a = _pid_of(case, 0)
            bus = case.bus(server.url)
            publish_batch(bus, case.history, [event(i, sleep_ms=400) for i in range(8)])
            wait_until(lambda: any(p == pid_a for *_, p in handler_rows(case, "start")), 30,
                       "A handling")
            held = int(client.xpending(case.stream(), "hist")["pending"])
            proxy.blackhole()
            cut = time.monotonic()
            case.worker(server.url, CHI_TEST_DEDUPE="1")  # B, on a healthy path
            wait_until(case.history.committed_all_ok, 60, "B finished A's entries",
                       interval=0.05)
            reclaimed_s = time.monotonic() - cut
            time.sleep(max(0.0, 2 * LEASE_S - (time.monotonic() - cut)))  # partition > lease
            proxy.heal()
            publish_batch(bus, case.history, [event(100 + i) for i in range(20)])
            case.wait_committed()
            wait_until(lambda: not client.xpending(case.stream(), "hist")["pending"], 30,
                       "nothing pending after the heal")
    finally:
        case.stop()
        client.close()
    logs = case.logs()
    verdict = case.history.check()
    record("F17-partitioned-worker", **verdict.figures(), held_at_partition=held,
           partition_to_reclaimed_s=round(reclaimed_s, 3))
    verdict.assert_nothing_lost(max_duplicated=held)
    assert "Traceback" not in logs, logs[-3000:]
