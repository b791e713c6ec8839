"""The script runner: EVALSHA with its NOSCRIPT fallback, sync, asyncio, pipelined and
sent straight on a pool connection (``run_direct``).

Every test starts from an empty script cache (``SCRIPT FLUSH``) on fakeredis and on a
redis-server of its own (flushing the shared server's cache would only slow the others).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio
import redis.exceptions as rex
from support.scripts import conn_ids, slow_incr
from support.servers import RedisServer
from support.waiting import wait_until

from chi_redis.backend.scripts import DirectConnection, Script, direct_connection, script

INCR = Script(
    "test_incr",
    "if ARGV[1] == 'fail' then return redis.error_reply('boom') end\n"
    "return redis.call('INCRBY', KEYS[1], ARGV[1])",
)


class Backend:
    """Sync and asyncio clients of one server (fakeredis or a redis-server of our own)."""

    def __init__(self, fake: fakeredis.FakeServer | None, real: RedisServer | None) -> None:
        self.fake, self.real = fake, real

    def client(self) -> redis.Redis:
        if self.fake is not None:
            return fakeredis.FakeRedis(server=self.fake, version=(7, 0))
        assert self.real is not None
        return self.real.client()

    def aclient(self) -> redis.asyncio.Redis:
        if self.fake is not None:
            return fakeredis.FakeAsyncRedis(server=self.fake, version=(7, 0))
        assert self.real is not None
        return redis.asyncio.Redis(host="127.0.0.1", port=self.real.port, socket_timeout=10)

    def run(self, fn: Callable[[redis.asyncio.Redis], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            client = self.aclient()
            try:
                return await fn(client)
            finally:
                await client.aclose()

        return asyncio.run(main())


@pytest.fixture(scope="module", params=["fake", pytest.param("real", marks=pytest.mark.redis)])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    if request.param == "fake":
        yield Backend(fakeredis.FakeServer(version=(7, 0)), None)
        return
    server = RedisServer(Path(tmp_path_factory.mktemp("scripts"))).start()
    try:
        yield Backend(None, server)
    finally:
        server.stop()


@pytest.fixture
def client(backend: Backend, ns: str) -> Iterator[redis.Redis]:
    """A sync client whose server has forgotten every script."""
    c = backend.client()
    c.script_flush()
    yield c
    c.delete(f"{ns}:n")
    c.close()


def cached(client: redis.Redis, s: Script) -> bool:
    return bool(client.script_exists(s.sha)[0])


def test_run_falls_back_to_eval_after_script_flush(client: redis.Redis, ns: str) -> None:
    key = f"{ns}:n"
    assert not cached(client, INCR)
    assert INCR.run(client, [key], [2]) == 2
    assert cached(client, INCR)  # EVAL cached it: the next call is an EVALSHA
    assert INCR.run(client, [key], [3]) == 5
    client.script_flush()
    assert INCR.run(client, [key], [1]) == 6
    assert int(client.get(key) or 0) == 6  # each call ran exactly once


def test_run_raises_script_errors(client: redis.Redis, ns: str) -> None:
    with pytest.raises(rex.ResponseError, match="boom"):
        INCR.run(client, [f"{ns}:n"], ["fail"])


def test_arun_falls_back_after_script_flush(
    backend: Backend, client: redis.Redis, ns: str
) -> None:
    key = f"{ns}:n"

    async def twice(aclient: redis.asyncio.Redis) -> list[Any]:
        first = await INCR.arun(aclient, [key], [2])
        await aclient.script_flush()
        return [first, await INCR.arun(aclient, [key], [3])]

    assert backend.run(twice) == [2, 5]
    assert cached(client, INCR)
    assert int(client.get(key) or 0) == 5


def test_run_pipelined_loads_the_script_and_runs_each_call_once(
    client: redis.Redis, ns: str
) -> None:
    key = f"{ns}:n"
    calls = [([key], [n]) for n in (1, 2, 3)]
    assert INCR.run_pipelined(client, calls) == [1, 3, 6]
    assert cached(client, INCR)
    assert INCR.run_pipelined(client, calls) == [7, 9, 12]  # cached: one round trip
    client.script_flush()
    assert INCR.run_pipelined(client, calls) == [13, 15, 18]
    assert int(client.get(key) or 0) == 18
    assert INCR.run_pipelined(client, []) == []


def test_run_pipelined_raises_the_first_error_after_the_other_calls_ran(
    client: redis.Redis, ns: str
) -> None:
    key = f"{ns}:n"
    calls: list[tuple[list[str], list[Any]]] = [([key], [1]), ([key], ["fail"]), ([key], [2])]
    with pytest.raises(rex.ResponseError, match="boom"):
        INCR.run_pipelined(client, calls)  # after SCRIPT FLUSH: reloaded, then run
    assert int(client.get(key) or 0) == 3
    with pytest.raises(rex.ResponseError, match="boom"):
        INCR.run_pipelined(client, calls)  # cached
    assert int(client.get(key) or 0) == 6


def test_arun_pipelined_after_script_flush(
    backend: Backend, client: redis.Redis, ns: str
) -> None:
    key = f"{ns}:n"
    calls = [([key], [n]) for n in (1, 2, 3)]

    async def rounds(aclient: redis.asyncio.Redis) -> list[list[Any]]:
        first = await INCR.arun_pipelined(aclient, calls)
        await aclient.script_flush()
        second = await INCR.arun_pipelined(aclient, calls)
        with pytest.raises(rex.ResponseError, match="boom"):
            await INCR.arun_pipelined(aclient, [([key], ["fail"]), ([key], [4])])
        return [first, second]

    assert backend.run(rounds) == [[1, 3, 6], [7, 9, 12]]
    assert int(client.get(key) or 0) == 16


def test_packaged_scripts_load_once_and_match_their_sha(client: redis.Redis) -> None:
    publish = script("publish")
    assert publish is script("publish")  # loaded once per process
    assert publish.sha == publish.sha.lower() and len(publish.sha) == 40
    assert client.script_load(publish.source) == publish.sha


# run_direct: the single publish's call, past redis-py's command layers -------------------
SLOW_INCR = slow_incr("test_slow_incr")


def plain_client(script_server: RedisServer, **options: Any) -> redis.Redis:
    return script_server.client(**options)


@pytest.mark.redis
def test_direct_connection_only_for_a_plain_pooled_bytes_client(
    script_server: RedisServer,
) -> None:
    assert direct_connection(fakeredis.FakeRedis(server=fakeredis.FakeServer())) is None
    plain = plain_client(script_server)
    direct = direct_connection(plain)
    assert direct is not None and direct.pool is plain.connection_pool
    assert direct_connection(plain_client(script_server, decode_responses=True)) is None
    assert direct_connection(plain_client(script_server, single_connection_client=True)) is None
    small = redis.ConnectionPool(host="127.0.0.1", port=script_server.port, max_connections=8)
    assert direct_connection(redis.Redis(connection_pool=small)) is None
    blocking = redis.BlockingConnectionPool(host="127.0.0.1", port=script_server.port)
    assert direct_connection(redis.Redis(connection_pool=blocking)) is None


@pytest.mark.redis
def test_run_direct_falls_back_to_eval_and_keeps_its_connection(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    plain = plain_client(script_server, client_name=f"{ns}-direct")
    direct, key = direct_connection(plain), f"{ns}:n".encode()
    assert direct is not None and not cached(script_admin, INCR)
    assert INCR.run_direct(plain, direct, [key], [b"2"]) == 2  # NOSCRIPT, then EVAL
    assert cached(script_admin, INCR)
    kept = conn_ids(script_admin, f"{ns}-direct")
    assert INCR.run_direct(plain, direct, [key], [b"3"]) == 5
    with pytest.raises(rex.ResponseError, match="boom"):
        INCR.run_direct(plain, direct, [key], [b"fail"])
    script_admin.script_flush()
    assert INCR.run_direct(plain, direct, [key], [b"1"]) == 6
    assert int(script_admin.get(key) or 0) == 6  # each call ran exactly once
    assert conn_ids(script_admin, f"{ns}-direct") == kept  # no connection was replaced


@pytest.mark.redis
def test_run_direct_drops_a_connection_whose_reply_timed_out(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    """A reply read too late must never answer the next call: the connection goes."""
    plain = plain_client(script_server, socket_timeout=0.2, client_name=f"{ns}-direct")
    direct, key = direct_connection(plain), f"{ns}:n".encode()
    assert direct is not None
    script_admin.script_load(SLOW_INCR.source)
    with pytest.raises(rex.TimeoutError):
        SLOW_INCR.run_direct(plain, direct, [key], [b"5"])
    wait_until(lambda: script_admin.ping(), message="the slow script has finished")
    wait_until(lambda: not conn_ids(script_admin, f"{ns}-direct"), message="connection dropped")
    assert INCR.run_direct(plain, direct, [key], [b"1"]) == 6  # not the slow call's 5


@pytest.mark.redis
def test_run_direct_reconnects_the_kept_connection_after_the_server_closed_it(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    plain = plain_client(script_server, client_name=f"{ns}-direct")
    direct, key = direct_connection(plain), f"{ns}:n".encode()
    assert direct is not None
    script_admin.script_load(INCR.source)
    assert INCR.run_direct(plain, direct, [key], [b"1"]) == 1
    (old,) = conn_ids(script_admin, f"{ns}-direct")
    script_admin.client_kill_filter(_id=old)
    direct.IDLE_CHECK_S = 0.0  # idle long enough to be checked before use: no error
    assert INCR.run_direct(plain, direct, [key], [b"1"]) == 2
    (new,) = conn_ids(script_admin, f"{ns}-direct")
    assert new != old
    script_admin.client_kill_filter(_id=new)
    direct.IDLE_CHECK_S = 3600.0  # used just now: not checked, the call sees the close...
    with pytest.raises(rex.ConnectionError):
        INCR.run_direct(plain, direct, [key], [b"1"])
    assert INCR.run_direct(plain, direct, [key], [b"1"]) == 3  # ...and the next reconnects


@pytest.mark.redis
def test_run_direct_from_threads_at_once_each_reply_to_its_own_call(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    plain = plain_client(script_server)
    direct, key = direct_connection(plain), f"{ns}:n".encode()
    assert direct is not None
    script_admin.script_load(INCR.source)
    replies: list[int] = []

    def calls() -> None:
        for _ in range(300):
            replies.append(INCR.run_direct(plain, direct, [key], [b"1"]))

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(replies) == list(range(1, 1201))  # no reply crossed to another call


@pytest.mark.redis
def test_the_kept_connection_goes_back_to_the_pool_when_dropped(
    script_server: RedisServer, ns: str
) -> None:
    plain = plain_client(script_server)
    pool = redis.BlockingConnectionPool(port=plain.connection_pool.connection_kwargs["port"],
                                        max_connections=1, timeout=0.5)
    one = redis.Redis(connection_pool=pool)
    assert direct_connection(one) is None  # it would starve such a pool: not chosen
    direct = DirectConnection(pool)  # made anyway, to watch the connection come back
    assert INCR.run_direct(one, direct, [f"{ns}:n".encode()], [b"1"]) == 1
    with pytest.raises(rex.ConnectionError):  # the only connection is kept
        one.ping()
    del direct
    gc.collect()
    assert one.ping()
    one.delete(f"{ns}:n")
    one.close()


@pytest.mark.redis
def test_a_forked_child_never_uses_the_parents_kept_connection(
    script_server: RedisServer, script_admin: redis.Redis, ns: str
) -> None:
    plain = plain_client(script_server)
    direct, key = direct_connection(plain), f"{ns}:n".encode()
    assert direct is not None
    script_admin.script_load(INCR.source)
    assert INCR.run_direct(plain, direct, [key], [b"1"]) == 1  # the parent's kept connection
    pid = os.fork()
    if pid == 0:  # the child: its calls must get replies of its own, in order
        code = 1
        try:
            got = [INCR.run_direct(plain, direct, [key], [b"1000"]) for _ in range(50)]
            code = 0 if [g // 1000 for g in got] == list(range(1, 51)) else 2
        finally:
            os._exit(code)
    parent = [INCR.run_direct(plain, direct, [key], [b"1"]) for _ in range(50)]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The key is 1 + (the parent's increments of 1) + 1000 * (the child's increments): each
    # reply shows whose call it answers (the child's i-th: i + 1 thousands, above).
    assert [r % 1000 for r in parent] == [i + 2 for i in range(50)]
    assert int(script_admin.get(key) or 0) == 1 + 50 + 50 * 1000
