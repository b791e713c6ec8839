"""Script calls pipelined straight on a pool connection (``Script.run_pipelined_direct``),
and ``publish_batch`` sent that way: NOSCRIPT reloads without running a call twice, error
replies and timeouts leave no reply for a later call.

On a redis-server of its own: every test flushes its script cache, and one holds it busy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.exceptions as rex
from support.servers import RedisServer
from support.waiting import wait_until

from chi_redis import Event, EventBus
from chi_redis.backend.scripts import Script, direct_connection, script

pytestmark = pytest.mark.redis

INCR = Script(
    "test_pipe_incr",
    "if ARGV[1] == 'fail' then return redis.error_reply('boom') end\n"
    "return redis.call('INCRBY', KEYS[1], ARGV[1])",
)
SLOW_INCR = Script(
    "test_pipe_slow_incr",  # INCRBY, then hold the server for 2 s
    "local n = redis.call('INCRBY', KEYS[1], ARGV[1])\n"
    "local t0 = redis.call('TIME')\n"
    "repeat local t = redis.call('TIME')\n"
    "until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 2000000\n"
    "return n",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    own = RedisServer(Path(tmp_path_factory.mktemp("pipedirect"))).start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    """A client of ``server`` that has forgotten every script."""
    c = server.client()
    c.script_flush()
    yield c
    c.close()


def conn_ids(admin: redis.Redis, name: str) -> set[int]:
    return {int(c["id"]) for c in admin.client_list() if c.get("name") == name}


def test_loads_the_script_once_and_runs_each_call_once(
    server: RedisServer, admin: redis.Redis, ns: str
) -> None:
    plain = server.client(client_name=f"{ns}-pipe")
    direct, key = direct_connection(plain), f"{ns}:n"
    assert direct is not None and not admin.script_exists(INCR.sha)[0]
    calls = [INCR.packed([key], [n]) for n in (1, 2, 3)]
    assert INCR.run_pipelined_direct(plain, direct, calls) == [1, 3, 6]  # NOSCRIPT, reloaded
    assert admin.script_exists(INCR.sha)[0]
    kept = conn_ids(admin, f"{ns}-pipe")
    assert INCR.run_pipelined_direct(plain, direct, calls) == [7, 9, 12]
    admin.script_flush()
    assert INCR.run_pipelined_direct(plain, direct, calls) == [13, 15, 18]
    assert INCR.run_pipelined_direct(plain, direct, []) == []
    assert int(admin.get(key) or 0) == 18  # no call ran twice
    assert conn_ids(admin, f"{ns}-pipe") == kept  # every reply read: the connection stays


def test_raises_the_first_error_after_every_reply_was_read(
    server: RedisServer, admin: redis.Redis, ns: str
) -> None:
    plain = server.client(client_name=f"{ns}-pipe")
    direct, key = direct_connection(plain), f"{ns}:n"
    assert direct is not None
    calls = [INCR.packed([key], [1]), INCR.packed([key], ["fail"]), INCR.packed([key], [2])]
    for _ in range(2):  # after SCRIPT FLUSH (reloaded), then cached
        with pytest.raises(rex.ResponseError, match="boom"):
            INCR.run_pipelined_direct(plain, direct, calls)
    assert int(admin.get(key) or 0) == 6  # the calls around the error ran, once each
    kept = conn_ids(admin, f"{ns}-pipe")
    assert INCR.run_direct(plain, direct, [key.encode()], [b"1"]) == 7  # its own reply
    assert conn_ids(admin, f"{ns}-pipe") == kept


def test_drops_a_connection_whose_reply_timed_out(
    server: RedisServer, admin: redis.Redis, ns: str
) -> None:
    """A reply read too late must never answer a later call: the connection goes."""
    plain = server.client(socket_timeout=0.2, client_name=f"{ns}-pipe")
    direct, key = direct_connection(plain), f"{ns}:n"
    assert direct is not None
    admin.script_load(SLOW_INCR.source)
    with pytest.raises(rex.TimeoutError):
        SLOW_INCR.run_pipelined_direct(plain, direct, [SLOW_INCR.packed([key], [5])])
    wait_until(lambda: admin.ping(), message="the slow script has finished")
    wait_until(lambda: not conn_ids(admin, f"{ns}-pipe"), message="connection dropped")
    assert INCR.run_pipelined_direct(plain, direct, [INCR.packed([key], [1])]) == [6]


def test_publish_batch_sent_directly_after_a_script_flush_writes_each_event_once(
    server: RedisServer, admin: redis.Redis, ns: str
) -> None:
    client = server.client()
    bus = EventBus(client, namespace=ns)
    assert bus.writer._direct is not None  # the path under test
    events = [Event(type="user.signed_up", data={"i": i}) for i in range(45)]
    ids = bus.publish_batch(events[:25], chunk_size=10)  # NOSCRIPT on all three chunks
    assert admin.script_exists(script("publish").sha)[0]
    admin.script_flush()
    ids += bus.publish_batch(events, chunk_size=10)[25:]  # 25 known, 20 new
    entries = admin.xrange(bus.keys.stream("user"))
    assert [sid.decode() for sid, _ in entries] == ids
    assert [f[b"id"].decode() for _, f in entries] == [e.id for e in events]
    assert bus.store.load(events[30].id) == events[30]
    bus.close()
