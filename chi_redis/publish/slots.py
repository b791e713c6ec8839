"""What the publishers do about hash slots (docs/design.md §3.6): a cluster runs each
publish script on one topic's keys, and the topics set is written outside the scripts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..backend.keys import Keys
from ..events.event import Event

__all__ = ["CLUSTER_CALLS_PER_ROUND_TRIP", "id_lookups", "new_topics", "topic_runs"]

#: Script calls sent per pipeline round trip on a cluster (one topic each, so often small).
CLUSTER_CALLS_PER_ROUND_TRIP = 200
#: Topics a publisher remembers as registered before it starts afresh.
_MAX_REGISTERED = 10_000


def topic_runs(events: Sequence[Event], chunk_size: int) -> Iterator[Sequence[Event]]:
    """``events`` cut into runs of one topic, each at most ``chunk_size`` long, in order:
    their stream ids, concatenated, are in the events' order."""
    start = 0
    for i in range(1, len(events) + 1):
        if (i == len(events) or events[i].topic != events[start].topic
                or i - start == chunk_size):
            yield events[start:i]
            start = i


def new_topics(registered: set[str], topics: Iterable[str]) -> list[str]:
    """The topics not yet in ``registered`` (a publisher's memory of the topics set)."""
    fresh = sorted({t for t in topics if t not in registered})
    if fresh and len(registered) + len(fresh) > _MAX_REGISTERED:
        registered.clear()
    return fresh


def id_lookups(pipe: Any, keys: Keys, events: Sequence[Event]) -> Any:
    """Queue ``HGET <topic's ids> <id>`` for each event on ``pipe``; the pipeline."""
    for event in events:
        pipe.hget(keys.ids(event.topic), event.id)
    return pipe
