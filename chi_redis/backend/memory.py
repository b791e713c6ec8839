"""An in-process Redis for the embedded bus: fakeredis with Lua (through lupa).

One :class:`fakeredis.FakeServer` per embedded bus, so two embedded buses in one process
never see each other's keys; every client of that server (sync and asyncio, any thread)
shares its data.  fakeredis runs the same commands and the same Lua scripts as a Redis 7.0
server, and its blocking reads (``XREADGROUP BLOCK``) wake up when another thread writes,
so everything above this module runs unchanged.  fakeredis and lupa are the optional extra
``embedded`` (``pip install chi-redis[embedded]``), imported on first use only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ChiError

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "EMBEDDED_HOST", "embedded_async_client", "embedded_client", "is_embedded", "server_of",
]

#: The host name embedded clients carry, so URLs in messages say what they are.
EMBEDDED_HOST = "embedded"
#: The Redis version fakeredis emulates (streams, XAUTOCLAIM, functions of 7.0).
VERSION = (7, 0)


def _fakeredis() -> Any:
    """The fakeredis module, after checking Lua is there too; a ChiError if not."""
    try:
        fakeredis = importlib.import_module("fakeredis")
        importlib.import_module("lupa")
    except ImportError as exc:
        raise ChiError(
            f"the embedded bus needs the optional extra 'embedded' ({exc.name} is not"
            " installed): pip install 'chi-redis[embedded]'"
        ) from None
    return fakeredis


def embedded_client() -> redis.Redis:
    """A client of a new, empty in-process Redis server (its own ``FakeServer``)."""
    fakeredis = _fakeredis()
    server = fakeredis.FakeServer(version=VERSION)
    client: redis.Redis = fakeredis.FakeRedis(
        server=server, version=VERSION, host=EMBEDDED_HOST, port=0
    )
    return client


def server_of(client: Any) -> Any:
    """The ``FakeServer`` behind an embedded client (None for a client of a real server)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    server = kwargs.get("server")
    fakeredis = importlib.import_module("fakeredis") if server is not None else None
    return server if fakeredis is not None and isinstance(server, fakeredis.FakeServer) else None


def is_embedded(client: Any) -> bool:
    """Whether ``client`` talks to an in-process fakeredis server."""
    return server_of(client) is not None


def embedded_async_client(client: Any) -> redis.asyncio.Redis:
    """A ``redis.asyncio`` client of the same in-process server as the sync ``client``."""
    server = server_of(client)
    if server is None:
        raise ChiError("not an embedded client: it has no in-process server")
    fakeredis = _fakeredis()
    aclient: redis.asyncio.Redis = fakeredis.FakeAsyncRedis(
        server=server, version=VERSION, host=EMBEDDED_HOST, port=0
    )
    return aclient
