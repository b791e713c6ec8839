"""Dead letters: what kept failing, with its provenance, ready to inspect and redrive.

One dead-letter stream per subscription (``chi:q:{<sub>}:dlq``), capped at
:data:`DLQ_MAXLEN` entries (approximately).  Each entry records the event (id, type, topic),
where it came from (source stream and entry id), why it failed (reason, error type and
message, a capped and redacted traceback tail), how often it was delivered, the first and
last failure time, and the body needed to redrive it.

This module builds the fields and serves the operators (list, show, count, redrive, purge);
:mod:`chi_redis.runtime.dlwrite` decides when and why a consumer dead-letters an entry and
writes it.  Building the fields never raises, whatever the entry held: a dead letter is the
last place an entry can go, so it must always be writable.
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

__all__ = [
    "DLQ_MAXLEN",
    "DeadLetter",
    "count_dead_letters",
    "dead_letter_fields",
    "dead_letters_exist",
    "decode_body",
    "encode_body",
    "get_dead_letter",
    "list_dead_letters",
    "purge",
    "redrive",
    "redrive_message",
]

TRACEBACK_CHARS = 2000
MESSAGE_CHARS = 500
#: The cap of every dead-letter stream (``XADD MAXLEN ~``); ``BrokerOptions.dlq_maxlen``.
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
    event_id: Any = "",
    type_: Any = "",
    topic: Any = "",
    source_stream: Any = "",
    source_id: Any = "",
    deliveries: Any = 1,
    attempts: Any = 1,
    first_failure_ms: Any = None,
    tb: Any = None,
) -> dict[str, Any]:
    """The fields of a dead-letter entry (secrets redacted, text capped); never raises.

    Values of any type are accepted (they may come from a malformed message): text becomes
    valid UTF-8 (bytes decoded with replacement), counts and times that are not integers
    become their defaults, so every value is ``str``, ``bytes`` or ``int``.
    """
    now = int(time.time() * 1000)
    if tb is None and exc is not None and exc.__traceback__ is not None:
        tb = _format_traceback(exc)
    return {
        "sub": _text(sub),
        "reason": _text(reason),
        "error_type": type(exc).__name__ if exc is not None else "",
        "error": redact(_text(exc))[:MESSAGE_CHARS] if exc is not None else "",
        "traceback": redact(_text(tb))[-TRACEBACK_CHARS:],
        "event_id": _text(event_id),
        "type": _text(type_),
        "topic": _text(topic),
        "src": _text(source_stream),
        "src_id": _text(source_id),
        "deliveries": _int(deliveries, 1),
        "attempts": _int(attempts, 1),
        "first_failure": _int(first_failure_ms, 0) or now,
        "last_failure": now,
        "kind": _text(kind),
        "body": body if isinstance(body, bytes) else _text(body).encode(),
    }


def _format_traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # a hostile __str__ must not stop the dead letter
        return ""


def _text(value: Any) -> str:
    """``value`` as text Redis can store: never raises, always encodable as UTF-8."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # e.g. an exception whose __str__ raises
        return f"<{type(value).__name__}>"
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates
        return text.encode(errors="backslashreplace").decode()
    return text


def _int(value: Any, default: int) -> int:
    """``value`` as an int (a count or a time), or ``default`` when it is not one."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, bytes | str):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def encode_body(fields: Any) -> bytes:
    """Encode an event entry's fields as a dead-letter body (a map of name to bytes).

    Never raises.  Names that are not UTF-8 are decoded with ``errors="backslashreplace"``
    (the byte 0xff becomes the four characters ``\\xff``), so the entry's bytes are all kept
    and the body stays a ``dict[str, bytes]`` that :func:`decode_body` (and a redrive) reads;
    values that are not bytes are stored as their UTF-8 text.  Anything but a mapping gives
    an empty body.
    """
    if not isinstance(fields, dict):
        return _body.encode({})
    out: dict[str, bytes] = {}
    for k, v in fields.items():
        name = k.decode(errors="backslashreplace") if isinstance(k, bytes) else _text(k)
        out[name] = v if isinstance(v, bytes) else _text(v).encode()
    return _body.encode(out)


def decode_body(body: bytes) -> dict[str, bytes]:
    """The fields of an event dead letter's body; raises ``msgspec.DecodeError``."""
    return _body_dec.decode(body)


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


def get_dead_letter(bus: EventBus, sub: str, dl_id: str) -> DeadLetter:
    """The dead letter ``dl_id`` of ``sub``; raises :class:`NotFoundError`."""
    found = list_dead_letters(bus, sub, ids=[dl_id])
    if not found:
        raise NotFoundError(f"no dead letter {dl_id} in {sub!r}")
    return found[0]


def count_dead_letters(bus: EventBus, sub: str) -> int:
    """How many dead letters ``sub`` holds."""
    validate_name(sub, "subscription")
    key = bus.keys.dlq(sub)
    return int(bus.call(lambda: bus.client.xlen(key)))


def dead_letters_exist(bus: EventBus, sub: str) -> bool:
    """Whether ``sub`` has a dead-letter stream (even an empty one, after a purge)."""
    validate_name(sub, "subscription")
    key = bus.keys.dlq(sub)
    return bool(bus.call(lambda: bus.client.exists(key)))


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
    fields = decode_body(dl.body)
    return encode_message(dramatiq.Message(
        queue_name=dl.subscription, actor_name=dl.subscription,
        args=(dl.topic, fields), kwargs={},
        options={"src": dl.source_stream, "src_id": dl.source_id, "redriven_from": dl.id},
        message_id=f"{dl.subscription}:{dl.event_id}",
        message_timestamp=int(time.time() * 1000),
    ))


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
        moved += int(bus.call(lambda argv=argv: s.run(bus.client, keys, argv)))
        if ids is not None:
            return moved
        cursor = batch[-1].id


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
