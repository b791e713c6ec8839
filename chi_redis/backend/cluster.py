"""Redis Cluster: the client :func:`~chi_redis.backend.connection.connect` returns for a
cluster node, and what the layers above need to know about it (docs/design.md §3.4).

Every multi-key script of chi-redis touches the keys of one topic (hash tag ``{topic}``)
or of one subscription (``{sub}``) only, so each runs on the master of that slot.  What
spans topics (a consumer's read of several streams, the subscription's dead letter of a
topic entry) is split here by slot.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from redis.cluster import RedisCluster
from redis.crc import key_slot

__all__ = [
    "ClusterFlatView", "async_cluster_client_of", "cluster_client", "cluster_client_of",
    "group_by_slot", "is_cluster", "refuse_on_cluster", "same_slot", "slot", "split_dead_letter",
]


def cluster_client(url: str, options: dict[str, Any]) -> RedisCluster:
    """A ``RedisCluster`` for the cluster ``url``'s node belongs to.

    ``options`` are :func:`~chi_redis.backend.connection.connect`'s (its retry policy of no
    hidden retries included: chi-redis retries itself where it is safe).
    """
    from .connection import _invalid_url

    opts = dict(options)
    opts.pop("db", None)
    try:
        return RedisCluster.from_url(url, **opts)
    except ValueError as exc:
        raise _invalid_url(url, exc) from None


def cluster_client_of(client: Any) -> RedisCluster:
    """A ``RedisCluster`` reaching the cluster of the node a plain ``client`` is set up for,
    with the same connection settings."""
    kw = dict(client.connection_pool.connection_kwargs)
    host, port = kw.pop("host"), kw.pop("port")
    for name in ("db", "connection_class", "redis_connect_func"):
        kw.pop(name, None)
    if "SSL" in client.connection_pool.connection_class.__name__:
        kw["ssl"] = True
    return RedisCluster(host=host, port=port, **kw)


def async_cluster_client_of(client: Any) -> Any:
    """:func:`cluster_client_of` for a plain ``redis.asyncio`` client: a
    ``redis.asyncio.cluster.RedisCluster`` with the same connection settings (its retry
    policy of no hidden retries included)."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    kw = dict(client.connection_pool.connection_kwargs)
    host, port = kw.pop("host"), kw.pop("port")
    if "SSL" in client.connection_pool.connection_class.__name__:
        kw["ssl"] = True
    # Only what the cluster client takes (a pool keeps internals of its own in there).
    accepted = inspect.signature(AsyncRedisCluster.__init__).parameters
    kw = {k: v for k, v in kw.items() if k in accepted and k != "db"}
    return AsyncRedisCluster(host=host, port=port, **kw)


def refuse_on_cluster(client: Any, what: str) -> None:
    """Raise :class:`~chi_redis.ConfigError` when ``client`` is a cluster client: ``what``
    is not supported on Redis Cluster yet (docs/design.md §3.4)."""
    if is_cluster(client):
        from ..errors import ConfigError

        raise ConfigError(f"{what} is not supported on Redis Cluster yet (docs/design.md"
                          " §3.4): use a single Redis node for it")


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a cluster client (sync or asyncio)."""
    if isinstance(client, RedisCluster):
        return True
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    return isinstance(client, AsyncRedisCluster)


def slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (its hash tag's, when it has one)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def same_slot(*keys: str | bytes) -> bool:
    """Whether all ``keys`` hash to one slot."""
    return len({slot(k) for k in keys}) <= 1


def group_by_slot(keys: Iterable[str]) -> list[list[str]]:
    """``keys`` grouped by slot, each group in the given order, groups by first key."""
    groups: dict[int, list[str]] = {}
    for k in keys:
        groups.setdefault(slot(k), []).append(k)
    return list(groups.values())


def _identity(response: Any, **options: Any) -> Any:
    return response


class ClusterFlatView:
    """:func:`~chi_redis.store.eventtime.flat_view` on a cluster: XRANGE and ZRANGEBYSCORE
    replies as Redis sent them, read from the master of the key's slot.

    Every call (and every pipeline) names keys of one topic, so of one slot: it is sent to
    that slot's master on a plain client of the node's pool with flat reply callbacks.
    """

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._views: dict[str, Any] = {}

    def view(self, key: str | bytes) -> Any:
        """A flat-reply client of the master that serves ``key``."""
        import redis

        node = self.client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        view = self._views.get(node.name)
        if view is None or view.connection_pool is not node.redis_connection.connection_pool:
            view = redis.Redis(connection_pool=node.redis_connection.connection_pool)
            view.set_response_callback("XRANGE", _identity)
            view.set_response_callback("ZRANGEBYSCORE", _identity)
            self._views[node.name] = view
        return view

    def xrange(self, stream: str, *args: Any, **kwargs: Any) -> Any:
        return self.view(stream).xrange(stream, *args, **kwargs)

    def execute_command(self, name: str, key: str, *args: Any) -> Any:
        return self.view(key).execute_command(name, key, *args)

    def pipeline(self, transaction: bool = False) -> _SlotPipeline:
        return _SlotPipeline(self, transaction)


class _SlotPipeline:
    """Commands on keys of one slot, queued and sent to its master in one round trip."""

    def __init__(self, flat: ClusterFlatView, transaction: bool) -> None:
        self.flat = flat
        self.transaction = transaction
        self.queued: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def xrange(self, *args: Any, **kwargs: Any) -> _SlotPipeline:
        self.queued.append(("xrange", args, kwargs))
        return self

    def execute_command(self, *args: Any, **kwargs: Any) -> _SlotPipeline:
        self.queued.append(("execute_command", args[1:], {"_name": args[0], **kwargs}))
        return self

    def execute(self) -> list[Any]:
        if not self.queued:
            return []
        first = self.queued[0][1][0]
        pipe = self.flat.view(first).pipeline(transaction=self.transaction)
        for method, args, kwargs in self.queued:
            if method == "execute_command":
                kw = dict(kwargs)
                pipe.execute_command(kw.pop("_name"), *args, **kw)
            else:
                getattr(pipe, method)(*args, **kwargs)
        return pipe.execute()  # type: ignore[no-any-return]


def split_dead_letter(client: Any, source: str, dlq: str, argv: list[Any]) -> Any:
    """``lua/deadletter.lua`` for a source stream and a dead-letter stream in different
    slots (a topic entry of a subscription, on a cluster): the same steps, in three calls.

    Not atomic: a process that dies between the dead letter's XADD and the XACK leaves the
    entry pending, and its next failure writes a second dead letter (at least once, where
    one slot gives exactly once).  Returns what the script returns.
    """
    import redis.exceptions as rex

    group, sid, xdel, maxlen, *fields = argv
    try:
        pending = client.xpending_range(source, group, sid, sid, 1)
    except rex.ResponseError:  # NOGROUP: Redis lost the group, the letter is the only copy
        pending = None
    if pending is not None and not pending:
        return 0
    written = client.execute_command("XADD", dlq, "MAXLEN", "~", maxlen, "*", *fields)
    client.xack(source, group, sid)
    if xdel == "1":
        client.xdel(source, sid)
    return written
