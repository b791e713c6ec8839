"""Replay: re-read a range of history and deliver it again (docs/design.md §5.6).

Sources (:mod:`chi_redis.store.history`): one or more topic streams by stream-id / append-time
range, or the time index by event time.  Targets (:mod:`chi_redis.ops.targets`): one
subscription's private stream, back onto the topic as marked new events, or JSON lines.

With a checkpoint name, the last delivered position is stored under
``keys.checkpoint(name)`` *in the same Lua script as the delivery*, so a replay that is
interrupted (crash, kill, Ctrl-C) and run again resumes exactly where it stopped: nothing
is repeated, nothing skipped.  With ``workers > 1`` batches are delivered in parallel (and
so not in order): each records its own range atomically, and the contiguous prefix is
folded into the position as batches complete.  (The print target writes before it
records, so its last batch may be printed twice after a crash.)

An upper bound left open is fixed at the stream's last entry when the replay starts (and
stored in the checkpoint), so a republish never chases its own output.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.streamids import format_id, parse_id
from ..errors import ChiError, ValidationError
from ..events.names import validate_glob, validate_name
from ..limits import MAX_COUNT, check_limit
from ..store.history import By
from .checkpoint import Checkpoint
from .registry import registered
from .replay_run import ReplayRun
from .targets import PrintTarget, QueueTarget, RepublishTarget, Target
from .timeparse import TimePoint

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = [
    "PrintTarget",
    "QueueTarget",
    "ReplayInterrupted",
    "ReplayOptions",
    "ReplayReport",
    "RepublishTarget",
    "Target",
    "choose_target",
    "estimate_total",
    "replay",
]

logger = logging.getLogger(__name__)


# options and report ------------------------------------------------------------------------
@dataclass
class ReplayOptions:
    """How to replay: batch size, rate, parallelism, dry run, checkpoint name.

    ``rate`` (events per second, all workers together) spreads deliveries evenly: batches
    shrink to what the rate allows in 100 ms.  Setting ``stop`` (from another thread or a
    signal handler) ends the run before its next delivery, with the checkpoint exactly
    after the last one: it raises :class:`ReplayInterrupted` ("interrupted").
    """

    batch_size: int = 500
    rate: float | None = None  # events per second
    workers: int = 1
    dry_run: bool = False
    checkpoint: str | None = None
    stop: threading.Event | None = field(default=None, repr=False, compare=False)

    def validate(self) -> None:
        check_limit(self.batch_size, "batch_size", 1, MAX_COUNT)  # the COUNT of each read
        check_limit(self.workers, "workers", 1, 64)
        if self.rate is not None and not self.rate > 0:
            raise ValidationError("rate must be more than 0 events per second", field="rate")
        if self.checkpoint is not None:
            validate_name(self.checkpoint, "checkpoint")


@dataclass
class Gap:
    """Part of the requested range that no longer exists (trimmed or deleted).

    ``exact`` is False when Redis cannot say which entries went (a trim by someone else:
    XTRIM/MAXLEN do not record the last id they removed) or the range is by event time.
    """

    topic: str
    requested: str
    first_available: str | None
    exact: bool = True
    removed: int = 0

    def describe(self) -> str:
        where = (
            f"first available entry is {self.first_available}"
            if self.first_available else "the stream holds nothing from there on"
        )
        if self.exact:
            return f"topic {self.topic!r}: entries from {self.requested} were trimmed; {where}"
        return (
            f"topic {self.topic!r}: {self.removed} older entries were trimmed or deleted,"
            f" entries from {self.requested} may be missing; {where}"
        )


@dataclass
class ReplayReport:
    """What a replay did (or, dry run, would do)."""

    target: str
    by: str
    topics: list[str]
    scanned: int = 0
    delivered: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    skipped_types: int = 0
    skipped_archived: int = 0
    already_delivered: int = 0
    missing: int = 0
    gaps: list[Gap] = field(default_factory=list)
    dry_run: bool = False
    checkpoint: str | None = None
    resumed: bool = False
    already_complete: bool = False
    total_delivered: int | None = None  # across runs, from the checkpoint
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "gaps"}
        d["gaps"] = [{**g.__dict__, "message": g.describe()} for g in self.gaps]
        return d

    def summary(self) -> str:
        """One or two lines for people."""
        where = {"print": " to stdout", "republish": " to their topics", "count": ""}.get(
            self.target, f" to subscription {self.target[3:]!r}")
        by = "append time" if self.by == "append" else "event time"
        if self.already_complete:
            return (f"checkpoint {self.checkpoint!r} is complete ({self.total_delivered} events"
                    " delivered): nothing to do; use another --checkpoint name to replay again")
        verb = "would replay" if self.dry_run else "replayed"
        counts = " ".join(f"{t}={n}" for t, n in sorted(self.per_topic.items()))
        text = (f"{verb} {self.delivered} events{where} (topics {', '.join(self.topics)};"
                f" by {by}) in {self.elapsed_s:.2f}s" + (f": {counts}" if counts else ""))
        skipped = [
            f"{n} {what}" for n, what in (
                (self.skipped_types, "of other types"), (self.skipped_archived, "archived"),
                (self.already_delivered, "already delivered by an earlier run"),
                (self.missing, "indexed but no longer in the stream"),
            ) if n
        ]
        if skipped:
            text += "\nskipped " + ", ".join(skipped)
        if self.checkpoint and not self.dry_run:
            text += (f"\ncheckpoint {self.checkpoint!r}: {self.total_delivered} delivered in total"
                     + (" (resumed)" if self.resumed else ""))
        return text


class ReplayInterrupted(ChiError):
    """A replay stopped part-way; ``report`` says how far it got."""

    def __init__(self, report: ReplayReport, cause: BaseException) -> None:
        why = "interrupted" if isinstance(cause, KeyboardInterrupt) else str(cause) or type(
            cause).__name__
        resume = (
            f"; run the same command again to resume (checkpoint {report.checkpoint!r})"
            if report.checkpoint and not report.dry_run
            else "; use --checkpoint NAME to make a replay resumable"
        )
        super().__init__(f"replay stopped after {report.delivered} events: {why}{resume}")
        self.report = report


# planning ----------------------------------------------------------------------------------
def _info(bus: EventBus, topics: list[str]) -> list[dict[str, Any] | None]:
    def run() -> list[Any]:
        pipe = bus.client.pipeline(transaction=False)
        for t in topics:
            pipe.xinfo_stream(bus.keys.stream(t))
        return pipe.execute(raise_on_error=False)

    out: list[dict[str, Any] | None] = []
    for r in bus.call(run):
        if isinstance(r, rex.ResponseError):  # no such stream
            out.append(None)
        elif isinstance(r, Exception):
            raise r
        else:
            out.append(r)
    return out


def _sid(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def plan(
    bus: EventBus, topics: list[str], by: By, since: TimePoint | None, until: TimePoint | None
) -> tuple[dict[str, Any], list[Gap]]:
    """Resolve the range (open ends fixed now) and find the parts already trimmed."""
    caps: dict[str, str] = {}
    gaps: list[Gap] = []
    for topic, info in zip(topics, _info(bus, topics), strict=True):
        if info is None:
            caps[topic] = "0-0"
            continue
        caps[topic] = _sid(info["last-generated-id"])
        if since is None:
            continue
        deleted = parse_id(_sid(info.get("max-deleted-entry-id", b"0-0")))
        removed = int(info.get("entries-added", 0)) - int(info["length"])
        first_entry = info.get("first-entry")
        first = parse_id(first_entry[0]) if first_entry else None
        if removed <= 0:
            continue
        first_s = format_id(first) if first else None
        if by == "append":
            lo = since.lower_id()
            if first is not None and lo >= first:
                continue
            if deleted >= lo:
                gaps.append(Gap(topic, format_id(lo), first_s, True, removed))
            elif deleted == (0, 0):  # trimmed by someone else: cannot tell where
                gaps.append(Gap(topic, format_id(lo), first_s, False, removed))
        elif deleted == (0, 0) or deleted[0] * 1000 >= since.lower_us():
            gaps.append(Gap(topic, since.iso(), first_s, False, removed))
    if by == "append":
        lo_v: Any = format_id(since.lower_id() if since else (0, 0))
        hi_v: Any = format_id(until.upper_id()) if until else None
    else:
        lo_v = since.lower_us() if since else 0
        hi_v = until.upper_us() if until else None
    return {"by": by, "topics": topics, "lo": lo_v, "hi": hi_v, "caps": caps}, gaps


# running -----------------------------------------------------------------------------------
def replay(
    bus: EventBus,
    target: Target | None,
    *,
    topics: list[str],
    by: By = "append",
    since: TimePoint | None = None,
    until: TimePoint | None = None,
    types: list[str] | None = None,
    options: ReplayOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay the range into ``target`` (None: count only); returns a report.

    Raises whatever delivery raised after recording how far it got; with a checkpoint,
    running the same replay again resumes from there.
    """
    opts = options or ReplayOptions()
    opts.validate()
    types = [validate_glob(g, "types") for g in types or ()]  # before any Redis command
    # A partitioned topic is read as its names: the topic and each partition (§15.5);
    # each is positioned and checkpointed on its own, delivered as the topic's events.
    topics = sorted({n for t in topics
                     for n in bus.partitions.names(validate_name(t, "topic"))})
    if target is None:
        opts.dry_run = True
    spec, gaps = plan(bus, topics, by, since, until)
    spec["types"] = sorted(types or [])
    spec["target"] = target.name if target is not None else "count"
    report = ReplayReport(
        target=spec["target"], by=by, topics=topics, gaps=gaps, dry_run=opts.dry_run,
        checkpoint=opts.checkpoint,
    )
    return execute(
        bus, spec, opts, report,
        lambda spec, ckpt: ReplayRun(bus, target, spec, opts, report, ckpt, progress),
    )


def execute(
    bus: EventBus | None,
    spec: dict[str, Any],
    opts: ReplayOptions,
    report: ReplayReport,
    make_run: Callable[[dict[str, Any], Checkpoint | None], Any],
) -> ReplayReport:
    """Open the checkpoint (when asked and there is a bus), run ``make_run(spec, ckpt)``,
    and total the report: shared by stream replays and archive replays.

    Raises :class:`ReplayInterrupted` (carrying the report) when delivery fails.
    """
    ckpt: Checkpoint | None = None
    if opts.checkpoint and bus is not None:  # a dry run only peeks: it counts what is left
        ckpt, spec = Checkpoint.open(bus, opts.checkpoint, spec, dry_run=opts.dry_run)
        report.resumed = ckpt is not None and ckpt.resumed
        if ckpt is not None and ckpt.state == "complete":
            report.already_complete = True
            if not opts.dry_run:
                report.total_delivered = ckpt.delivered
            return report
    start = time.monotonic()
    try:
        make_run(spec, ckpt).run()
    except (ChiError, rex.RedisError, OSError, KeyboardInterrupt) as exc:
        raise ReplayInterrupted(report, exc) from exc
    finally:
        report.elapsed_s = time.monotonic() - start
        if ckpt is not None and not opts.dry_run:
            report.total_delivered = ckpt.delivered + report.delivered
    return report


def choose_target(
    bus: EventBus, *, to_sub: str | None = None, republish: bool = False,
    out: IO[bytes] | None = None,
) -> tuple[Target | None, list[str]]:
    """The target for the CLI's choice, and the topics to read when none are given:
    the subscription's topics for ``--to``, else every topic."""
    known = bus.store.topics()
    if to_sub:
        record = registered(bus, to_sub)
        return QueueTarget(bus, to_sub, record.types), sorted(record.bound_topics(known))
    if republish:
        return RepublishTarget(bus), known
    if out is not None:
        return PrintTarget(bus, out), known
    return None, known


def estimate_total(
    bus: EventBus, topics: list[str], by: By, since: TimePoint | None, until: TimePoint | None
) -> int:
    """Roughly how many entries the range holds (for a progress bar)."""
    client: Any = bus.client
    k = bus.keys

    def run() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for t in topics:
            if by == "event-time":  # late events; the on-time ones by their ids (3.3)
                pipe.zcount(k.index(t), since.lower_us() if since else "-inf",
                            until.upper_us() if until else "+inf")
            pipe.xinfo_stream(k.stream(t))
        return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    total = 0
    for r in bus.call(run):
        if isinstance(r, int):
            total += r
        elif isinstance(r, dict) and r.get("first-entry"):
            first = parse_id(r["first-entry"][0])[0]
            last = parse_id(r["last-entry"][0])[0]
            lo = max(first, since.lower_id()[0]) if since else first
            hi = min(last, until.upper_id()[0]) if until else last
            span = max(last - first, 1)
            frac = 1.0 if hi >= last and lo <= first else max(hi - lo, 0) / span
            total += int(r["length"] * min(frac, 1.0))
    return total
