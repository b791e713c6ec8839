"""Resumable replays: the checkpoint hash and the folding of out-of-order batches.

A replay run with a checkpoint name keeps its spec and progress in a hash under
``keys.checkpoint(name)``.  Its targets record each batch *in the same Lua script as the
delivery* (see :mod:`chi_redis.ops.targets`), so an interrupted replay run again resumes
exactly where it stopped.  Batches delivered in parallel complete out of order: each
records its own range (``done:<n>``), and :class:`Folding` folds the contiguous prefix
into the position as batches complete.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..backend.cluster import is_cluster
from ..errors import ValidationError
from ..store.history import By, pos_key

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["Checkpoint", "Folding", "list_checkpoints"]


class Checkpoint:
    """A replay checkpoint: a Redis hash holding the replay's spec and progress.

    Fields: ``spec`` (JSON: source, resolved bounds, target), ``pos`` (JSON: topic →
    last position delivered, contiguously), ``done:<n>`` (JSON: topic → [first, last]
    of a batch delivered out of order), ``delivered``, ``state``.

    On a cluster a delivery cannot write this hash (``chi:replay:<name>``, in no
    subscription's or topic's slot) in its script: it writes its progress fields into a
    *shard* in its own slot (``chi:replay:<name>:{<sub or topic>}``), listed in the hash's
    ``shards`` field before the first such write.  Reading merges them: each topic's
    furthest ``pos``, every ``done:<n>``, the sum of ``delivered``.  A single node keeps
    everything in the one hash, as it always did.
    """

    def __init__(self, bus: EventBus, name: str) -> None:
        self.bus = bus
        self.name = name
        self.key = bus.keys.checkpoint(name)
        self.cluster = is_cluster(bus.client)
        raw: dict[bytes, bytes] = bus.call(lambda: bus.client.hgetall(self.key))
        f = _text(raw)
        self.shards: list[str] = json.loads(f.get("shards", "[]"))
        hashes = [f, *self._read_shards()]
        self.spec: dict[str, Any] | None = json.loads(f["spec"]) if "spec" in f else None
        self.resumed = self.spec is not None  # an earlier run started it
        by: By = (self.spec or {}).get("by", "append")
        self.pos: dict[str, str] = {}
        self.done: list[tuple[str, str, str]] = []
        self.done_fields: list[str] = []
        self.delivered = 0
        for h in hashes:
            for topic, p in json.loads(h.get("pos", "{}")).items():
                old = self.pos.get(topic)
                if old is None or pos_key(p, by) > pos_key(old, by):
                    self.pos[topic] = p
            for k in h:
                if k.startswith("done:"):
                    self.done_fields.append(k)
                    for topic, (lo, hi) in json.loads(h[k]).items():
                        self.done.append((topic, lo, hi))
            self.delivered += int(h.get("delivered", 0))
        self.done_fields = sorted(set(self.done_fields))
        self.state = f.get("state", "")
        self.next_batch = 1 + max((int(k[5:]) for k in self.done_fields), default=0)

    def _read_shards(self) -> list[dict[str, str]]:
        if not self.shards:
            return []
        keys = [self.bus.keys.checkpoint_shard(self.name, t) for t in self.shards]

        def run() -> list[Any]:
            pipe = self.bus.client.pipeline(transaction=False)
            for k in keys:
                pipe.hgetall(k)
            return pipe.execute()

        return [_text(r) for r in self.bus.call(run)]

    def key_for(self, tag: str | None) -> str:
        """The hash a delivery into the slot of ``tag`` (a subscription or a topic; None:
        no script) records its progress in: this one on a single node, the shard of
        ``tag`` on a cluster (listed in ``shards`` first, so a reader finds it)."""
        if not self.cluster or tag is None:
            return self.key
        if tag not in self.shards:
            self.shards.append(tag)
            shards = json.dumps(self.shards)
            self.bus.call(lambda: self.bus.client.hset(self.key, "shards", shards))
        return self.bus.keys.checkpoint_shard(self.name, tag)

    def begin(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Start or resume: returns the spec to use (the stored one when resuming)."""
        if self.spec is None:
            mapping: Any = {"spec": json.dumps(spec), "state": "running"}
            self.bus.call(lambda: self.bus.client.hset(self.key, mapping=mapping))
            self.spec = spec
            return spec
        ident = ("by", "topics", "target", "types")
        if any(self.spec.get(k) != spec.get(k) for k in ident):
            raise ValidationError(
                f"checkpoint {self.name!r} belongs to another replay"
                f" ({self._describe(self.spec)}); use another --checkpoint name",
                field="checkpoint",
            )
        return self.spec

    @staticmethod
    def _describe(spec: dict[str, Any]) -> str:
        return f"{spec.get('target')} from {','.join(spec.get('topics', []))} by {spec.get('by')}"

    def covered(self, topic: str, key: tuple[Any, ...], by: By) -> bool:
        """Whether an earlier run already delivered the entry at ``key`` (out of order)."""
        return any(
            t == topic and pos_key(lo, by) <= key <= pos_key(hi, by) for t, lo, hi in self.done
        )

    def advance(self, pos: dict[str, str], done: list[str]) -> None:
        """Record a contiguous position and drop the out-of-order records it covers."""
        client = self.bus.client

        def run() -> None:
            pipe = client.pipeline(transaction=True)
            pipe.hset(self.key, "pos", json.dumps(pos))
            if done:
                pipe.hdel(self.key, *done)
            pipe.execute()

        def run_cluster() -> None:
            # The position first: a record dropped before it would be delivered again.
            client.hset(self.key, "pos", json.dumps(pos))
            if done:
                pipe = client.pipeline(transaction=False)
                for key in (self.key, *(self.bus.keys.checkpoint_shard(self.name, t)
                                        for t in self.shards)):
                    pipe.hdel(key, *done)
                pipe.execute()

        self.bus.call(run_cluster if self.cluster else run)

    def finish(self, pos: dict[str, str]) -> None:
        self.advance(pos, self.done_fields)
        self.bus.call(lambda: self.bus.client.hset(self.key, "state", "complete"))

    @classmethod
    def open(
        cls, bus: EventBus, name: str, spec: dict[str, Any], *, dry_run: bool
    ) -> tuple[Checkpoint | None, dict[str, Any]]:
        """The checkpoint to resume from, and the spec to run (the stored one on resume).

        A dry run writes nothing: it gets the checkpoint only when one exists (to count
        what is left), None otherwise.  ``resumed`` says whether it existed.
        """
        ckpt = cls(bus, name)
        if dry_run and not ckpt.resumed:
            return None, spec
        return ckpt, ckpt.begin(spec)

    @staticmethod
    def pos_fields(pos: dict[str, str]) -> dict[str, str]:
        """The fields a delivery records for the contiguous position ``pos``."""
        return {"pos": json.dumps(pos)}

    @staticmethod
    def batch_fields(no: int, ranges: dict[str, tuple[str, str]]) -> dict[str, str]:
        """The fields a delivery records for batch ``no`` delivered out of order."""
        return {f"done:{no}": json.dumps(ranges)}


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def list_checkpoints(bus: EventBus) -> list[Checkpoint]:
    """Every replay checkpoint of the namespace, by name (a SCAN: for operators' pages)."""
    prefix = bus.keys.checkpoint("")
    pattern = prefix.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + "*"
    keys = bus.call(lambda: list(bus.client.scan_iter(match=pattern, count=1000)))
    names = sorted(k.decode()[len(prefix):] if isinstance(k, bytes) else str(k)[len(prefix):]
                   for k in keys)
    # A name has no ':', so a cluster's per-slot progress shards (NAME:{tag}) are left out.
    return [Checkpoint(bus, name) for name in names if name and ":" not in name]


class Folding:
    """Batches delivered out of order, folded into the contiguous position as they finish.

    Batch numbers are handed out in reading order; a batch's position is where reading
    stood after it.  Once every batch up to some number has finished, the position moves
    there and the ``done:<n>`` records it makes redundant are dropped.
    """

    def __init__(self, ckpt: Checkpoint | None) -> None:
        self.ckpt = ckpt
        self.next_batch = ckpt.next_batch if ckpt else 1
        self._order: list[tuple[int, dict[str, str], str | None]] = []  # (no, pos, field)
        self._finished: set[int] = set()

    def start(self, pos: dict[str, str], recorded: bool) -> int:
        """Number the next batch, after which reading stands at ``pos``; ``recorded``: it
        writes a ``done:<n>`` record (it has entries to deliver and there is a checkpoint)."""
        no = self.next_batch
        self.next_batch += 1
        self._order.append((no, dict(pos), f"done:{no}" if recorded else None))
        return no

    def finished(self, no: int) -> None:
        """Batch ``no`` was delivered (or had nothing to deliver)."""
        self._finished.add(no)

    def fold(self) -> dict[str, str] | None:
        """Move the checkpoint to the end of the finished prefix; that position, or None
        when it did not move."""
        upto = 0
        while upto < len(self._order) and self._order[upto][0] in self._finished:
            upto += 1
        if not upto:
            return None
        pos = self._order[upto - 1][1]
        fields = [f for _, _, f in self._order[:upto] if f]
        del self._order[:upto]
        if self.ckpt:
            self.ckpt.advance(pos, fields)
        return pos
