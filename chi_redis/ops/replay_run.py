"""Running a replay: read the planned range, filter it, deliver it, move the checkpoint.

:func:`chi_redis.ops.replay.replay` plans the run and hands it to :class:`ReplayRun`:
batches are read a page ahead, filtered (types, archived entries, what an earlier run
already delivered), and sent to the target one at a time, or on ``workers`` threads when
the target allows it (completed batches are then folded into the checkpoint in order).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from ..backend.cluster import is_cluster
from ..backend.streamids import parse_id
from ..store.history import (
    By,
    Item,
    index_pages,
    item_pos,
    merged,
    pos_key,
    prefetched,
    rechunk,
    stream_pages,
)
from ..store.query import TypeFilter
from .checkpoint import Checkpoint, Folding
from .targets import Target

if TYPE_CHECKING:
    from ..publish.bus import EventBus
    from .replay import ReplayOptions, ReplayReport

__all__ = ["ReplayRun"]


class _Skipped(Exception):
    """A batch not sent because one before it failed (that error is the one raised)."""


def _readers(
    bus: EventBus, spec: dict[str, Any], pos: dict[str, str], page: int,
    missing: Callable[[int], None],
) -> list[Iterator[list[Item]]]:
    by: By = spec["by"]
    client, keys = bus.client, bus.keys
    readers: list[Iterator[list[Item]]] = []
    for topic in spec["topics"]:
        cap = parse_id(spec["caps"][topic])
        if cap == (0, 0):
            continue
        after = pos.get(topic)
        if by == "append":
            hi = min(cap, parse_id(spec["hi"])) if spec["hi"] else cap
            readers.append(stream_pages(
                client, keys, topic, parse_id(spec["lo"]), hi,
                after=parse_id(after) if after else None, page=page,
            ))
        else:
            hi_us = spec["hi"] if spec["hi"] is not None else 2**62
            readers.append(index_pages(
                client, keys, topic, spec["lo"], hi_us, cap=cap,
                after=pos_key(after, by) if after else None,
                page=page, missing=missing,
            ))
    return readers


#: With a rate, a batch holds what the rate allows in this many seconds, so deliveries
#: are spread evenly (``--rate 250``: about 25 events every 100 ms) and a checkpoint moves
#: every ~100 ms (an interrupt loses no more than that to a rerun).
PACE_S = 0.1


def paced_batch_size(batch_size: int, rate: float | None) -> int:
    """The batch size a run uses: ``batch_size``, capped to ``rate * PACE_S`` (at least 1)."""
    if not rate:
        return batch_size
    return max(1, min(batch_size, round(rate * PACE_S)))


class Pacer:
    """Spreads deliveries at ``rate`` events per second: the first batch goes at once,
    each later one when the time of those before it is up.

    A run that falls behind (a slow target) does not catch up in a burst: no more than
    :data:`PACE_S` of credit accumulates.  Waiting ends early when ``stop`` is set.
    """

    def __init__(self, rate: float | None, stop: threading.Event | None = None) -> None:
        self.rate = rate
        self.stop = stop
        self.next: float | None = None  # when the next batch may go

    def wait(self, n: int) -> None:
        """Wait until ``n`` more events may be sent (the caller sends them right after)."""
        if not self.rate:
            return
        now = time.monotonic()
        if self.next is None or self.next < now - PACE_S:
            self.next = now
        end = self.next
        self.next += n / self.rate
        # Short sleeps, not stop.wait(): a signal handler may set ``stop`` on this thread,
        # and Event.set would deadlock there on the lock Event.wait holds.
        while (left := end - time.monotonic()) > 0 and not (self.stop and self.stop.is_set()):
            time.sleep(min(left, 0.05))


class ReplayRun:
    """One replay run: reads batches, filters them, delivers them, moves the checkpoint."""

    # What to read (``spec``, from :func:`chi_redis.ops.replay.plan` or a checkpoint) is
    # fixed before it starts; this reads, filters, delivers and counts into ``report``.

    def __init__(
        self, bus: EventBus, target: Target | None, spec: dict[str, Any], opts: ReplayOptions,
        report: ReplayReport, ckpt: Checkpoint | None, progress: Callable[[int], None] | None,
    ) -> None:
        self.bus, self.target, self.spec, self.opts = bus, target, spec, opts
        self.report, self.ckpt, self.progress = report, ckpt, progress
        self.by: By = spec["by"]
        self.pos: dict[str, str] = dict(ckpt.pos) if ckpt else {}
        self.types = TypeFilter(spec["types"], target.types if target else ())
        self.skip_archived = target.skips_archived if target else True
        self.lock = threading.Lock()
        self.batch_size = paced_batch_size(opts.batch_size, opts.rate)
        self.stop = opts.stop
        # On a cluster a target writing each item into its topic's slot (republish) is sent
        # one run of one topic at a time, in order, each with the position after it.
        # (getattr: a target of the user's written before these attributes existed.)
        self.split = bool(target is not None and getattr(target, "per_topic", False)
                          and is_cluster(bus.client))
        self._ckpt_key = ""  # where deliveries record progress (Checkpoint.key_for)

    def item_pos(self, item: Item) -> tuple[str, str]:
        """The checkpoint entry (topic, position) that delivering ``item`` moves."""
        return item[0], item_pos(item, self.by)

    def _stopping(self) -> bool:
        """Whether a stop was asked for (checked before each delivery)."""
        return self.stop is not None and self.stop.is_set()

    def _missing(self, n: int) -> None:
        self.report.missing += n

    def batches(self) -> Iterator[tuple[list[Item], list[Item], dict[str, tuple[str, str]]]]:
        """(batch, deliverable items, topic → (first, last) position in the batch)."""
        page = min(max(self.batch_size, 100), 1000)
        readers = _readers(self.bus, self.spec, self.pos, page, self._missing)
        by, rep = self.by, self.report
        done = self.ckpt.done if self.ckpt else []
        pages = prefetched(merged(readers, by, page))
        for batch in rechunk(pages, self.batch_size):
            ranges: dict[str, tuple[str, str]] = {}
            if len(self.spec["topics"]) == 1:
                t = batch[0][0]
                ranges[t] = (item_pos(batch[0], by), item_pos(batch[-1], by))
            else:
                for it in batch:
                    p = item_pos(it, by)
                    ranges[it[0]] = (ranges[it[0]][0] if it[0] in ranges else p, p)
            items = batch
            if self.types:
                items = self.types.select(items)
            rep.skipped_types += len(batch) - len(items)
            if self.skip_archived:
                n = len(items)
                items = [it for it in items if "arc" not in it[2]]
                rep.skipped_archived += n - len(items)
            if done and self.ckpt is not None:
                n = len(items)
                items = [
                    it for it in items
                    if not self.ckpt.covered(it[0], pos_key(item_pos(it, by), by), by)
                ]
                rep.already_delivered += n - len(items)
            rep.scanned += len(batch)
            yield batch, items, ranges

    def _count(self, items: list[Item]) -> None:
        per = self.report.per_topic
        with self.lock:
            self.report.delivered += len(items)
            if len(self.spec["topics"]) == 1:
                if items:  # a page whose events are all of other types counts none
                    per[items[0][0]] = per.get(items[0][0], 0) + len(items)
                return
            for it in items:
                per[it[0]] = per.get(it[0], 0) + 1

    def run(self) -> None:
        if self.opts.dry_run or self.target is None:
            for batch, items, _ in self.batches():
                self._count(items)
                if self.progress:
                    self.progress(len(batch))
            return
        if self.ckpt:
            self._ckpt_key = self.ckpt.key_for(getattr(self.target, "slot_tag", None))
        if self.opts.workers > 1 and not self.target.ordered and not self.split:
            self._parallel(self.target)
        else:
            self._serial(self.target)

    def _serial(self, target: Target) -> None:
        """Batches in order; while one is being delivered the next is prepared and queued
        behind it (the next page is read on the reader thread meanwhile).

        One sender thread keeps the order, and a batch is sent only if every one before it
        succeeded, so the checkpoint each carries is exact.  Ordered targets (print) send
        on this thread.
        """
        pacer = Pacer(self.opts.rate, self.stop)
        pending: deque[Future[int]] = deque()
        failed = threading.Event()

        def send_in_order(payload: Any, items: list[Item], fields: dict[str, str]) -> int:
            if failed.is_set():
                raise _Skipped
            try:
                return self._send(target, payload, items, fields)
            except BaseException:
                failed.set()
                raise

        def settle(keep: int) -> None:  # an error of a batch sent is raised here, in order
            while len(pending) > keep or (pending and pending[0].done()):
                pending.popleft().result()

        with ThreadPoolExecutor(1, thread_name_prefix="chi-replay-send") as pool:
            try:
                for batch, items, ranges in self.batches():
                    if items:
                        payload = None if self.split else target.prepare(items)
                        pacer.wait(len(items))
                    settle(keep=1)  # one in flight, at most one queued behind it
                    if self._stopping():
                        raise KeyboardInterrupt  # before this batch: the checkpoint stands
                    start_pos = dict(self.pos)
                    for t, (_, last) in ranges.items():
                        self.pos[t] = last
                    fields = Checkpoint.pos_fields(self.pos) if self.ckpt else {}
                    if items and self.split:
                        settle(keep=0)  # runs go out in order, each with its position
                        self._send_runs(target, items, start_pos)
                    elif items and not target.ordered:
                        pending.append(pool.submit(send_in_order, payload, items, fields))
                    else:
                        settle(keep=0)  # checkpoint writes stay in order
                        if items:
                            self._send(target, payload, items, fields)
                        elif self.ckpt:
                            self.ckpt.advance(self.pos, [])
                    if self.progress:
                        self.progress(len(batch))
                settle(keep=0)
            finally:
                failed.set()  # an error or an interrupt: nothing more goes out
                wait(list(pending))
        if self.ckpt:
            self.ckpt.finish(self.pos)

    def _parallel(self, target: Target) -> None:
        """Deliver batches on ``workers`` threads; fold completed batches into ``pos``."""
        ckpt = self.ckpt
        pacer = Pacer(self.opts.rate, self.stop)
        folding = Folding(ckpt)
        pending: dict[Future[int], int] = {}
        error: BaseException | None = None

        def reap(block: bool) -> None:
            nonlocal error
            if not pending:
                return
            done, _ = wait(list(pending), timeout=None if block else 0,
                           return_when=FIRST_COMPLETED)
            for fut in done:
                no = pending.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    error = error or exc
                else:
                    folding.finished(no)
            pos = folding.fold()
            if pos is not None:
                self.pos = pos

        running = dict(self.pos)
        with ThreadPoolExecutor(self.opts.workers, thread_name_prefix="chi-replay") as pool:
            try:
                for batch, items, ranges in self.batches():
                    payload = target.prepare(items) if items else None
                    if items:
                        pacer.wait(len(items))
                    if self._stopping():
                        error = KeyboardInterrupt()  # raised once the batches sent are in
                        break
                    for t, (_, last) in ranges.items():
                        running[t] = last
                    no = folding.start(running, recorded=bool(ckpt and items))
                    if items:
                        fields = Checkpoint.batch_fields(no, ranges) if ckpt else {}
                        pending[pool.submit(self._send, target, payload, items, fields)] = no
                    else:
                        folding.finished(no)
                    if self.progress:
                        self.progress(len(batch))
                    while len(pending) >= self.opts.workers * 2:
                        reap(block=True)
                    reap(block=False)
                    if error is not None:
                        break
            finally:
                while pending:
                    reap(block=True)
        if error is not None:
            raise error
        if ckpt:
            ckpt.finish(self.pos)

    def _send(self, target: Target, payload: Any, items: list[Item],
              fields: dict[str, str], key: str | None = None) -> int:
        n = target.send(payload, self._ckpt_key if key is None else key, fields)
        self._count(items)
        return n

    def _send_runs(self, target: Target, items: list[Item], start: dict[str, str]) -> None:
        """Deliver ``items`` one run of one topic (one slot) at a time, each script call
        recording the position after its run in the checkpoint shard of that topic; the
        last run records the batch's end (``self.pos``: what follows it is skipped).

        A failure leaves the runs before it delivered and recorded, so a rerun resumes
        exactly after them, as for a batch delivered in one call.
        """
        pos = dict(start)
        i, n = 0, len(items)
        while i < n:
            topic = items[i][0]
            j = i + 1
            while j < n and items[j][0] == topic:
                j += 1
            run = items[i:j]
            for it in run:
                k, p = self.item_pos(it)
                pos[k] = p
            if j == n:
                pos = self.pos
            key, fields = "", {}
            if self.ckpt:
                key = self.ckpt.key_for(topic)
                fields = Checkpoint.pos_fields(pos)
            self._send(target, target.prepare(run), run, fields, key)
            i = j
