"""F6: the publisher's connection breaks mid-publish (through the fault proxy): (a) a reset
during a pipelined ``publish_batch``, (b) the reply to a publish dropped after Redis ran it,
(c) a blackhole for 3 s, (e) ``CLIENT KILL TYPE normal``.

A publish returns an entry id or raises an error saying whether it may have been written
(``outcome``), within its retry budget: it never hangs and never retries more than its own
policy (redis-py's ten retries are off).  Nothing published ok is lost, and the stream holds
each event id once (the publish script writes an id once, so a retry after a lost reply
does not duplicate it); the consumer, with dedupe on, runs no side effect twice for
(a) and (b).  (e) also cuts the worker's own connections: a handler whose effect was done and
whose dedupe mark was cut runs again, counted (at most one per handler thread).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from support import RedisServers, wait_until
from support.faultcase import FaultCase
from support.faultproxy import FaultProxy
from support.figures import record
from support.logged_publish import Publisher, event, publish_batch, publish_one

from chi_redis import EventBus
from chi_redis.backend.connection import RetryPolicy
from chi_redis.errors import RedisUnavailableError

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

ONCE = RetryPolicy(attempts=1)


def _stream_ids(client: redis.Redis, stream: str) -> Counter[str]:
    """How often each event id is in the stream."""
    return Counter(f[b"id"].decode() for _, f in client.xrange(stream))


def test_publisher_retries_only_under_its_own_budget(
    tmp_path: Path, ns: str, redis_servers: RedisServers
) -> None:
    server = redis_servers.start()
    case = FaultCase(tmp_path, ns)
    with FaultProxy(server.port) as proxy:
        bus = case.bus(proxy.url, retry=RetryPolicy(attempts=3, base_ms=50, max_ms=200))
        # redis-py's own retry (ten by default) is off: the bus's policy is the only one.
        assert bus.client.get_retry()._retries == 0  # type: ignore[union-attr]
        assert bus.retry.attempts == 3
        publish_one(bus, case.history, event(0))  # connected, script loaded
        direct = server.client()
        calls = _evalsha_calls(direct)
        before = proxy.accepted
        proxy.blackhole()
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="cannot reach Redis") as info:
            publish_one(bus, case.history, event(1))
        took = time.monotonic() - t0
        proxy.heal()  # what was sent into the hole arrives now
        # (one idle connection of the pool, from the first publish's EVAL, stays open)
        wait_until(lambda: len(proxy.pipes()) <= 1, 30, "the blackholed connections closed")
        sent = _evalsha_calls(direct) - calls
        direct.close()
        case.stop()
    assert info.value.outcome == "unknown"
    # Each try is one socket timeout (1 s) on the kept connection or two on a new one (the
    # pool connects again once when a fresh connection fails its handshake): at most
    # 1 + 2 + 2 s and two short waits, and the publish itself sent at most 3 times.
    assert 2.5 < took < 8, took
    assert 1 <= sent <= 3, f"{sent} publish calls for a policy of 3 attempts"
    record("F6-retry-budget", attempts=3, blackholed_publish_s=round(took, 3),
           publish_calls_sent=sent, error_text=str(info.value), outcome=info.value.outcome,
           new_connections=proxy.accepted - before)


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _reset_mid_batch(proxy: FaultProxy, bus: EventBus, once: EventBus, case: FaultCase,
                     figures: dict[str, object]) -> None:
    """(a): a reset in the middle of a pipelined round trip, with and without retries."""
    for name, b, n0 in (("retried", bus, 10_000), ("once", once, 20_000)):
        proxy.reset_after_bytes(60_000)
        t0 = time.monotonic()
        err = publish_batch(b, case.history, [event(n0 + i) for i in range(3000)], 100)
        figures[f"a_reset_{name}_s"] = round(time.monotonic() - t0, 3)
        figures[f"a_reset_{name}_error"] = "" if err is None else str(err)
        if name == "retried":
            assert err is None, err  # the round trip was sent again: nothing twice
        else:
            assert err is not None and err.outcome == "known", err
            figures["a_reset_once_written"] = len(err.written)
    assert proxy.resets >= 2


def _dropped_reply(proxy: FaultProxy, bus: EventBus, once: EventBus, case: FaultCase,
                   figures: dict[str, object]) -> None:
    """(b): Redis ran the publish, its reply never came back."""
    ev = event(30_000)
    proxy.drop_next_reply(b"EVALSHA")
    t0 = time.monotonic()
    sid = publish_one(bus, case.history, ev)  # timed out, sent again: the same entry
    figures["b_retried_s"] = round(time.monotonic() - t0, 3)
    ev2 = event(30_001)
    proxy.drop_next_reply(b"EVALSHA")
    with pytest.raises(RedisUnavailableError) as info:
        publish_one(once, case.history, ev2)
    assert info.value.outcome == "unknown"  # logged as info
    figures["b_error_text"] = str(info.value)
    publish_one(once, case.history, ev2)  # the application publishes it again
    ids = _stream_ids(case.buses[0].client, case.stream())
    assert ids[ev.id] == 1 and ids[ev2.id] == 1
    assert sid.encode() in {e for e, _ in case.buses[0].client.xrange(case.stream(), sid, sid)}
    assert proxy.dropped == 2


def _blackhole_and_kill(proxy: FaultProxy, once: EventBus, direct: redis.Redis,
                        case: FaultCase, figures: dict[str, object]) -> None:
    """(c) 3 s without any byte forwarded, then (e) CLIENT KILL TYPE normal; a publisher
    without retries, so each fault is an error with an unknown outcome."""
    pub = Publisher(once, case.history).start()
    try:
        wait_until(lambda: pub.ok_count() >= 200, 60, "publishing")
        proxy.blackhole()
        time.sleep(3.0)  # the partition itself
        proxy.heal()
        healed = time.monotonic()
        wait_until(lambda: pub.first_ok_after(healed) is not None, 30, "publishing again")
        figures["c_heal_to_first_ok_s"] = round(pub.first_ok_after(healed) or 0, 3)
        killed_at = time.monotonic()
        figures["e_killed_clients"] = direct.client_kill_filter(_type="normal", skipme=True)
        wait_until(lambda: pub.first_ok_after(killed_at + 0.2) is not None, 30, "after kill")
    finally:
        seen = pub.stop()
    figures.update(c_e_outcomes=dict(seen.outcomes), c_e_max_publish_s=round(seen.max_call_s, 3),
                   c_error_text=seen.errors[0][1] if seen.errors else "")
    assert seen.errors, "the blackhole was never seen by the publisher"
    assert seen.max_call_s < 4, f"a publish took {seen.max_call_s:.1f} s"


def test_connection_faults_mid_publish_lose_nothing_and_duplicate_nothing(
    tmp_path: Path, ns: str, redis_servers: RedisServers
) -> None:
    server = redis_servers.start()
    case = FaultCase(tmp_path, ns)
    direct = server.client()
    figures: dict[str, object] = {}
    try:
        case.worker(server.url, CHI_TEST_DEDUPE="1")
        case.ready(direct)
        with FaultProxy(server.port) as proxy:
            bus = case.bus(proxy.url)
            once = case.bus(proxy.url, retry=ONCE)
            _reset_mid_batch(proxy, bus, once, case, figures)
            _dropped_reply(proxy, bus, once, case, figures)
            publisher_only = case.history.ok_ids()  # events of (a) and (b)
            _blackhole_and_kill(proxy, once, direct, case, figures)
        case.wait_committed()
        wait_until(lambda: not direct.xpending(case.stream(), "hist")["pending"], 30,
                   "nothing pending")
        in_stream = _stream_ids(direct, case.stream())
    finally:
        case.stop()
        with contextlib.suppress(redis.RedisError):
            direct.close()
    verdict = case.history.check()
    record("F6-publish-connection-faults", **verdict.figures(), **figures,
           outcomes=dict(case.history.outcomes()),
           stream_entries=sum(in_stream.values()),
           stream_duplicate_entries=sum(n - 1 for n in in_stream.values()))
    assert max(in_stream.values()) == 1, "an event id written twice"
    # (a) and (b) broke only the publisher's connections: dedupe on, no side effect twice.
    assert not publisher_only & set(verdict.duplicated_ids), verdict.duplicated_ids
    # CLIENT KILL also cuts the worker's connections: a handler whose effect was done but
    # whose dedupe mark or ack was cut runs again; at most one per handler thread (2).
    verdict.assert_nothing_lost(max_duplicated=2)
