"""Who of a subscription's consumers owns which partition (docs/design.md §15.3).

Each consumer of a subscription that binds a partitioned topic runs a round of
``lua/partowner.lua`` every third of the lease: a heartbeat in the subscription's members
set (dead members drop out when theirs runs out), then it holds ``ceil(N / live members)``
of the topic's N partitions, each a lease key with a TTL: surplus leases released (never
one whose entry is in flight here), its own renewed, free ones taken up to the share.  A
consumer reads a partition only while its last round is younger than 80 % of the lease,
so one that stalled (or lost Redis) stops reading before another can take its partitions.

A partition newly held (or held by a consumer object just made) is *dirty*: entries of it
may still be pending, delivered to a consumer that died.  Before anything new is read,
those idle past the entry lease are claimed (XAUTOCLAIM), and while any other consumer
still holds one (its handler still running) nothing is read; then its own pending entries
are read back first (``XREADGROUP … 0``), one at a time, and only then new ones (``>``).
So a key's events run in publish order across a rebalance, at the price of the one that
was running when its owner died running again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.scripts import script
from ..events.partitioning import Declaration, topic_of_part

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = ["Ownership", "is_part_stream"]

logger = logging.getLogger(__name__)

#: Pending entries of a dirty partition claimed per XAUTOCLAIM page.
_RECOVER_COUNT = 100
#: At most this many pages of the pending list are claimed per partition and round.
_RECOVER_PAGES = 20


def is_part_stream(stream: str) -> bool:
    """Whether ``stream`` is a partition's stream (``chi:{orders/3}:stream``): ``/`` is in
    no name, so no other key of the layout has one."""
    return "/" in stream


class Ownership:
    """The partitions consumer ``name`` holds for subscription ``queue``."""

    def __init__(self, broker: StreamsBroker, queue: str, name: str, lease_ms: int) -> None:
        self.broker = broker
        self.keys = broker.keys
        self.queue = queue
        self.name = name
        self.lease_ms = lease_ms
        self._script = script("partowner")
        #: Bound partitioned topics → their declaration.
        self.topics: dict[str, Declaration] = {}
        #: Partition streams held now → their topic.
        self.held: dict[str, str] = {}
        #: Held partition streams not yet recovered, and those whose own pending entries
        #: are still to be read back (``XREADGROUP … 0``).
        self.dirty: set[str] = set()
        self.history: set[str] = set()
        self.valid_until = 0.0

    def streams(self) -> list[str]:
        """Every partition stream of the bound partitioned topics."""
        return [self.keys.stream(p) for t, d in self.topics.items() for p in d.parts(t)]

    def bind(self, topics: list[str]) -> None:
        """Learn which of ``topics`` are partitioned (new ones get their groups, reading
        from their first entry)."""
        found = {}
        for t in topics:
            decl = self.broker.bus.partitions.get(t)
            if decl is not None:
                found[t] = decl
        for t, decl in found.items():
            if self.topics.get(t) != decl:
                for p in decl.parts(t):
                    self.broker.ensure_group(self.keys.stream(p), self.queue, "0")
        self.topics = found

    def valid(self) -> bool:
        return time.monotonic() < self.valid_until

    def round(self, busy: set[str], leaving: bool = False) -> None:
        """One rebalancing round for every bound partitioned topic (one pipeline)."""
        started = time.monotonic()
        members = self.keys.members(self.queue)
        pipe = self.broker.client.pipeline(transaction=False)
        order = list(self.topics.items())
        for topic, decl in order:
            parts = decl.parts(topic)
            flags = "".join("1" if self.keys.stream(p) in busy else "0" for p in parts)
            lease_keys = [self.keys.owner(self.queue, p) for p in parts]
            pipe.evalsha(self._script.sha, 1 + len(parts), members, *lease_keys,
                         self.name, self.lease_ms, flags, "1" if leaving else "0")
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(r, rex.NoScriptError) for r in results):
            self.broker.client.script_load(self._script.source)
            return  # the next round (a third of a lease) runs it
        held: dict[str, str] = {}
        for (topic, decl), r in zip(order, results, strict=True):
            if isinstance(r, Exception):
                raise r
            for i in r:
                held[self.keys.stream(decl.parts(topic)[int(i)])] = topic
        for stream in held.keys() - self.held.keys():
            self.dirty.add(stream)  # new here: recover before reading
        self.dirty &= held.keys()
        self.history &= held.keys()
        self.held = held
        self.valid_until = started + self.lease_ms * 0.8 / 1000

    def recover(self, busy: set[str]) -> list[tuple[str, list[Any], dict[bytes, int]]]:
        """Claim what dead owners left pending on dirty, idle partitions; the claimed entries
        by stream with their delivery counts (read back by :meth:`reads`, in order, once the
        crash guard has looked at them)."""
        out = []
        client = self.broker.client
        for stream in sorted(self.dirty - busy):
            claimed: list[Any] = []
            cursor = "0-0"
            for _ in range(_RECOVER_PAGES):  # the whole pending list, page by page
                res = client.xautoclaim(stream, self.queue, self.name, self.lease_ms, cursor,
                                        count=_RECOVER_COUNT)
                claimed += [c for c in res[1] if c[1] is not None]
                cursor = _text(res[0])
                if cursor == "0-0":
                    break
            summary = client.xpending(stream, self.queue)
            if cursor != "0-0" or any(_text(c["name"]) != self.name and int(c["pending"])
                                      for c in summary.get("consumers") or ()):
                continue  # another consumer still runs one of its entries: wait for it
            counts: dict[bytes, int] = {}
            if claimed:
                pending = client.xpending_range(
                    stream, self.queue, min=claimed[0][0], max=claimed[-1][0],
                    count=len(claimed) + _RECOVER_COUNT, consumername=self.name)
                counts = {_bytes(p["message_id"]): int(p["times_delivered"]) for p in pending}
            self.dirty.discard(stream)
            self.history.add(stream)
            if claimed:
                out.append((stream, claimed, counts))
        return out

    def reads(self, busy: set[str]) -> dict[str, str]:
        """The partition streams to read now and from where: ``0`` (own pending entries
        first) or ``>``; none while the last round is too old or a partition is busy."""
        if not self.valid():
            return {}
        return {s: ("0" if s in self.history else ">")
                for s in sorted(self.held) if s not in busy and s not in self.dirty}

    def read_back(self, stream: str, got: int) -> None:
        """A ``0`` read of ``stream`` returned ``got`` entries: none left means it is clean."""
        if not got:
            self.history.discard(stream)

    def leave(self, busy: set[str]) -> None:
        """Give up every partition (the consumer closes): others take them at once, but
        those in ``busy`` (an entry still running) only when their lease runs out."""
        if self.topics:
            self.round(busy, leaving=True)
        self.held.clear()

    def topic_of(self, stream: str) -> str:
        return topic_of_part(self.keys.topic_from_stream(stream))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
