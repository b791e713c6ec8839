"""The one write path onto the topic streams: pack, run the script, account for failures.

:class:`Writer` (sync, here) and ``writer_aio.AsyncWriter`` (asyncio) are what ``EventBus.publish``,
``publish_batch``, ``AsyncEventBus``'s twins, ``bus.store.store()`` (archive writes) and
replay's republish target write through.  Both share the packing (:func:`pack`), the
chunking into pipeline round trips and the partial-failure report (:func:`partial_failure`);
only the I/O differs.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.cluster import is_cluster
from ..backend.keys import Keys
from ..backend.partitions import PartitionRegistry
from ..backend.scripts import direct_connection, script
from ..errors import ChiError, PublishError
from ..events.codec import Codec
from ..events.event import Event
from ..events.names import validate_name
from ..events.partitioning import topic_of_part
from ..limits import MAX_CHUNK, check_limit
from ..observe import metrics, tracing
from .acks import Acks, write_acked, write_batch_acked
from .packing import Call, pack
from .republish import checkpoint_argv, pack_republish
from .single import OnePacking, count_one
from .slots import (
    CLUSTER_CALLS_PER_ROUND_TRIP,
    TopicMemory,
    id_lookups,
    register_partitioned,
    route,
    topic_runs,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_IDEMPOTENCY_TTL_MS",
    "Writer",
    "checkpoint_argv",
    "pack",
    "pack_republish",
    "partial_failure",
]

DEFAULT_CHUNK = 500
DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000

#: Chunks (publish-script calls) sent per pipeline round trip.
CHUNKS_PER_ROUND_TRIP = 20
_BUS_OPTIONS = ("encoding", "max_event_bytes", "idempotency_ttl_ms", "retry", "acks",
                "min_replicas", "ack_timeout_ms")


def split_bus_options(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the bus's own options out of ``options``; what stays goes to the redis client."""
    return {k: options.pop(k) for k in _BUS_OPTIONS if k in options}


def check_topic(topic: str) -> str:
    """Validate a topic name given on its own (queries, CLI)."""
    return validate_name(topic, "topic")


def partial_failure(
    events: Sequence[Event],
    written_ids: list[str],
    found: Sequence[bytes | str | None] | None,
    exc: ChiError,
) -> PublishError:
    """The error for a batch whose first ``len(written_ids)`` events are known written.

    ``found`` is the id lookup's answer (``HMGET ids``) for the remaining events, or None
    when Redis could not be asked: an event of a failed chunk may still have been written
    (the script ran but its reply was lost, or it failed half-way through a chunk).
    """
    written = dict(enumerate(written_ids))
    rest = list(range(len(written_ids), len(events)))
    for i, value in zip(rest, found or (), strict=False):
        if value is not None:
            text = value.decode() if isinstance(value, bytes) else value
            written[i] = text.split(" ", 1)[1]
    failed = [i for i in rest if i not in written]
    outcome = "unknown" if found is None and failed else "known"
    return PublishError(
        f"batch publish failed after {len(written)} of {len(events)} events"
        f" (outcome of the rest {outcome}): {exc}",
        written=written,
        failed=failed,
        cause=exc,
        outcome=outcome,
    )


def _stream_ids(result: Sequence[bytes]) -> list[str]:
    return [sid.decode() for sid in result]


_PUBLISHED = "chi_events_published_total"


def count_published(topics: Iterable[str]) -> None:
    """Add written events to ``chi_events_published_total`` by topic: one increment per
    topic of a batch, so the cost is per call, not per event."""
    if not metrics.enabled():
        return
    for topic, n in Counter(topics).items():
        metrics.labelled(_PUBLISHED, topic).inc(n)


_TOPIC = attrgetter("topic")


def _topics(events: Sequence[Event], start: int = 0, stop: int | None = None) -> Iterable[str]:
    return map(_TOPIC, events[start:stop])


class _Packing(OnePacking):
    """What both writers share: the layout (one event: :class:`OnePacking`), the chunking
    into round trips, and which events a failed round trip leaves to look up."""

    def __init__(self, keys: Keys, codec: Codec, idempotency_ttl_ms: int) -> None:
        super().__init__(keys, codec, idempotency_ttl_ms)
        self.script = script("publish")
        #: Whether each script call holds one topic only (a cluster: one slot per call).
        self.per_topic = False
        #: Topics known to be in the topics set (added before a topic's first event).
        self.registered = TopicMemory()
        #: The partitioned topics' declarations (set by the bus; None: route nothing).
        self.partitions: PartitionRegistry | None = None

    def pack(
        self, events: Sequence[Event], idempotency_keys: Sequence[str | None] | None,
        archive: bool, names: Sequence[str] | None = None,
    ) -> Call:
        return pack(self.keys, self.codec, events, idempotency_keys, self.idempotency_ttl_ms,
                    archive, names)

    def route(self, events: Sequence[Event]) -> list[str] | None:
        """The partition each event goes to (``orders/3``), its topic for the others; None
        when no topic of ``events`` is partitioned (docs/design.md §15).  From the cache
        only: a topic not registered lately is routed again after :meth:`register`."""
        return route(self.partitions, events) if self.partitions is not None else None

    def pack_runs(
        self, events: Sequence[Event], idempotency_keys: Sequence[str | None] | None,
        archive: bool,
    ) -> list[Call]:
        """:meth:`pack` of ``events`` (one call), or on a cluster of each run of one topic."""
        names = self.route(events)
        if not self.per_topic:
            return [self.pack(events, idempotency_keys, archive, names)]
        return [self.pack(events[a:b], idempotency_keys[a:b] if idempotency_keys else None,
                          archive, names[a:b] if names else None)
                for a, b in topic_runs(events, len(events), names)]

    def rounds(self, events: list[Event], chunk_size: int, archive: bool) -> list[list[Call]]:
        """Every chunk packed (so nothing is sent if one is invalid), grouped per round trip."""
        check_limit(chunk_size, "chunk_size", 1, MAX_CHUNK)
        names = self.route(events)
        if self.per_topic:  # a cluster: one topic (one slot) per script call
            calls = [self.pack(events[a:b], None, archive, names[a:b] if names else None)
                     for a, b in topic_runs(events, chunk_size, names)]
            per = CLUSTER_CALLS_PER_ROUND_TRIP
        else:
            calls = [
                self.pack(events[i : i + chunk_size], None, archive,
                          names[i : i + chunk_size] if names else None)
                for i in range(0, len(events), chunk_size)
            ]
            per = CHUNKS_PER_ROUND_TRIP
        return [calls[i : i + per] for i in range(0, len(calls), per)]

    def unwritten(self, events: list[Event], out: list[str]) -> list[Event]:
        """The events after the ``len(out)`` known written (to ask the id lookup)."""
        return events[len(out):]


class Writer(_Packing):
    """Writes events onto their topic streams through the publish script (synchronous).

    ``call`` runs one round trip under the bus's retry policy and maps redis-py errors
    (``EventBus.call``); ``call_once`` does the same without retrying (``EventBus.call_once``).
    """

    def __init__(
        self, client: redis.Redis, keys: Keys, codec: Codec, *, idempotency_ttl_ms: int,
        call: Callable[[Callable[[], Any]], Any], call_once: Callable[[Callable[[], Any]], Any],
    ) -> None:
        super().__init__(keys, codec, idempotency_ttl_ms)
        self.client = client
        self.call = call
        self.call_once = call_once
        self.republish_script = script("replay_topic")
        self._direct = direct_connection(client)
        self.per_topic = is_cluster(client)

    def register(self, topics: Iterable[str]) -> list[str]:
        """Add the topics not added yet by this writer to the topics set (one round trip,
        before their first events: a reader of the set never misses a written topic), and
        read their partitioning in the same round trip; the fresh ones that are partitioned
        (what was packed for them must be packed again, routed)."""
        fresh = self.registered.fresh(topics)
        if not fresh:
            return []
        if self.partitions is None:
            self.call(lambda: self.client.sadd(self.keys.topics(), *fresh))
            partitioned: list[str] = []
        else:
            partitioned = self.call(partial(
                register_partitioned, self.client, self.keys, self.partitions, fresh))
        self.registered.add(fresh)
        return partitioned

    def write(
        self, events: Sequence[Event], idempotency_keys: Sequence[str | None] | None = None,
        *, archive: bool = False, acks: Acks | None = None,
    ) -> list[str]:
        """Write ``events`` in one script call (one chunk); their stream ids.

        Retried under the policy: the script skips ids (and idempotency keys) already
        written, so a retry after a lost reply writes nothing twice.  ``acks``: return once
        that many replicas have them (``acks="replicas"``, :mod:`.acks`).
        """
        if tracing.enabled() and not archive:
            with tracing.publishing(events) as traced:
                return self._write(traced, idempotency_keys, archive, acks)
        return self._write(events, idempotency_keys, archive, acks)

    def _write(
        self, events: Sequence[Event], idempotency_keys: Sequence[str | None] | None,
        archive: bool, acks: Acks | None = None,
    ) -> list[str]:
        if acks is not None:
            return write_acked(self, events, idempotency_keys, acks)
        if len(events) == 1 and not archive:
            event = events[0]
            idem = idempotency_keys[0] if idempotency_keys else None
            name = self.route(events)
            one = self.pack_one(event, idem, name[0] if name else None)
            if not self.registered.knows(event.topic) and self.register((event.topic,)):
                name = self.route(events)  # partitioned: packed again, for its partition
                one = self.pack_one(event, idem, name[0] if name else None)
            sid: bytes = self.call(lambda: self.send_one(*one))
            count_one(event.topic)
            return [sid.decode()]
        calls = self.pack_runs(events, idempotency_keys, archive)
        if self.register(_topics(events)):  # partitioned topics seen first: route them
            calls = self.pack_runs(events, idempotency_keys, archive)
        ids: list[str] = []
        for keys, argv in calls:
            ids += _stream_ids(self.call(partial(self.send, keys, argv)))
        if metrics.enabled() and not archive:
            count_published(_topics(events))
        return ids

    def write_batch(
        self, events: Sequence[Event], chunk_size: int = DEFAULT_CHUNK, *, archive: bool = False,
        acks: Acks | None = None,
    ) -> list[str]:
        """Write ``events`` in order, ``chunk_size`` per script call, pipelined.

        When a round trip fails, raises :class:`PublishError` naming what was written
        (including events of the failed round trip that the id lookup finds).
        """
        if tracing.enabled() and not archive:
            with tracing.publishing(list(events)) as traced:
                return self._write_batch(traced, chunk_size, archive, acks)
        return self._write_batch(list(events), chunk_size, archive, acks)

    def _write_batch(
        self, events: list[Event], chunk_size: int, archive: bool, acks: Acks | None = None
    ) -> list[str]:
        if acks is not None:
            return write_batch_acked(self, events, chunk_size, acks)
        out: list[str] = []
        rounds = self.rounds(events, chunk_size, archive)
        try:
            if self.register(_topics(events)):  # partitioned topics seen first: route them
                rounds = self.rounds(events, chunk_size, archive)
        except ChiError as exc:
            raise self.failure(events, out, exc) from exc
        for group in rounds:
            try:
                results = self.call(partial(self.send_pipelined, group))
            except ChiError as exc:
                raise self.failure(events, out, exc) from exc
            start = len(out)
            for r in results:
                out += _stream_ids(r)
            if not archive:
                count_published(_topics(events, start, len(out)))
        return out

    def send(self, keys: list[str], argv: list[Any]) -> list[bytes]:
        """One publish-script call (one round trip), unretried and unmapped."""
        return self.script.run(self.client, keys, argv)  # type: ignore[no-any-return]

    def send_one(self, keys: list[bytes], argv: list[bytes]) -> bytes:
        """One ``publish_one`` call (:meth:`pack_one`; one round trip), unretried and
        unmapped; the stream id.  Sent past redis-py's command layers when the client
        allows it (:func:`~chi_redis.backend.scripts.direct_connection`)."""
        if self._direct is not None:
            return self.one_script.run_direct(  # type: ignore[no-any-return]
                self.client, self._direct, keys, argv
            )
        return self.one_script.run(self.client, keys, argv)  # type: ignore[no-any-return]

    def send_pipelined(self, calls: list[Call]) -> list[list[bytes]]:
        """Several publish-script calls in one round trip, unretried and unmapped; packed
        by hiredis and sent past redis-py's pipeline when the client allows it."""
        if self._direct is not None:
            s = self.script
            packed = [s.packed(keys, argv) for keys, argv in calls]
            return s.run_pipelined_direct(self.client, self._direct, packed)
        return self.script.run_pipelined(self.client, calls)

    def republish(
        self, packed: Call, checkpoint_key: str = "", checkpoint: Mapping[str, str] | None = None
    ) -> list[str]:
        """Write entries packed by :func:`pack_republish`, with the replay checkpoint fields
        in the same atomic script call; the new stream ids.

        Never retried: after a lost reply a retry would write the events twice, and the
        checkpoint tells a rerun where the replay really stopped.
        """
        self.register(topic_of_part(str(t)) for t in packed[1][0::8])
        keys = [checkpoint_key or (packed[0][0] if packed[0] else self.keys.topics()),
                *packed[0]]
        argv = [*checkpoint_argv(checkpoint or {}), *packed[1]]
        s = self.republish_script
        ids = _stream_ids(self.call_once(lambda: s.run(self.client, keys, argv)))
        # Eight arguments per entry, the topic first (``pack_republish``).
        count_published(topic_of_part(str(t)) for t in packed[1][0::8])
        return ids

    def failure(self, events: list[Event], out: list[str], exc: ChiError) -> PublishError:
        rest = self.unwritten(events, out)
        found: list[bytes | str | None] | None = None
        # Some events of the failed chunks may have been written: ask the id lookup.
        with contextlib.suppress(rex.RedisError):
            pipe = self.client.pipeline(transaction=False)
            found = (id_lookups(pipe, self.keys, rest, self.route(rest)).execute()
                     if rest else [])
        return partial_failure(events, out, found, exc)
