"""Dead letters: where an entry goes when it keeps failing, and how it is written.

One dead-letter stream per subscription (``chi:q:{<sub>}:dlq``), capped at
:data:`DLQ_MAXLEN` entries (approximately).  Each entry records the event (id, type, topic),
where it came from (source stream and entry id), why it failed (reason, error type and
message, a capped and redacted traceback tail), how often it was delivered, the first and
last failure time, and the body needed to redrive it.

A consumer owns one :class:`DeadLetterWriter`.  It dead-letters entries the consumer itself
rejects (undecodable, delivered too often) and messages Dramatiq gave up on (``nack``).
The write is one script call that adds the dead letter and acks the source entry, at most
once (``deadletter.lua``).  It cannot lose an entry: when Redis refuses it (out of memory,
read-only replica, missing permission, any error reply) the entry stays pending and is
tried again once its lease expires; a warning says so at most every 10 seconds.  Building
the fields never raises, whatever the entry or message holds: a dead letter is the last
place an entry can go, so it must always be writable.

Reading, redriving and purging dead letters are operations: :mod:`chi_redis.ops.deadletters`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, TypeGuard

import dramatiq
import msgspec
import redis.exceptions as rex
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import SkipMessage

from ..backend.scripts import script
from ..errors import DecodeError
from ..observe import tracing
from ..observe.logs import RateLimiter, redact
from ..observe.metrics import counter
from .encoder import decode_message, encode_message

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = [
    "DLQ_MAXLEN",
    "DeadLetter",
    "DeadLetterWriter",
    "RefusedWrites",
    "dead_letter_fields",
    "dead_letter_reason",
    "decode_body",
    "encode_body",
    "entry_dead_letter",
    "log_dead_letter",
    "message_dead_letter",
    "redact",
]

logger = logging.getLogger(__name__)

TRACEBACK_CHARS = 2000
MESSAGE_CHARS = 500
#: The cap of every dead-letter stream (``XADD MAXLEN ~``); ``BrokerOptions.dlq_maxlen``.
DLQ_MAXLEN = 1_000_000
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


#: The dead-letter log line of every subscription of this process: at most 20 per 10 s,
#: then one "… N more dead letters" summary (the consumer's maintenance flushes it).
DEAD_LETTER_LOG = RateLimiter(logger, "dead letters", burst=20, window_s=10.0)


def flush_log() -> None:
    """Log the "… N more dead letters" summary of a storm whose window has ended."""
    DEAD_LETTER_LOG.flush()


#: Errors after which the caller retries the write (Dramatiq retries a failed ``nack``).
CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError)
WARN_EVERY_S = 10.0


class DeadLetterWriter:
    """Writes the dead letters of one queue's consumer.  Thread-safe (worker threads nack)."""

    def __init__(self, broker: StreamsBroker) -> None:
        self.broker = broker
        self.client = broker.client
        self.keys = broker.keys
        self.maxlen = broker.options.dlq_maxlen
        self._script = script("deadletter")
        self._refused = RefusedWrites("Redis refused %d dead letter(s) of %s")

    def reason(self, message: dramatiq.MessageProxy, exc: BaseException | None) -> str:
        """Why Dramatiq gave up on ``message`` (see :func:`dead_letter_reason`)."""
        return dead_letter_reason(self.broker, message, exc)

    def entry(
        self, queue: str, stream: str, sid: bytes, fields: dict[bytes, bytes], reason: str,
        count: int, *, topic: str = "", exc: BaseException | None = None,
    ) -> None:
        """Dead-letter an entry the consumer itself rejects (no Dramatiq message yet).

        A private-stream entry that still decodes as a message is recorded as that message
        (task or event), so that it can be redriven as such.
        """
        if stream == self.keys.queue(queue) and isinstance(fields.get(b"m"), bytes):
            try:
                msg = decode_message(fields[b"m"])
            except ValueError:
                pass
            else:
                self.message(msg, queue=queue, stream=stream, sid=sid, deliveries=count,
                             reason=reason, exc=exc)
                return
        self.write(queue, stream, sid, entry_dead_letter(
            sub=queue, stream=stream, sid=sid, fields=fields, reason=reason, count=count,
            topic=topic, exc=exc,
        ))

    def message(
        self, message: dramatiq.Message[Any] | dramatiq.MessageProxy, *, queue: str, stream: str,
        sid: bytes, deliveries: int, reason: str, exc: BaseException | None,
    ) -> None:
        """Dead-letter a Dramatiq message read from entry ``sid`` of ``stream``."""
        sub = self.broker.subscriptions.get(queue)
        self.write(queue, stream, sid, message_dead_letter(
            message, sub=queue, stream=stream, sid=sid, deliveries=deliveries, reason=reason,
            exc=exc, is_event_actor=sub is not None and message.actor_name == sub.name,
        ))

    def write(self, queue: str, stream: str, sid: bytes, fields: dict[str, Any]) -> None:
        """XACK the entry and XADD its dead letter in one script, at most once.

        Connection errors propagate (the caller retries; the script is idempotent).  Any
        other Redis error leaves the entry pending for a later attempt after its lease.
        Otherwise the entry leaves the queue's in-flight set (its prefetch slot is free).
        """
        argv: list[Any] = [queue, sid, "1" if stream == self.keys.queue(queue) else "0",
                           self.maxlen]
        for k, v in fields.items():
            argv += (k, v)
        try:
            written = self._script.run(self.client, [stream, self.keys.dlq(queue)], argv)
        except CONNECTION_ERRORS:
            raise  # still in flight: the caller retries
        except rex.RedisError as exc:  # OOM, READONLY, NOPERM, any error reply
            self._refused.note(queue, exc)
            self.broker.release(queue, stream, sid)
            return
        self.broker.release(queue, stream, sid)
        if written:  # the dead letter's id (0 when the entry was no longer pending)
            counter("chi_dead_lettered_total").labels(queue, fields["reason"]).inc()
            if queue in self.broker.subscriptions:
                counter("chi_events_handled_total").labels(queue, "dead_lettered").inc()
            if tracing.enabled():
                tracing.dead_lettered(queue, _event_meta(fields), fields)
            log_dead_letter(queue, stream, sid, fields, written)


def log_dead_letter(
    queue: str, stream: str, sid: bytes | str, fields: dict[str, Any], written: Any
) -> None:
    """One log line for a dead letter just written (``written``: its id), a bounded number
    of them under a storm."""
    if not DEAD_LETTER_LOG.allow():
        return
    dl_id = written.decode() if isinstance(written, bytes) else str(written)
    src = sid.decode(errors="replace") if isinstance(sid, bytes) else sid
    # The dead letter's own id first: it is what `chi-redis dlq show` takes.
    logger.warning(
        "dead-lettered event %s of %s as %s (entry %s of %s): %s; see `chi-redis dlq"
        " show %s %s`", fields["event_id"] or "-", queue, dl_id,
        src, stream, fields["reason"], queue, dl_id,
        extra={"subscription": queue, "topic": fields["topic"], "stream": stream,
               "event_id": fields["event_id"], "type": fields["type"],
               "reason": fields["reason"]},
    )


class RefusedWrites:
    """Counts writes Redis refused (OOM, NOPERM, ...) and logs them at most every
    ``WARN_EVERY_S``: the entries stay pending and come back after the lease.  ``what``
    starts the line and takes the count and the queue (``"Redis refused %d ... of %s"``)."""

    def __init__(self, what: str) -> None:
        self.line = what + (" (%s: %s); their entries stay pending and are tried again once"
                            " the lease expires")
        self._lock = threading.Lock()
        self._count = 0
        self._warned_at = float("-inf")

    def note(self, queue: str, exc: BaseException) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._warned_at < WARN_EVERY_S:
                return
            count, self._count, self._warned_at = self._count, 0, now
        logger.warning(self.line, count, queue, type(exc).__name__, exc)


def _event_meta(fields: dict[str, Any]) -> bytes | None:
    """The metadata JSON of an event dead letter's body (its trace context), if any."""
    if fields.get("kind") != "event":
        return None
    try:
        meta = decode_body(fields["body"]).get("meta")
    except (KeyError, msgspec.DecodeError):
        return None
    return meta


def dead_letter_reason(
    broker: dramatiq.Broker, message: dramatiq.MessageProxy, exc: BaseException | None
) -> str:
    """The reason recorded when Dramatiq gives up on ``message`` after ``exc``."""
    if isinstance(exc, ActorNotFound):
        return "unknown_actor"
    if isinstance(exc, DecodeError):
        return exc.kind  # decode, missing_field, schema, invalid_type, too_large, too_deep
    if isinstance(exc, dramatiq.DecodeError):
        return "decode"
    if isinstance(exc, SkipMessage):
        return "skipped"  # e.g. AgeLimit
    if exc is None:
        return "failed"
    options = message.options if isinstance(message.options, dict) else {}
    throws = options.get("throws")
    if not _exception_types(throws):  # absent, or names after a trip through Redis
        try:
            throws = broker.get_actor(message.actor_name).options.get("throws")
        except ActorNotFound:
            throws = None
    if _exception_types(throws) and isinstance(exc, throws):
        return "not_retryable"
    return "retries_exhausted"


def entry_dead_letter(
    *, sub: str, stream: str, sid: Any, fields: Any, reason: str, count: Any, topic: str,
    exc: BaseException | None = None,
) -> dict[str, Any]:
    """The dead letter of a raw entry (kind ``event`` on a topic stream, else ``raw``).

    Never raises: ``fields`` may hold anything (names that are not UTF-8 are kept
    backslash-escaped in the body, see :func:`encode_body`).
    """
    get = fields.get if isinstance(fields, dict) else {}.get
    return dead_letter_fields(
        sub=sub, reason=reason, exc=exc, kind="event" if topic else "raw",
        body=encode_body(fields), event_id=get(b"id", b""), type_=get(b"type", b""),
        topic=topic, source_stream=stream, source_id=sid, deliveries=count, attempts=count,
    )


def message_dead_letter(
    message: dramatiq.Message[Any] | dramatiq.MessageProxy, *, sub: str, stream: str, sid: Any,
    deliveries: Any, reason: str, exc: BaseException | None, is_event_actor: bool,
) -> dict[str, Any]:
    """The dead letter of a Dramatiq message: an event (the subscription's own actor with
    ``(topic, fields)``) keeps its fields as the body, anything else its encoded message.

    Never raises, whatever the message's arguments and options hold.
    """
    options: dict[Any, Any] = message.options if isinstance(message.options, dict) else {}
    args = message.args
    is_event = (
        is_event_actor and isinstance(args, tuple | list) and len(args) == 2
        and isinstance(args[0], str) and isinstance(args[1], dict)
    )
    if is_event:
        topic, fields = args
        body = encode_body(fields)
        event_id, type_ = fields.get("id", b""), fields.get("type", b"")
    else:
        topic, body = "", _encoded(message)
        event_id, type_ = message.message_id, message.actor_name
    retries = options.get("retries", 0)
    return dead_letter_fields(
        sub=sub, reason=reason, exc=exc, kind="event" if is_event else "task",
        body=body, event_id=event_id, type_=type_, topic=topic,
        source_stream=options.get("src") or stream, source_id=options.get("src_id") or sid,
        deliveries=deliveries,
        # Retries has already counted the failed run when it gave up.
        attempts=(retries if isinstance(retries, int) else 0) + (reason != "retries_exhausted"),
        first_failure_ms=options.get("first_failure"),
        tb=None if exc is not None else options.get("traceback"),
    )


def _encoded(message: Any) -> bytes:
    try:
        return encode_message(message)
    except (TypeError, ValueError, OverflowError):  # not data (cannot come from Redis)
        return b""


def _exception_types(
    value: Any,
) -> TypeGuard[type[BaseException] | tuple[type[BaseException], ...]]:
    """Whether ``value`` can be the second argument of ``isinstance`` (a ``throws``)."""
    if isinstance(value, type):
        return True
    return isinstance(value, tuple) and bool(value) and all(isinstance(t, type) for t in value)
