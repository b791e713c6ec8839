"""Retention: keep Redis memory bounded without dropping an event a subscription needs.

Trimming a stream on Redis 7.0 silently deletes entries a lagging consumer group has not
read, or still has pending (docs/design.md §5.7).  So retention here never trims at or beyond
the *safe bound* of a stream: for every consumer group, its oldest pending entry (XPENDING)
or else the entry after its last-delivered-id.  What the policy wanted to trim but could
not is reported, with the group that held it back.

One Lua script (``lua/trim.lua``) computes the bound and trims a chunk of the oldest
entries in one atomic step, with ``XTRIM MINID`` (exact), removing the same entries from
the time index and their event ids from the id lookup.  It runs chunk by chunk until the
policy is met or a group holds it back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ..backend.scripts import script
from ..backend.streamids import format_id, parse_id, pred
from ..config import Config, RetentionPolicy
from ..errors import ValidationError
from ..events.names import validate_name
from .timeparse import parse_duration

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["Policy", "TrimResult", "apply_retention", "policy_for", "trim_topic"]

logger = logging.getLogger(__name__)

CHUNK = 1000
COUNT_CAP = 1_000_000


@dataclass(frozen=True)
class Policy:
    """Trim entries older than ``max_age_ms`` or beyond the newest ``max_len``."""

    max_age_ms: int | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.max_age_ms is not None and self.max_age_ms <= 0:
            raise ValidationError("max age must be positive", field="max_age")
        if self.max_len is not None and self.max_len < 0:
            raise ValidationError("max length must not be negative", field="max_len")

    def __bool__(self) -> bool:
        return self.max_age_ms is not None or self.max_len is not None

    def describe(self) -> str:
        parts = []
        if self.max_age_ms is not None:
            parts.append(f"max-age {self.max_age_ms // 1000}s")
        if self.max_len is not None:
            parts.append(f"max-len {self.max_len}")
        return ", ".join(parts) or "none"

    @classmethod
    def from_config(cls, p: RetentionPolicy) -> Policy:
        age = parse_duration(p.max_age, "max_age") if p.max_age else None
        return cls(max_age_ms=age, max_len=p.max_len)


def policy_for(
    config: Config, topic: str, max_age_ms: int | None = None, max_len: int | None = None
) -> Policy:
    """The policy of ``topic``: command-line values, else the topic's, else the default."""
    if max_age_ms is not None or max_len is not None:
        return Policy(max_age_ms, max_len)
    per_topic = config.retention.topics.get(topic)
    return Policy.from_config(per_topic if per_topic is not None else config.retention.default)


@dataclass
class TrimResult:
    """What retention did to one topic."""

    topic: str
    policy: str
    trimmed: int = 0
    held_back: int = 0
    held_by: str | None = None
    held_at: str | None = None  # the first entry the holding group still needs
    group_lag: int | None = None
    group_pending: int | None = None
    length: int = 0

    def describe(self) -> str:
        text = f"topic {self.topic}: trimmed {self.trimmed} ({self.policy}), {self.length} left"
        if self.held_back:
            lag = "unknown" if self.group_lag is None else str(self.group_lag)
            text += (
                f"; held back {self.held_back}: group {self.held_by!r} still needs"
                f" {self.held_at} onwards (lag {lag}, pending {self.group_pending})"
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _server_ms(bus: EventBus) -> int:
    sec, usec = bus.call(lambda: bus.client.time())
    return int(sec) * 1000 + int(usec) // 1000


def trim_topic(bus: EventBus, topic: str, policy: Policy, *, chunk: int = CHUNK) -> TrimResult:
    """Apply ``policy`` to one topic's stream and index, never past its safe bound.  A
    partitioned topic's partitions are trimmed each by the policy (``max_len`` is then
    per partition; docs/design.md §15.5), reported as the one topic."""
    validate_name(topic, "topic")
    result = TrimResult(topic, policy.describe())
    if not policy:
        return result
    age_bound = ""
    if policy.max_age_ms is not None:
        age_bound = f"{max(_server_ms(bus) - policy.max_age_ms, 0)}-0"
    max_len = -1 if policy.max_len is None else policy.max_len
    for name in bus.partitions.names(topic):
        _trim_name(bus, name, age_bound, max_len, chunk, result)
    if result.trimmed or result.held_back:
        logger.info("%s", result.describe())
    return result


def _trim_name(bus: EventBus, name: str, age_bound: str, max_len: int, chunk: int,
               result: TrimResult) -> None:
    """Trim the stream and index of ``name`` (a topic or a partition) into ``result``."""
    k = bus.keys
    keys = [k.stream(name), k.index(name), k.ids(name)]
    trim, argv = script("trim"), [age_bound, max_len, chunk]
    while True:
        n, _last, reason, holder, bound = bus.call(partial(trim.run, bus.client, keys, argv))
        result.trimmed += int(n)
        if reason != b"more":
            break
    result.length += int(bus.call(lambda: bus.client.xlen(keys[0])))
    if reason == b"held":
        result.held_by = holder.decode()
        result.held_at = bound.decode()
        length = int(bus.call(lambda: bus.client.xlen(keys[0])))
        result.held_back += _held_back(bus, keys[0], length, max_len, age_bound)
        _describe_group(bus, keys[0], result)


def _held_back(bus: EventBus, stream: str, length: int, max_len: int, age_bound: str) -> int:
    """How many entries the policy wanted gone but a group still needs."""
    held = max(length - max_len, 0) if max_len >= 0 else 0
    if age_bound:
        held = max(held, _count_before(bus, stream, age_bound))
    return held


def _count_before(bus: EventBus, stream: str, bound: str) -> int:
    """Entries with an id below ``bound`` (capped at COUNT_CAP)."""
    end = format_id(pred(parse_id(bound)))
    start, n = "-", 0
    while n < COUNT_CAP:
        page = bus.call(lambda start=start: bus.client.xrange(stream, start, end, count=10_000))
        n += len(page)
        if len(page) < 10_000:
            break
        start = "(" + page[-1][0].decode()
    return n


def _describe_group(bus: EventBus, stream: str, result: TrimResult) -> None:
    for g in bus.call(lambda: bus.client.xinfo_groups(stream)):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == result.held_by:
            result.group_lag = g.get("lag")
            result.group_pending = g.get("pending")


def apply_retention(
    bus: EventBus,
    config: Config,
    *,
    topics: list[str] | None = None,
    max_age_ms: int | None = None,
    max_len: int | None = None,
    report: Callable[[TrimResult], None] | None = None,
) -> list[TrimResult]:
    """Apply retention to ``topics`` (default: every registered topic)."""
    names = sorted(topics) if topics else bus.store.topics()
    results = []
    for topic in names:
        policy = policy_for(config, topic, max_age_ms, max_len)
        if not policy:
            continue
        r = trim_topic(bus, topic, policy)
        results.append(r)
        if report is not None:
            report(r)
    return results
