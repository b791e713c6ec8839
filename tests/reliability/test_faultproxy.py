"""The fault proxy does what each mode says: pass, reset, blackhole and heal, delay, and a
dropped reply to a command the server did run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import RedisServers, wait_until
from support.faultproxy import FaultProxy
from support.waiting import stays

pytestmark = pytest.mark.redis


@pytest.fixture
def proxy(redis_servers: RedisServers) -> Iterator[FaultProxy]:
    server = redis_servers.start()
    with FaultProxy(server.port) as p:
        yield p


def _client(proxy: FaultProxy, timeout: float = 0.5) -> redis.Redis:
    return redis.Redis(port=proxy.port, socket_timeout=timeout, socket_connect_timeout=1,
                       retry=Retry(NoBackoff(), 0))


def test_pass_and_reset(proxy: FaultProxy) -> None:
    with contextlib.closing(_client(proxy)) as c:
        assert c.ping()
        assert proxy.accepted == 1
        # Held, not through the pool (whose checkout would quietly reconnect after a reset).
        conn = c.connection_pool.get_connection()
        assert proxy.reset() == 1
        with pytest.raises(redis.ConnectionError, match=r"reset|closed|pipe"):
            conn.send_command("PING")
            conn.read_response()
        c.connection_pool.release(conn)
        assert c.ping()  # a new connection goes through again
        assert proxy.accepted == 2


def test_blackhole_times_out_and_heal_delivers_late_bytes(proxy: FaultProxy) -> None:
    with contextlib.closing(_client(proxy)) as c, contextlib.closing(_client(proxy, 5)) as d:
        d.ping()
        proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            c.ping()
        # A command sent into the hole is held, not lost: it runs after the heal.
        d.connection_pool.get_connection().send_command("SET", "late", "1")
        assert stays(lambda: _direct(proxy).get("late") is None, 0.3), "SET went through the hole"
        proxy.heal()
        wait_until(lambda: _direct(proxy).get("late") == b"1", 10, "late SET applied")


def _direct(proxy: FaultProxy) -> redis.Redis:
    return redis.Redis(port=proxy.upstream[1], socket_timeout=5)


def test_delay_slows_each_chunk(proxy: FaultProxy) -> None:
    with contextlib.closing(_client(proxy, 5)) as c:
        c.ping()
        proxy.delay(150)
        t0 = time.monotonic()
        c.ping()
        assert time.monotonic() - t0 >= 0.25  # request and reply each held 150 ms
        proxy.heal()


def test_dropped_reply_command_ran_client_timed_out(proxy: FaultProxy) -> None:
    with contextlib.closing(_client(proxy)) as c:
        c.ping()
        proxy.drop_next_reply(b"INCR")
        with pytest.raises(redis.TimeoutError):
            c.incr("n")
        assert proxy.dropped == 1
        assert _direct(proxy).get("n") == b"1"  # applied
        assert c.incr("n") == 2  # the next connection is not affected


def test_reset_after_bytes_cuts_a_pipeline(proxy: FaultProxy) -> None:
    with contextlib.closing(_client(proxy, 5)) as c:
        c.ping()
        proxy.reset_after_bytes(20_000)
        pipe = c.pipeline(transaction=False)
        for i in range(2000):
            pipe.rpush("l", b"x" * 100 + str(i).encode())
        with pytest.raises(redis.ConnectionError):
            pipe.execute()
        assert proxy.resets >= 1
        assert _direct(proxy).llen("l") < 2000
