"""Replay from the archive: a time range of a persistent store, delivered like a stream replay.

The archive (:mod:`chi_redis.ops.archive`) holds events Redis retention already trimmed.
:func:`replay_archive` reads ``[since, until]`` by event time from the store, in
(timestamp, id) order, and hands the events to the same targets a stream replay uses
(:mod:`chi_redis.ops.targets`: one subscription, republished, printed) through the same
runner (:class:`~chi_redis.ops.replay_run.ReplayRun`): batch size, rate, parallel workers,
progress and a resumable checkpoint behave as they do for a stream replay.

An archived event has no stream id any more: its item carries the synthetic id
``<event time ms>-0``, which only the queue target's message options (``src_id``) and the
print target's ``stream_id`` show.  The checkpoint position is ``"<event time µs> <event
id>"`` (one position for all topics, key ``*``): a rerun resumes after the last (timestamp,
id) delivered.  An open upper bound is fixed at "now" when the replay starts and stored in
the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from ..events.codec import Codec, us_to_datetime
from ..events.event import Event
from ..events.names import validate_name
from ..store.history import By, Item, rechunk
from .checkpoint import Checkpoint
from .replay import ReplayOptions, ReplayReport, execute
from .replay_run import ReplayRun
from .targets import Target
from .timeparse import TimePoint

if TYPE_CHECKING:
    from ..publish.bus import EventBus
    from ..store import EventStore

__all__ = ["ALL_TOPICS", "archive_items", "archive_total", "replay_archive"]

_NAMES = ("id", "type", "ts", "ver", "meta", "enc", "data")
#: The checkpoint's one position key: the archive is read in one (timestamp, id) order.
ALL_TOPICS = "*"
_POS_BY: By = "event-time"  # positions "<µs> <id>" sort like pos_key(..., "event-time")


def archive_items(events: list[Event], codec: Codec) -> list[Item]:
    """History items for events read from an archive store (synthetic stream ids)."""
    out: list[Item] = []
    for e in events:
        values = codec.encode(e)
        us = e.timestamp_us
        out.append((e.topic, f"{us // 1000}-0".encode(), dict(zip(_NAMES, values, strict=True)),
                    us))
    return out


def _position(item: Item) -> str:
    return f"{item[3]} {item[2]['id'].decode()}"


def _parse_position(pos: str) -> tuple[int, str]:
    us, _, event_id = pos.partition(" ")
    return int(us), event_id


def _pages(store: EventStore, lo: int, hi: int, topics: list[str], page: int
           ) -> Iterator[list[Event]]:
    """Events with event time in ``[lo, hi]`` (µs) of ``topics`` (all when empty), in
    (timestamp, id) order, in pages."""
    pages: Any = getattr(store, "time_pages", None)
    wanted = set(topics)
    if pages is not None:
        one = topics[0] if len(topics) == 1 else None
        for events in pages(lo, hi, topic=one, page=page):
            yield [e for e in events if e.topic in wanted] if wanted and one is None else events
        return
    events = store.load_by_time_range(us_to_datetime(lo), us_to_datetime(hi))
    if wanted:
        events = [e for e in events if e.topic in wanted]
    for i in range(0, len(events), page):
        yield events[i : i + page]


def archive_total(store: EventStore, lo_us: int, hi_us: int, topics: list[str]) -> int:
    """Roughly how many archived events the range holds (for a progress bar): exact when
    the store can count a time range, else the store's size, else 0."""
    counter: Any = getattr(store, "count_time_range", None)
    if counter is not None:
        return int(sum(counter(lo_us, hi_us, topic=t) for t in topics) if topics
                   else counter(lo_us, hi_us))
    count: Any = getattr(store, "count", None)
    return int(count()) if count is not None else 0


class ArchiveRun(ReplayRun):
    """A :class:`ReplayRun` whose batches come from an archive store instead of streams."""

    def __init__(self, store: EventStore, codec: Codec, bus: Any, target: Target | None,
                 spec: dict[str, Any], opts: ReplayOptions, report: ReplayReport,
                 ckpt: Checkpoint | None, progress: Callable[[int], None] | None) -> None:
        super().__init__(bus, target, spec, opts, report, ckpt, progress)
        self.store, self.codec = store, codec

    def item_pos(self, item: Item) -> tuple[str, str]:
        """The archive is read in one order: one position for all topics."""
        return ALL_TOPICS, _position(item)

    def batches(self) -> Iterator[tuple[list[Item], list[Item], dict[str, tuple[str, str]]]]:
        """(batch, deliverable items, {"*": (first, last) position in the batch})."""
        lo, hi = self.spec["lo"], self.spec["hi"]
        after = self.pos.get(ALL_TOPICS)
        after_key = _parse_position(after) if after else None
        if after_key is not None:
            lo = max(lo, after_key[0])
        topics = [t for t in self.spec["topics"] if t != ALL_TOPICS]
        page = min(max(self.batch_size, 100), 5000)
        ckpt, rep = self.ckpt, self.report
        done = bool(ckpt and ckpt.done)

        def items() -> Iterator[list[Item]]:
            for events in _pages(self.store, lo, hi, topics, page):
                if after_key is not None:
                    events = [e for e in events if (e.timestamp_us, e.id) > after_key]
                if events:
                    yield archive_items(events, self.codec)

        for batch in rechunk(items(), self.batch_size):
            ranges = {ALL_TOPICS: (_position(batch[0]), _position(batch[-1]))}
            chosen = self.types.select(batch) if self.types else batch
            rep.skipped_types += len(batch) - len(chosen)
            if done and ckpt is not None:
                n = len(chosen)
                chosen = [it for it in chosen if not ckpt.covered(
                    ALL_TOPICS, (it[3], it[2]["id"]), _POS_BY)]
                rep.already_delivered += n - len(chosen)
            rep.scanned += len(batch)
            yield batch, chosen, ranges


def replay_archive(
    store: EventStore, target: Target | None, codec: Codec, *, topics: list[str] | None = None,
    since: TimePoint | None = None, until: TimePoint | None = None,
    types: list[str] | None = None, options: ReplayOptions | None = None,
    bus: EventBus | None = None, progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Deliver the archived events in ``[since, until]`` (event time) to ``target`` (None:
    count only).

    ``options`` as for :func:`chi_redis.ops.replay.replay`; a checkpoint lives in Redis and
    needs ``bus`` (default: the target's bus).  Raises :class:`ReplayInterrupted` when
    delivery fails part-way (with a checkpoint, running it again resumes).
    """
    opts = options or ReplayOptions()
    opts.validate()
    names = sorted({validate_name(t, "topic") for t in topics or []})
    if target is None:
        opts.dry_run = True
    bus = bus if bus is not None else getattr(target, "bus", None)
    if opts.checkpoint and bus is None:
        raise ValidationError("a checkpoint is kept in Redis: pass bus=", field="checkpoint")
    spec: dict[str, Any] = {
        "by": "archive", "topics": names or [ALL_TOPICS],
        "lo": since.lower_us() if since else 0,
        "hi": until.upper_us() if until else time.time_ns() // 1000,
        "types": sorted(types or []), "target": target.name if target else "count",
    }
    report = ReplayReport(target=spec["target"], by="event-time", topics=names or ["*"],
                          dry_run=opts.dry_run, checkpoint=opts.checkpoint)
    return execute(
        bus, spec, opts, report,
        lambda spec, ckpt: ArchiveRun(store, codec, bus, target, spec, opts, report, ckpt,
                                      progress),
    )
