"""Script calls pipelined straight on a pool connection (``Script.run_pipelined_direct``),
and ``publish_batch`` sent that way: NOSCRIPT reloads without running a call twice, error
replies and timeouts leave no reply for a later call.

On a redis-script_server of its own: every test flushes its script cache, and one holds it busy.
"""

from __future__ import annotations

import pytest
import redis
import redis.exceptions as rex
from support.scripts import conn_ids, slow_incr
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
SLOW_INCR = slow_incr("test_pipe_slow_incr")


def test_loads_the_script_once_and_runs_each_call_once(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    plain = script_server.client(client_name=f"{ns}-pipe")
    direct, key = direct_connection(plain), f"{ns}:n"
    assert direct is not None and not script_admin.script_exists(INCR.sha)[0]
    calls = [INCR.packed([key], [n]) for n in (1, 2, 3)]
    assert INCR.run_pipelined_direct(plain, direct, calls) == [1, 3, 6]  # NOSCRIPT, reloaded
    assert script_admin.script_exists(INCR.sha)[0]
    kept = conn_ids(script_admin, f"{ns}-pipe")
    assert INCR.run_pipelined_direct(plain, direct, calls) == [7, 9, 12]
    script_admin.script_flush()
    assert INCR.run_pipelined_direct(plain, direct, calls) == [13, 15, 18]
    assert INCR.run_pipelined_direct(plain, direct, []) == []
    assert int(script_admin.get(key) or 0) == 18  # no call ran twice
    assert conn_ids(script_admin, f"{ns}-pipe") == kept  # every reply read: the connection stays


def test_raises_the_first_error_after_every_reply_was_read(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    plain = script_server.client(client_name=f"{ns}-pipe")
    direct, key = direct_connection(plain), f"{ns}:n"
    assert direct is not None
    calls = [INCR.packed([key], [1]), INCR.packed([key], ["fail"]), INCR.packed([key], [2])]
    for _ in range(2):  # after SCRIPT FLUSH (reloaded), then cached
        with pytest.raises(rex.ResponseError, match="boom"):
            INCR.run_pipelined_direct(plain, direct, calls)
    assert int(script_admin.get(key) or 0) == 6  # the calls around the error ran, once each
    kept = conn_ids(script_admin, f"{ns}-pipe")
    assert INCR.run_direct(plain, direct, [key.encode()], [b"1"]) == 7  # its own reply
    assert conn_ids(script_admin, f"{ns}-pipe") == kept


def test_drops_a_connection_whose_reply_timed_out(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    """A reply read too late must never answer a later call: the connection goes."""
    plain = script_server.client(socket_timeout=0.2, client_name=f"{ns}-pipe")
    direct, key = direct_connection(plain), f"{ns}:n"
    assert direct is not None
    script_admin.script_load(SLOW_INCR.source)
    with pytest.raises(rex.TimeoutError):
        SLOW_INCR.run_pipelined_direct(plain, direct, [SLOW_INCR.packed([key], [5])])
    wait_until(lambda: script_admin.ping(), message="the slow script has finished")
    wait_until(lambda: not conn_ids(script_admin, f"{ns}-pipe"), message="connection dropped")
    assert INCR.run_pipelined_direct(plain, direct, [INCR.packed([key], [1])]) == [6]


def test_publish_batch_sent_directly_after_a_script_flush_writes_each_event_once(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    client = script_server.client()
    bus = EventBus(client, namespace=ns)
    assert bus.writer._direct is not None  # the path under test
    events = [Event(type="user.signed_up", data={"i": i}) for i in range(45)]
    ids = bus.publish_batch(events[:25], chunk_size=10)  # NOSCRIPT on all three chunks
    assert script_admin.script_exists(script("publish").sha)[0]
    script_admin.script_flush()
    ids += bus.publish_batch(events, chunk_size=10)[25:]  # 25 known, 20 new
    entries = script_admin.xrange(bus.keys.stream("user"))
    assert [sid.decode() for sid, _ in entries] == ids
    assert [f[b"id"].decode() for _, f in entries] == [e.id for e in events]
    assert bus.store.load(events[30].id) == events[30]
    bus.close()
