"""The registry of partitioned topics (docs/design.md §15): hash ``chi:partitions``,
topic → :class:`~chi_redis.events.partitioning.Declaration` as JSON.

Every process reads the same declaration, so every publisher routes a key to the same
partition and every worker reads the same partitions.  A process caches what it read for
:data:`CACHE_S` (a topic known *not* to be partitioned, when asked by :meth:`get`, for
:data:`NEGATIVE_CACHE_S`); a publisher reads it with its topic registration
(:meth:`learn`), so routing costs one dict lookup per event and no round trip.
Declarations a process was configured with (``events.topics`` in the YAML file) are
checked against Redis at their first use and written there when missing: a process
whose configuration disagrees with Redis refuses to publish to (or consume) the topic
rather than scatter its keys over other partitions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from ..errors import ConfigError
from ..events.partitioning import Declaration, check_topic
from .keys import Keys

__all__ = ["CACHE_S", "NEGATIVE_CACHE_S", "PartitionRegistry"]

#: How long a declaration read from Redis is trusted before it is read again.
CACHE_S = 60.0
#: How long "not partitioned" is trusted: short, since a topic may be declared later
#: (declare before the first publish: docs/design.md §15.1).
NEGATIVE_CACHE_S = 2.0


class PartitionRegistry:
    """Declarations of partitioned topics under one namespace, cached per process.

    ``client`` is a callable giving the current client (the bus may switch to a cluster
    client); ``call`` runs a Redis call under the bus's retry policy and error mapping.
    """

    def __init__(self, keys: Keys, client: Callable[[], Any],
                 call: Callable[[Callable[[], Any]], Any]) -> None:
        self.keys = keys
        self._client = client
        self._call = call
        #: Declarations this process was configured with (checked at first use).
        self.configured: dict[str, Declaration] = {}
        self._cache: dict[str, tuple[Declaration | None, float]] = {}
        self._lock = threading.Lock()

    def configure(self, topic: str, partitions: int, key: str) -> None:
        """Expect ``topic`` to be declared so (from the configuration file; no I/O now)."""
        self.configured[check_topic(topic)] = Declaration(partitions, key)

    def get(self, topic: str) -> Declaration | None:
        """``topic``'s declaration (None: not partitioned); cached.  Raises ConfigError when
        Redis and this process's configuration disagree."""
        hit = self._cache.get(topic)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return self._load(topic)

    def cached(self, topic: str) -> Declaration | None:
        """``topic``'s declaration as cached (None when not partitioned *or* not known):
        no I/O, for the publishers' hot path, whose topic registration fills the cache
        (:meth:`learn`) before a topic's first event is written."""
        hit = self._cache.get(topic)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def learn(self, found: dict[str, bytes | None]) -> list[str]:
        """Cache what a publisher read (topic → raw declaration or None, ``HMGET``); the
        topics of ``found`` that are partitioned.  Checks them as :meth:`get` does."""
        return [t for t, raw in found.items() if self._check(t, raw) is not None]

    def _load(self, topic: str) -> Declaration | None:
        raw = self._call(lambda: self._client().hget(self.keys.partitions(), topic))
        return self._check(topic, raw)

    def _check(self, topic: str, raw: bytes | None) -> Declaration | None:
        found = Declaration.decode(raw) if raw is not None else None
        wanted = self.configured.get(topic)
        if wanted is not None and found is None:
            found = self.declare(topic, wanted.partitions, wanted.key)
        elif wanted is not None and found != wanted:
            raise ConfigError(_disagree(topic, found, wanted), field="partitions")
        ttl = CACHE_S if found is not None else NEGATIVE_CACHE_S
        with self._lock:
            self._cache[topic] = (found, time.monotonic() + ttl)
        return found

    def declare(self, topic: str, partitions: int, key: str, *,
                resize: bool = False) -> Declaration:
        """Declare ``topic`` partitioned (idempotent for the same declaration).

        Refused (ConfigError) when the topic already holds unpartitioned events, and when it
        is declared otherwise, unless ``resize``: then only while every partition is empty
        (a key's events must not be split between two partitions)."""
        decl = Declaration(partitions, key)
        check_topic(topic)
        client, name = self._client(), self.keys.partitions()
        raw = self._call(lambda: client.hget(name, topic))
        old = Declaration.decode(raw) if raw is not None else None
        if old == decl:
            self._remember(topic, decl)
            return decl
        if old is not None and not resize:
            raise ConfigError(_disagree(topic, old, decl), field="partitions")
        streams = [self.keys.stream(p) for p in (old.parts(topic) if old else [topic])]
        held = 0
        for stream in streams:
            held += int(self._call(partial(client.xlen, stream)))
        if held:
            what = "its partitions hold" if old else "it holds"
            raise ConfigError(
                f"cannot {'resize' if old else 'partition'} topic {topic!r}: {what} {held}"
                " events (a key's events would be split between partitions; partition a new"
                " topic, or trim this one first)", field="partitions")
        if old is None:
            if not self._call(lambda: client.hsetnx(name, topic, decl.encode())):
                return self.declare(topic, partitions, key, resize=resize)  # raced: compare
        else:
            self._call(lambda: client.hset(name, topic, decl.encode()))
        self._remember(topic, decl)
        return decl

    def _remember(self, topic: str, decl: Declaration | None) -> None:
        with self._lock:
            self._cache[topic] = (decl, time.monotonic() + CACHE_S)

    def all(self) -> dict[str, Declaration]:
        """Every declaration in Redis (uncached: for readers, stats, the CLI)."""
        raw = self._call(lambda: self._client().hgetall(self.keys.partitions()))
        return {(k.decode() if isinstance(k, bytes) else k): Declaration.decode(v)
                for k, v in raw.items()}

    def names(self, topic: str) -> list[str]:
        """The names ``topic``'s events are filed under: the topic itself (events written
        before it was declared, or by a process that did not know yet) and, when it is
        partitioned, each partition (``orders/0`` …)."""
        decl = self.get(topic)
        return [topic, *decl.parts(topic)] if decl is not None else [topic]


def _disagree(topic: str, old: Declaration | None, new: Declaration) -> str:
    have = (f"{old.partitions} partitions by {old.key!r}" if old is not None
            else "not partitioned")
    return (f"topic {topic!r} is declared with {have} in Redis, not {new.partitions}"
            f" partitions by {new.key!r}; changing the partitioning is explicit"
            " (declare_topic(..., resize=True), allowed while the topic is empty)")
