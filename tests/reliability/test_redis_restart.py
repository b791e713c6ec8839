"""F2: Redis restarted under full-speed publishing with the AOF on (``appendfsync always``
and ``everysec``): SIGKILL, a clean SHUTDOWN, and SIGSTOP for 3 s then SIGCONT.

No acknowledged publish is lost, the consumer group and its pending entries survive (no
NOGROUP, no group re-created), publishing works again soon after each restart and the
worker carries on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import RedisServer, RedisServers, wait_until
from support.faultcase import SUB, FaultCase
from support.figures import record
from support.logged_publish import Publisher

pytestmark = [pytest.mark.redis, pytest.mark.timeout(240)]


def _restart_gap(server: RedisServer, pub: Publisher, stop: str) -> tuple[float, float]:
    """Bring the server down (``kill`` or ``shutdown``), start it again; seconds until it
    answered and from then to the first ok publish."""
    client = server.client(retry=Retry(NoBackoff(), 0))  # redis-py would retry the SHUTDOWN
    down = time.monotonic()
    if stop == "kill":
        server.kill()
    else:
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown()
        assert server.proc is not None
        server.proc.wait(timeout=30)
    client.close()
    server.start()
    up = time.monotonic()
    wait_until(lambda: pub.first_ok_after(up) is not None, 30, f"publishing after {stop}")
    first_ok = pub.first_ok_after(up)
    assert first_ok is not None
    return up - down, first_ok


def _stop_and_continue(server: RedisServer, pub: Publisher) -> float:
    """SIGSTOP the server for 3 s, SIGCONT; seconds from SIGCONT to the first ok publish."""
    time.sleep(0.2)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(3.0)  # the stall itself
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    cont = time.monotonic()
    wait_until(lambda: pub.first_ok_after(cont) is not None, 30, "publishing after SIGCONT")
    return round(pub.first_ok_after(cont) or 0, 3)


def _group_survived(server: RedisServer, stream: str) -> int:
    """The group's pending count as loaded from the AOF (fails when the group is gone)."""
    with contextlib.closing(server.client()) as c:
        groups = {g["name"].decode(): g for g in c.xinfo_groups(stream)}
    assert SUB in groups, f"group {SUB} lost in the restart: {sorted(groups)}"
    return int(groups[SUB]["pending"])


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_restart_with_aof_loses_no_acknowledged_event(
    tmp_path: Path, ns: str, redis_servers: RedisServers, fsync: str
) -> None:
    server = redis_servers.start("--appendfsync", fsync, persistence=True)
    case = FaultCase(tmp_path, ns)
    client = server.client()
    figures: dict[str, object] = {"appendfsync": fsync}
    try:
        case.worker(server.url)
        case.ready(client)
        pub = Publisher(case.bus(server.url), case.history, batch=50).start()
        t0 = time.monotonic()
        wait_until(lambda: pub.ok_count() >= 2000, 60, "publishing at full speed")
        figures["publish_events_per_s"] = round(pub.ok_count() / (time.monotonic() - t0))
        pub.rate = 4000  # then a steady stream, so the worker keeps up within the case

        for stop in ("kill", "shutdown"):
            time.sleep(0.2)  # the fault lands mid-publish
            ping, first_ok = _restart_gap(server, pub, stop)
            figures[f"{stop}_pending_after_restart"] = _group_survived(server, case.stream())
            figures[f"{stop}_down_to_ping_s"] = round(ping, 3)
            figures[f"{stop}_restart_to_first_ok_s"] = round(first_ok, 3)
            assert first_ok < 2.0, f"publishing again {first_ok:.2f} s after the {stop}"

        if fsync == "everysec":  # (c) does not depend on the fsync policy: run it once
            figures["sigcont_to_first_ok_s"] = _stop_and_continue(server, pub)
        seen = pub.stop()
        case.wait_committed(120)
        info = client.info("persistence")
        figures["aof_delayed_fsync"] = info.get("aof_delayed_fsync")
        figures["aof_bytes"] = info.get("aof_current_size")
    finally:
        case.stop()
        client.close()
    verdict = case.history.check()
    logs = case.logs()
    figures.update(verdict.figures(), publish_outcomes=dict(seen.outcomes),
                   errors=len(seen.errors), error_text=seen.errors[0][1] if seen.errors else "")
    record(f"F2-aof-{fsync}", **figures)
    assert "NOGROUP" not in logs and "stream state lost" not in logs
    # Redelivered entries whose acks died with the server: bounded by what was in flight
    # (the worker's read window, at most a few hundred entries per fault).
    verdict.assert_nothing_lost(max_duplicated=3 * 512)
