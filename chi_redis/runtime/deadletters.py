"""Dead letters: what kept failing, with its provenance, ready to inspect and redrive.

One dead-letter stream per subscription (``chi:q:{<sub>}:dlq``).  Each entry records the
event (id, type, topic), where it came from (source stream and entry id), why it failed
(reason, error type and message, a capped and redacted traceback tail), how often it was
delivered, the first and last failure time, and the body needed to redrive it.
"""

from __future__ import annotations

import re
import time
import traceback
from typing import TYPE_CHECKING, Any

import dramatiq
import msgspec

from ..backend.scripts import script
from ..errors import NotFoundError, scrub
from ..events.names import validate_name
from .encoder import decode_message, encode_message

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["DeadLetter", "dead_letter_fields", "list_dead_letters", "purge", "redrive"]

TRACEBACK_CHARS = 2000
MESSAGE_CHARS = 500
DLQ_MAXLEN = 1_000_000
_SECRET = re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key)(['\"]?\s*[:=]\s*)(\S+)")
_body = msgspec.msgpack.Encoder()
_body_dec = msgspec.msgpack.Decoder(dict[str, bytes])


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead-letter entry."""

    id: str
    subscription: str
    reason: str
    error_type: str
    error: str
    traceback: str
    event_id: str
    type: str
    topic: str
    source_stream: str
    source_id: str
    deliveries: int
    attempts: int
    first_failure_ms: int
    last_failure_ms: int
    kind: str
    body: bytes = b""


def redact(text: str) -> str:
    """Remove URL passwords and ``password=...``-style values from text."""
    return _SECRET.sub(r"\1\2***", scrub(text))


def dead_letter_fields(
    *,
    sub: str,
    reason: str,
    exc: BaseException | None,
    kind: str,
    body: bytes,
    event_id: str = "",
    type_: str = "",
    topic: str = "",
    source_stream: str = "",
    source_id: str = "",
    deliveries: int = 1,
    attempts: int = 1,
    first_failure_ms: int | None = None,
    tb: str | None = None,
) -> dict[str, Any]:
    """The fields of a dead-letter entry (secrets redacted, text capped)."""
    now = int(time.time() * 1000)
    if tb is None and exc is not None and exc.__traceback__ is not None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "sub": sub,
        "reason": reason,
        "error_type": type(exc).__name__ if exc is not None else "",
        "error": redact(str(exc))[:MESSAGE_CHARS] if exc is not None else "",
        "traceback": redact(tb or "")[-TRACEBACK_CHARS:],
        "event_id": event_id,
        "type": type_,
        "topic": topic,
        "src": source_stream,
        "src_id": source_id,
        "deliveries": deliveries,
        "attempts": attempts,
        "first_failure": first_failure_ms or now,
        "last_failure": now,
        "kind": kind,
        "body": body,
    }


def _to_dead_letter(sub: str, sid: bytes, f: dict[bytes, bytes]) -> DeadLetter:
    def s(k: bytes) -> str:
        return f.get(k, b"").decode(errors="replace")

    def i(k: bytes) -> int:
        try:
            return int(f.get(k, b"0"))
        except ValueError:
            return 0

    return DeadLetter(
        id=sid.decode(), subscription=sub, reason=s(b"reason"), error_type=s(b"error_type"),
        error=s(b"error"), traceback=s(b"traceback"), event_id=s(b"event_id"), type=s(b"type"),
        topic=s(b"topic"), source_stream=s(b"src"), source_id=s(b"src_id"),
        deliveries=i(b"deliveries"), attempts=i(b"attempts"),
        first_failure_ms=i(b"first_failure"), last_failure_ms=i(b"last_failure"),
        kind=s(b"kind"), body=f.get(b"body", b""),
    )


def list_dead_letters(
    bus: EventBus, sub: str, *, after: str | None = None, count: int = 100,
    ids: list[str] | None = None,
) -> list[DeadLetter]:
    """Dead letters of ``sub``, oldest first (``after`` is an exclusive entry-id cursor)."""
    validate_name(sub, "subscription")
    key = bus.keys.dlq(sub)
    client = bus.client
    if ids is not None:
        def each() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for i in ids:
                pipe.xrange(key, i, i)
            return pipe.execute()
        found = [r[0] for r in bus.call(each) if r]
    else:
        lo = "-" if after is None else f"({after}"
        found = bus.call(lambda: client.xrange(key, lo, "+", count=count))
    return [_to_dead_letter(sub, sid, f) for sid, f in found]


def redrive_message(dl: DeadLetter) -> bytes:
    """The queue message that re-runs a dead letter (retry count reset)."""
    if dl.kind == "task":
        msg = decode_message(dl.body)
        options = {k: v for k, v in msg.options.items() if k not in ("retries", "traceback")}
        options["redriven_from"] = dl.id
        return encode_message(dramatiq.Message(
            queue_name=msg.queue_name, actor_name=msg.actor_name, args=msg.args,
            kwargs=msg.kwargs, options=options, message_id=msg.message_id,
            message_timestamp=int(time.time() * 1000),
        ))
    fields = _body_dec.decode(dl.body)
    return encode_message(dramatiq.Message(
        queue_name=dl.subscription, actor_name=dl.subscription,
        args=(dl.topic, fields), kwargs={},
        options={"src": dl.source_stream, "src_id": dl.source_id, "redriven_from": dl.id},
        message_id=f"{dl.subscription}:{dl.event_id}",
        message_timestamp=int(time.time() * 1000),
    ))


def encode_body(fields: dict[bytes, bytes] | dict[str, bytes]) -> bytes:
    """Encode an event entry's fields as a dead-letter body."""
    return _body.encode({(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()})


def redrive(bus: EventBus, sub: str, ids: list[str] | None = None) -> int:
    """Put dead letters of ``sub`` (all, or those ``ids``) back on its queue, each once.

    Returns how many were moved.  Unknown ids raise :class:`NotFoundError`.
    """
    validate_name(sub, "subscription")
    moved = 0
    s = script("redrive")
    keys = [bus.keys.dlq(sub), bus.keys.queue(sub)]
    cursor: str | None = None
    while True:
        if ids is not None:
            batch = list_dead_letters(bus, sub, ids=ids)
            missing = set(ids) - {d.id for d in batch}
            if missing:
                raise NotFoundError(f"no dead letter {sorted(missing)[0]} in {sub!r}")
        else:
            batch = list_dead_letters(bus, sub, after=cursor, count=500)
        if not batch:
            return moved
        argv: list[Any] = []
        for dl in batch:
            argv += (dl.id, redrive_message(dl))
        moved += int(bus.call(lambda argv=argv: _eval(bus, s, keys, argv)))
        if ids is not None:
            return moved
        cursor = batch[-1].id


def _eval(bus: EventBus, s: Any, keys: list[str], argv: list[Any]) -> Any:
    return s.run(bus.client, keys, argv)


def purge(bus: EventBus, sub: str, *, before_ms: int | None = None) -> int:
    """Delete dead letters of ``sub`` (all, or those dead-lettered before ``before_ms``)."""
    validate_name(sub, "subscription")
    key = bus.keys.dlq(sub)
    if before_ms is None:
        return _purge_all(bus, key)
    removed = 0
    while True:
        found = bus.call(lambda: bus.client.xrange(key, "-", f"({before_ms}-0", count=1000))
        if not found:
            return removed
        ids = [sid for sid, _ in found]
        removed += int(bus.call(lambda ids=ids: bus.client.xdel(key, *ids)))


def _purge_all(bus: EventBus, key: str) -> int:
    def count_and_delete() -> Any:
        pipe = bus.client.pipeline(transaction=True)  # one MULTI: nothing slips in between
        pipe.xlen(key)
        pipe.delete(key)
        return pipe.execute()

    return int(bus.call(count_and_delete)[0])
