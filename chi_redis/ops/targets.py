"""Replay targets (see :mod:`chi_redis.ops.replay`).

- :class:`QueueTarget` — one subscription's private stream, as the Dramatiq messages its
  actor runs (marked ``replay``); other subscriptions see nothing;
- :class:`RepublishTarget` — back onto the topic as new events (new ids) whose metadata
  carries ``chi_replay=true`` and ``chi_replay_of=<original id>``;
- :class:`PrintTarget` — JSON lines.

The replay checkpoint (:class:`chi_redis.ops.checkpoint.Checkpoint`, a hash under
``keys.checkpoint(name)``): the queue and republish targets write it in the same Lua script
as the entries they deliver; the print target right after writing (so its last batch may be
printed twice after a crash).  Script calls that deliver are never retried: after a lost
reply a retry would deliver twice, and the checkpoint tells a rerun where it really stopped.
"""

from __future__ import annotations

import time
from functools import partial
from typing import IO, TYPE_CHECKING, Any, Protocol

import msgspec

from ..backend.scripts import script
from ..events.names import validate_name
from ..publish.writer import Call, checkpoint_argv, pack_republish
from ..store.history import Item

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["PrintTarget", "QueueTarget", "RepublishTarget", "Target"]


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


class QueueTarget:
    """Deliver into one subscription's private stream (``keys.queue(sub)``).

    Each entry becomes the Dramatiq message its actor runs, built the way
    :func:`chi_redis.ops.deadletters.redrive_message` builds one, marked ``replay``.
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
        argv: list[Any] = checkpoint_argv(ckpt)
        argv += payload
        keys = [self.queue, ckpt_key or self.queue]
        return int(self.bus.call_once(partial(self._script.run, self.bus.client, keys, argv)))


class RepublishTarget:
    """Append each entry to its topic again as a new event marked as a replay."""

    name = "republish"
    types: tuple[str, ...] = ()
    skips_archived = True
    ordered = False

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def prepare(self, items: list[Item]) -> Call:
        return pack_republish(self.bus.keys, items)

    def send(self, payload: Call, ckpt_key: str, ckpt: dict[str, str]) -> int:
        return len(self.bus.writer.republish(payload, ckpt_key, ckpt))


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

            self.bus.call_once(record)
        return payload[1]
