"""Replay targets and checkpoints (see :mod:`chi_redis.ops.replay`).

- :class:`QueueTarget` — one subscription's private stream, as the Dramatiq messages its
  actor runs (marked ``replay``); other subscriptions see nothing;
- :class:`RepublishTarget` — back onto the topic as new events (new ids) whose metadata
  carries ``chi_replay=true`` and ``chi_replay_of=<original id>``;
- :class:`PrintTarget` — JSON lines.

A :class:`Checkpoint` is a hash under ``keys.checkpoint(name)``.  The queue and republish
targets write it in the same Lua script as the entries they deliver; the print target
right after writing (so its last batch may be printed twice after a crash).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Protocol

import msgspec
import redis.exceptions as rex

from ..backend.connection import map_redis_error
from ..backend.scripts import Script, script
from ..errors import NotFoundError, ValidationError
from ..events.event import new_event_id
from ..events.names import validate_name
from ..store.history import By, Item, pos_key

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = [
    "Checkpoint",
    "PrintTarget",
    "QueueTarget",
    "RepublishTarget",
    "Target",
    "bound_topics",
    "subscription_info",
]

_JSON = msgspec.json.Encoder()
_META = msgspec.json.Decoder(dict[str, Any])


# targets ---------------------------------------------------------------------------------
class Target(Protocol):
    """Where replayed entries go.

    ``prepare`` turns a batch into what ``send`` writes (CPU work, on the reading thread);
    ``send`` delivers it together with the checkpoint fields, atomically where it can.
    ``send`` may run on another thread while the next batch is prepared.
    """

    name: str
    types: tuple[str, ...]  # extra type globs the target itself accepts (AND-ed)
    skips_archived: bool
    ordered: bool  # must batches be delivered one at a time?

    def prepare(self, items: list[Item]) -> Any: ...

    def send(self, payload: Any, ckpt_key: str, ckpt: dict[str, str]) -> int: ...


class _Message(msgspec.Struct):
    """A Dramatiq message, encoded exactly as encoder.encode_message encodes one."""

    queue_name: str
    actor_name: str
    args: tuple[str, dict[str, bytes]]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    message_id: str
    message_timestamp: int


_MSGPACK = msgspec.msgpack.Encoder()


def _run(bus: EventBus, s: Script, keys: list[str], argv: list[Any]) -> Any:
    def call() -> Any:
        return s.run(bus.client, keys, argv)

    # Never retried: after a lost reply a retry would deliver twice.  The checkpoint tells
    # a rerun where the replay really stopped.
    return _once(bus, call)


def _once(bus: EventBus, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except rex.RedisError as exc:
        raise map_redis_error(exc, bus._url, bus._password) from None


def _pairs(ckpt: dict[str, str]) -> list[str]:
    out = [str(len(ckpt))]
    for k, v in ckpt.items():
        out += (k, v)
    return out


class QueueTarget:
    """Deliver into one subscription's private stream (``keys.queue(sub)``).

    Each entry becomes the Dramatiq message its actor runs, built the way
    :func:`chi_redis.runtime.deadletters.redrive_message` builds one, marked ``replay``.
    """

    skips_archived = True
    ordered = False

    def __init__(self, bus: EventBus, sub: str, types: tuple[str, ...] = ()) -> None:
        self.bus = bus
        self.sub = validate_name(sub, "subscription")
        self.name = f"to:{sub}"
        self.types = types
        self.queue = bus.keys.queue(sub)
        self._script = script("replay_queue")
        self._streams: dict[str, str] = {}

    def message(self, item: Item, now_ms: int | None = None) -> bytes:
        """The encoded Dramatiq message that runs the subscription's actor on this entry.

        Byte for byte what ``encode_message(dramatiq.Message(...))`` gives (a msgspec
        Struct instead of a ``dramatiq.Message``: a third of the cost per entry); the
        fields go in as read (:func:`chi_redis.store.history.reader` decoded their names).
        """
        topic, sid, fields, _ = item
        sub = self.sub
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = self.bus.keys.stream(topic)
        event_id = fields.get("id", b"").decode(errors="replace")
        return _MSGPACK.encode(_Message(
            sub, sub, (topic, fields), {},
            {"src": stream, "src_id": sid.decode(), "replay": True},
            f"{sub}:{event_id}", int(time.time() * 1000) if now_ms is None else now_ms,
        ))

    def prepare(self, items: list[Item]) -> list[bytes]:
        now_ms = int(time.time() * 1000)
        return [self.message(it, now_ms) for it in items]

    def send(self, payload: list[bytes], ckpt_key: str, ckpt: dict[str, str]) -> int:
        argv: list[Any] = _pairs(ckpt)
        argv += payload
        return int(_run(self.bus, self._script, [self.queue, ckpt_key or self.queue], argv))


class RepublishTarget:
    """Append each entry to its topic again as a new event marked as a replay."""

    name = "republish"
    types: tuple[str, ...] = ()
    skips_archived = True
    ordered = False

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._script = script("replay_topic")

    def prepare(self, items: list[Item]) -> tuple[list[str], list[Any]]:
        k = self.bus.keys
        keys: list[str] = []
        argv: list[Any] = []
        for topic, _sid, f, _ in items:
            raw_meta = f.get("meta", b"{}")
            try:
                meta = _META.decode(raw_meta) if raw_meta != b"{}" else {}
            except msgspec.DecodeError:
                meta = {}
            meta["chi_replay"] = True
            meta["chi_replay_of"] = f.get("id", b"").decode(errors="replace")
            keys += (k.stream(topic), k.index(topic))
            argv += (
                topic, new_event_id(), f.get("type", b""), f.get("ts", b"0"),
                f.get("ver", b"1.0"), _JSON.encode(meta), f.get("enc", b"mp"),
                f.get("data", b""),
            )
        return keys, argv

    def send(self, payload: tuple[list[str], list[Any]], ckpt_key: str,
             ckpt: dict[str, str]) -> int:
        k = self.bus.keys
        keys = [k.ids(), k.topics(), ckpt_key or k.ids(), *payload[0]]
        return len(_run(self.bus, self._script, keys, [*_pairs(ckpt), *payload[1]]))


class PrintTarget:
    """Write each entry as one JSON line (the event envelope)."""

    name = "print"
    types: tuple[str, ...] = ()
    skips_archived = False
    ordered = True

    def __init__(self, bus: EventBus, out: IO[bytes]) -> None:
        self.bus = bus
        self.out = out

    def prepare(self, items: list[Item]) -> tuple[bytes, int]:
        codec = self.bus.codec
        lines = [codec.envelope_json(t, sid, f) for t, sid, f, _ in items]
        lines.append(b"")
        return b"\n".join(lines), len(items)

    def send(self, payload: tuple[bytes, int], ckpt_key: str, ckpt: dict[str, str]) -> int:
        self.out.write(payload[0])
        self.out.flush()
        if ckpt:
            client: Any = self.bus.client

            def record() -> None:
                pipe = client.pipeline(transaction=True)
                pipe.hset(ckpt_key, mapping=ckpt)
                pipe.hincrby(ckpt_key, "delivered", payload[1])
                pipe.execute()

            _once(self.bus, record)
        return payload[1]


def subscription_info(bus: EventBus, sub: str) -> dict[str, Any]:
    """The registry entry of ``sub``; :class:`NotFoundError` when it was never registered."""
    validate_name(sub, "subscription")
    raw = bus.call(lambda: bus.client.hget(bus.keys.subs(), sub))
    if raw is None:
        raise NotFoundError(
            f"unknown subscription {sub!r}: not in the registry (a worker registers it when"
            " it starts; `chi-redis subscriptions list` shows the known ones)"
        )
    try:
        info = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        info = {}
    return info if isinstance(info, dict) else {}


def bound_topics(info: dict[str, Any], known: list[str]) -> list[str]:
    """The topics a registered subscription reads (as Subscription.bound_topics does)."""
    if info.get("topics"):
        return sorted(info["topics"])
    types = info.get("types") or []
    if info.get("wildcard") or any(t.split(".", 1)[0] == "*" for t in types):
        return sorted(known)
    return sorted({t.split(".", 1)[0] for t in types})


# checkpoints -------------------------------------------------------------------------------
class Checkpoint:
    """A replay checkpoint: a Redis hash holding the replay's spec and progress.

    Fields: ``spec`` (JSON: source, resolved bounds, target), ``pos`` (JSON: topic →
    last position delivered, contiguously), ``done:<n>`` (JSON: topic → [first, last]
    of a batch delivered out of order), ``delivered``, ``state``.
    """

    def __init__(self, bus: EventBus, name: str) -> None:
        self.bus = bus
        self.name = name
        self.key = bus.keys.checkpoint(name)
        raw: dict[bytes, bytes] = bus.call(lambda: bus.client.hgetall(self.key))
        f = {k.decode(): v.decode() for k, v in raw.items()}
        self.spec: dict[str, Any] | None = json.loads(f["spec"]) if "spec" in f else None
        self.pos: dict[str, str] = json.loads(f.get("pos", "{}"))
        self.done: list[tuple[str, str, str]] = []
        self.done_fields = [k for k in f if k.startswith("done:")]
        for k in self.done_fields:
            for topic, (lo, hi) in json.loads(f[k]).items():
                self.done.append((topic, lo, hi))
        self.delivered = int(f.get("delivered", 0))
        self.state = f.get("state", "")
        self.next_batch = 1 + max((int(k[5:]) for k in self.done_fields), default=0)

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

        self.bus.call(run)

    def finish(self, pos: dict[str, str]) -> None:
        self.advance(pos, self.done_fields)
        self.bus.call(lambda: self.bus.client.hset(self.key, "state", "complete"))
