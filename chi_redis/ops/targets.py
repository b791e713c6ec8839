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

from ..backend.scripts import bulk, script
from ..events.names import validate_name
from ..events.partitioning import topic_of_part
from ..publish.packing import Call
from ..publish.writer import checkpoint_argv, pack_republish
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
    # The subscription whose slot a delivery writes into (its checkpoint shard on a
    # cluster), None when it writes elsewhere or per topic.
    slot_tag: str | None
    per_topic: bool  # writes each item into its topic's slot (split by topic on a cluster)

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
_encode = _MSGPACK.encode
#: msgpack str headers by length (fixstr, str8): ids are ASCII and short.
_STR_HEADS = [bytes((0xA0 | n,)) for n in range(32)] + [
    b"\xd9" + bytes((n,)) for n in range(32, 256)
]


def _mp_str(raw: bytes) -> bytes:
    """``raw`` (bytes holding a str) as msgpack encodes the str, as ``str.decode(errors=
    "replace")`` would read it."""
    if len(raw) < 256 and raw.isascii():
        return _STR_HEADS[len(raw)] + raw
    return _encode(raw.decode(errors="replace"))


class _Template:
    """The bytes of a replay message around its variable parts, for one topic.

    ``_Message`` encodes as a map in field order; everything but the fields, the source
    id, the message id and the timestamp is the same for every entry of a topic, so a
    message is ``head + fields + mid + src_id + tail + message_id + stamp``
    (checked against ``_Message`` when built).
    """

    def __init__(self, sub: str, topic: str, stream: str) -> None:
        whole = _encode(_Message(sub, sub, (topic, {}), {},
                                 {"src": stream, "src_id": "", "replay": True}, "", 0))
        self.head = _encode({"queue_name": sub, "actor_name": sub})[1:]
        self.head = b"\x87" + self.head + b"\xa4args\x92" + _encode(topic)
        self.mid = b"\xa6kwargs\x80\xa7options\x83\xa3src" + _encode(stream) + b"\xa6src_id"
        self.tail = b"\xa6replay\xc3\xaamessage_id"
        stamp = b"\xb1message_timestamp"
        if whole != b"".join((self.head, b"\x80", self.mid, b"\xa0", self.tail, b"\xa0",
                              stamp, b"\x00")):
            raise AssertionError("replay message template does not match the message layout")
        self.stamp = stamp


class QueueTarget:
    """Deliver into one subscription's private stream (``keys.queue(sub)``).

    Each entry becomes the Dramatiq message its actor runs, built the way
    :func:`chi_redis.ops.deadletters.redrive_message` builds one, marked ``replay``.
    """

    skips_archived = True
    ordered = False
    per_topic = False

    def __init__(self, bus: EventBus, sub: str, types: tuple[str, ...] = ()) -> None:
        self.bus = bus
        self.sub = validate_name(sub, "subscription")
        self.slot_tag: str | None = self.sub
        self.name = f"to:{sub}"
        self.types = types
        self.queue = bus.keys.queue(sub)
        self._script = script("replay_queue")
        self._templates: dict[str, _Template] = {}
        self._id_prefix = f"{self.sub}:".encode()

    def _template(self, topic: str) -> _Template:
        tpl = self._templates.get(topic)
        if tpl is None:
            tpl = self._templates[topic] = _Template(  # a partition's events: its topic's
                self.sub, topic_of_part(topic), self.bus.keys.stream(topic))
        return tpl

    def message(self, item: Item, now_ms: int | None = None) -> bytes:
        """The encoded Dramatiq message that runs the subscription's actor on this entry.

        Byte for byte what ``encode_message(dramatiq.Message(...))`` gives, put together
        from a per-topic template around the encoded fields (a fifth of the cost of a
        ``dramatiq.Message``); the fields go in as read
        (:func:`chi_redis.store.history.reader` decoded their names).
        """
        return self.messages([item], now_ms)[0]

    def messages(self, items: list[Item], now_ms: int | None = None) -> list[bytes]:
        """:meth:`message` of each item (one timestamp for all)."""
        stamp_ms = int(time.time() * 1000) if now_ms is None else now_ms
        prefix, encode, join, heads = self._id_prefix, _encode, b"".join, _STR_HEADS
        out: list[bytes] = []
        append = out.append
        tpl: _Template | None = None
        topic = ""
        head = mid = tail = stamp = b""
        for it in items:
            if tpl is None or it[0] != topic:
                topic = it[0]
                tpl = self._template(topic)
                head, mid, tail = tpl.head, tpl.mid, tpl.tail
                stamp = tpl.stamp + encode(stamp_ms)
            fields, sid = it[2], it[1]
            message_id = prefix + fields.get("id", b"")
            if len(sid) < 256 and sid.isascii() and len(message_id) < 256 \
                    and message_id.isascii():
                append(join((head, encode(fields), mid, heads[len(sid)], sid, tail,
                             heads[len(message_id)], message_id, stamp)))
            else:
                append(join((head, encode(fields), mid, _mp_str(sid), tail,
                             _mp_str(message_id), stamp)))
        return out

    def prepare(self, items: list[Item]) -> tuple[bytes, int]:
        """The messages framed as the script's arguments (``replay_queue.lua``), and how
        many."""
        msgs = self.messages(items)
        return bulk(msgs), len(msgs)

    def send(self, payload: tuple[bytes, int], ckpt_key: str, ckpt: dict[str, str]) -> int:
        keys = [self.queue, ckpt_key or self.queue]
        run = partial(self._script.run_framed, self.bus.client, keys, checkpoint_argv(ckpt),
                      *payload)
        return int(self.bus.call_once(run))


class RepublishTarget:
    """Append each entry to its topic again as a new event marked as a replay."""

    name = "republish"
    types: tuple[str, ...] = ()
    skips_archived = True
    ordered = False
    slot_tag: str | None = None
    per_topic = True

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
    slot_tag: str | None = None
    per_topic = False

    def __init__(self, bus: EventBus, out: IO[bytes]) -> None:
        self.bus = bus
        self.out = out

    def prepare(self, items: list[Item]) -> tuple[bytes, int]:
        return self.bus.codec.envelope_lines(items), len(items)

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
