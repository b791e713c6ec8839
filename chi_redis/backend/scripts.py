"""Lua scripts, loaded from ``chi_redis/backend/lua`` once and called by SHA.

:class:`Script` is the one place that knows how to call a script: EVALSHA first, and when
the server answers NOSCRIPT (first use, a restart, a failover, ``SCRIPT FLUSH``) the
fallback, for plain calls, asyncio calls and pipelines alike.

redis-py's own ``Script`` objects (``client.register_script``) are not used: each is bound
to the client that registered it, while these are process-wide and serve the sync, asyncio
and raw-reply clients alike; and in a pipeline redis-py sends ``SCRIPT EXISTS`` before
every ``execute()``, one more round trip on every batch the publish path sends.  Here a
pipeline costs one round trip, and a second only after the server lost the script.

:meth:`Script.run_direct` is the single publish's call: it sends the packed EVALSHA on a
connection of the client's pool that a :class:`DirectConnection` keeps checked out, and
reads the reply itself, skipping redis-py's command layers (per-argument encoding, its own
retry wrapper, reply callbacks, the pool's checkout and release): about half of the
client's CPU per call.  Only for a plain ``redis.Redis`` on a connection pool
(:func:`direct_connection`); anything else goes through :meth:`Script.run`.
:meth:`Script.run_pipelined_direct` is ``publish_batch``'s twin of it: the chunks of a round
trip, each packed by :meth:`Script.packed`, written at once on that connection.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import hiredis
import redis
import redis.exceptions as rex

#: The smallest pool :func:`direct_connection` keeps a connection of (one connection held
#: for good by each writer must not starve a pool sized for the application's threads).
_MIN_POOL = 64
_pack: Any = hiredis.pack_command  # (its stubs type the argument as a 1-tuple)

__all__ = ["Call", "DirectConnection", "Script", "bulk", "direct_connection", "script"]

#: KEYS and ARGV of one script call.
Call = tuple[Sequence[Any], Sequence[Any]]


class Script:
    """A Lua script's source and SHA1, and the calls that run it (EVALSHA with fallback)."""

    __slots__ = ("name", "sha", "sha_bytes", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        # EVALSHA names a script by its SHA1 (https://redis.io/docs/latest/commands/evalsha/):
        # an identifier, not a security measure.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self.sha_bytes = self.sha.encode()

    def __repr__(self) -> str:
        return f"Script({self.name!r})"

    def run(self, client: Any, keys: Sequence[Any], argv: Sequence[Any]) -> Any:
        """Run the script on a redis-py client and return its reply.

        EVALSHA; EVAL when the server does not know the script yet (EVAL also caches it,
        so the next call is an EVALSHA again).
        """
        try:
            return client.evalsha(self.sha, len(keys), *keys, *argv)
        except rex.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *argv)

    def run_framed(
        self, client: Any, keys: Sequence[Any], argv: Sequence[Any], framed: bytes, count: int
    ) -> Any:
        """:meth:`run` with ``count`` more arguments after ``argv``, given already framed as
        the protocol's bulk strings (:func:`bulk`): many arguments cost the client one
        ``bytes``, not one redis-py encoding step each.

        One connection of ``client``'s pool, used as redis-py uses one (dropped after an
        error).  NOSCRIPT means nothing ran: the script is loaded and the call sent again.
        On a cluster, a connection of the master serving ``keys[0]`` (the keys of one call
        share a slot).
        """
        if not hasattr(client, "connection_pool"):  # RedisCluster: no pool of its own
            client = client.get_node_from_key(keys[0]).redis_connection
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            for attempt in (1, 2):
                head = [b"EVALSHA", self.sha_bytes, len(keys), *keys, *argv]
                conn.send_packed_command(
                    [b"*%d\r\n" % (len(head) + count), bulk(map(_arg, head)), framed]
                )
                try:
                    return conn.read_response()
                except rex.NoScriptError:
                    if attempt == 2:
                        raise
                    client.script_load(self.source)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def run_direct(
        self, client: Any, direct: DirectConnection, keys: Sequence[bytes],
        argv: Sequence[bytes],
    ) -> Any:
        """:meth:`run` with every key and argument already bytes, sent on a connection of
        ``direct`` (``direct_connection(client)``) without redis-py's command layers.

        As redis-py does, a connection that failed in any other way than an error reply is
        disconnected (the next use reconnects); errors are redis-py's, so callers retry and
        map them as they do :meth:`run`'s.
        """
        conn, held = direct.acquire()
        try:
            args = (b"EVALSHA", self.sha_bytes, b"%d" % len(keys), *keys, *argv)
            conn.send_packed_command([_pack(args)])
            return conn.read_response()
        except rex.NoScriptError:
            pass  # the connection is fine: release it, then EVAL (below)
        except rex.ResponseError:
            raise
        except BaseException:
            conn.disconnect()
            raise
        finally:
            reconnect = getattr(conn, "should_reconnect", None)  # redis-py >= 8
            if reconnect is not None and reconnect():  # a maintenance notification
                conn.disconnect()
            direct.release(conn, held)
        return client.eval(self.source, len(keys), *keys, *argv)

    def packed(self, keys: Sequence[Any], argv: Sequence[Any]) -> bytes:
        """One call's EVALSHA as the protocol's bytes, for :meth:`run_pipelined_direct`;
        keys and arguments may be bytes, str or int (framed by hiredis, in C)."""
        command: bytes = _pack((b"EVALSHA", self.sha_bytes, len(keys), *keys, *argv))
        return command

    def run_pipelined_direct(
        self, client: Any, direct: DirectConnection, packed: Sequence[bytes]
    ) -> list[Any]:
        """:meth:`run_pipelined` for calls packed by :meth:`packed`: all written at once on
        a connection of ``direct`` (``direct_connection(client)``), then one reply read per
        call, without redis-py's pipeline (its per-argument encoding, command stack and
        reply callbacks).

        Calls refused with NOSCRIPT did not run: the script is loaded on the same connection
        and only those are sent again, so no call runs twice.  The first other error reply
        is raised after every reply was read.  A connection that failed in any other way
        (a timeout, a reset) is disconnected and the error raised as redis-py's, for the
        caller's retry policy: the calls may or may not have run.
        """
        conn, held = direct.acquire()
        try:
            results = _exchange(conn, packed)
            missing = _missing(results)
            if missing:
                conn.send_packed_command([_pack((b"SCRIPT", b"LOAD", self.source))])
                conn.read_response()
                _splice(results, missing, _exchange(conn, [packed[i] for i in missing]))
        except BaseException:
            conn.disconnect()
            raise
        finally:
            reconnect = getattr(conn, "should_reconnect", None)  # redis-py >= 8
            if reconnect is not None and reconnect():
                conn.disconnect()
            direct.release(conn, held)
        return _raise_first_error(results)

    async def arun(self, client: Any, keys: Sequence[Any], argv: Sequence[Any]) -> Any:
        """:meth:`run` on a ``redis.asyncio`` client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *argv)
        except rex.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *argv)

    def run_pipelined(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        """Run the script once per call in one non-transactional pipeline; their replies.

        Calls the server refused with NOSCRIPT did not run: the script is loaded and only
        those are sent again, so no call runs twice.  The first other error is raised
        (after the pipeline ran: the calls before and after it did run).
        """
        results = self._queue(client.pipeline(transaction=False), calls).execute(
            raise_on_error=False
        )
        missing = _missing(results)
        if missing:
            client.script_load(self.source)
            pipe = self._queue(client.pipeline(transaction=False), [calls[i] for i in missing])
            _splice(results, missing, pipe.execute(raise_on_error=False))
        return _raise_first_error(results)

    async def arun_pipelined(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        """:meth:`run_pipelined` on a ``redis.asyncio`` client."""
        results = await self._queue(client.pipeline(transaction=False), calls).execute(
            raise_on_error=False
        )
        missing = _missing(results)
        if missing:
            await client.script_load(self.source)
            pipe = self._queue(client.pipeline(transaction=False), [calls[i] for i in missing])
            _splice(results, missing, await pipe.execute(raise_on_error=False))
        return _raise_first_error(results)

    def _queue(self, pipe: Any, calls: Sequence[Call]) -> Any:
        for keys, argv in calls:
            pipe.evalsha(self.sha, len(keys), *keys, *argv)
        return pipe


def _exchange(conn: Any, packed: Sequence[bytes]) -> list[Any]:
    """Write ``packed`` commands on ``conn``, then read one reply each (error replies as
    exceptions in the list, so every reply is read and the connection stays in step)."""
    conn.send_packed_command(packed)
    results: list[Any] = []
    read = conn.read_response
    for _ in range(len(packed)):
        try:
            results.append(read())
        except rex.ResponseError as exc:
            results.append(exc)
    return results


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else str(value)).encode()


def bulk(values: Iterable[bytes]) -> bytes:
    """``values`` framed as the protocol's bulk strings, one after the other."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(v), v) for v in values])


def _missing(results: Sequence[Any]) -> list[int]:
    return [i for i, r in enumerate(results) if isinstance(r, rex.NoScriptError)]


def _splice(results: list[Any], at: list[int], again: Sequence[Any]) -> None:
    for i, r in zip(at, again, strict=True):
        results[i] = r


def _raise_first_error(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


class DirectConnection:
    """One connection of a client's pool, kept checked out for :meth:`Script.run_direct`
    calls, one thread at a time; a call that finds it busy (another thread's call) takes a
    connection from the pool and gives it back, as redis-py does.

    What the pool checks on every checkout is checked here only after ``IDLE_CHECK_S`` of
    disuse: whether the server closed the connection or left data on it (then it is
    reconnected).  A connection made before a fork is never used after it.  The client's
    ``close()`` disconnects it like any connection in use; the next call reconnects.  It goes
    back to the pool when this object is dropped.
    """

    #: Idle seconds after which the kept connection is checked before use.
    IDLE_CHECK_S = 1.0

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._kept: list[Any] = [None]  # shared with the finalizer
        self._used = 0.0
        weakref.finalize(self, _give_back, pool, self._kept)

    def acquire(self) -> tuple[Any, bool]:
        """A connection, and whether it is the kept one (for :meth:`release`)."""
        if not self._lock.acquire(blocking=False):
            return self.pool.get_connection(), False
        try:
            conn = self._kept[0]
            now = time.monotonic()
            if conn is None or conn.pid != os.getpid():
                conn = self._kept[0] = self.pool.get_connection()
            elif now - self._used > self.IDLE_CHECK_S and _stale(conn):
                conn.disconnect()  # closed by the server, or stray data: start afresh
            self._used = now
            return conn, True
        except BaseException:
            self._lock.release()
            raise

    def release(self, conn: Any, kept: bool) -> None:
        if kept:
            self._lock.release()
        else:
            self.pool.release(conn)


def _stale(conn: Any) -> bool:
    """Whether the server closed ``conn`` or left data on it (the pool's checkout test)."""
    try:
        return bool(conn.can_read())
    except (rex.ConnectionError, rex.TimeoutError, OSError):
        return True


def _give_back(pool: Any, kept: list[Any]) -> None:
    if kept[0] is not None:
        pool.release(kept[0])


def direct_connection(client: Any) -> DirectConnection | None:
    """What :meth:`Script.run_direct` sends on for ``client``, or None to go through
    redis-py.

    Only a plain ``redis.Redis`` (not a subclass that may route or instrument commands)
    with no dedicated connection and its replies as bytes, on a plain ``ConnectionPool`` of
    at least ``_MIN_POOL`` connections (the default has 2**31): a single-connection client,
    a cluster or asyncio client, or a blocking or small pool, take the :meth:`Script.run`
    path.
    """
    if type(client) is not redis.Redis or client.connection is not None:
        return None
    if client.get_encoder().decode_responses:
        return None
    pool = client.connection_pool
    if type(pool) is not redis.ConnectionPool or pool.max_connections < _MIN_POOL:
        return None  # a blocking or small pool: keeping a connection would starve others
    return DirectConnection(pool)


@cache
def script(name: str) -> Script:
    """The script ``chi_redis/backend/lua/<name>.lua``."""
    source = resources.files("chi_redis.backend").joinpath("lua", f"{name}.lua").read_text()
    return Script(name, source)
