"""Lua scripts, loaded from ``chi_redis/backend/lua`` once and called by SHA.

:class:`Script` is the one place that knows how to call a script: EVALSHA first, and when
the server answers NOSCRIPT (first use, a restart, a failover, ``SCRIPT FLUSH``) the
fallback, for plain calls, asyncio calls and pipelines alike.

redis-py's own ``Script`` objects (``client.register_script``) are not used: each is bound
to the client that registered it, while these are process-wide and serve the sync, asyncio
and raw-reply clients alike; and in a pipeline redis-py sends ``SCRIPT EXISTS`` before
every ``execute()``, one more round trip on every batch the publish path sends.  Here a
pipeline costs one round trip, and a second only after the server lost the script.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis.exceptions as rex

__all__ = ["Call", "Script", "bulk", "script"]

#: KEYS and ARGV of one script call.
Call = tuple[Sequence[Any], Sequence[Any]]


class Script:
    """A Lua script's source and SHA1, and the calls that run it (EVALSHA with fallback)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

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
        """
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            for attempt in (1, 2):
                head = [b"EVALSHA", self.sha.encode(), len(keys), *keys, *argv]
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


@cache
def script(name: str) -> Script:
    """The script ``chi_redis/backend/lua/<name>.lua``."""
    source = resources.files("chi_redis.backend").joinpath("lua", f"{name}.lua").read_text()
    return Script(name, source)
