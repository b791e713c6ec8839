"""Operating on dead letters: list, show, count, redrive and purge.

A dead letter is named by its own entry id (what ``chi-redis dlq list`` prints and the
worker's "dead-lettered" log line ends with) or, where that is unambiguous, by the id or the
stream id of the event it holds (:func:`resolve_dead_letter`).

The dead letters themselves (their fields, and how a consumer writes them) are defined in
:mod:`chi_redis.runtime.deadletters`; ``chi-redis dlq`` and ``bus.dead_letters`` /
``bus.redrive`` call the functions here.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import dramatiq

from ..backend.scripts import script
from ..errors import ChiError, NotFoundError
from ..events.names import validate_name
from ..limits import MAX_COUNT, check_limit
from ..runtime.deadletters import DeadLetter, decode_body
from ..runtime.encoder import decode_message, encode_message

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = [
    "count_dead_letters",
    "dead_letters_exist",
    "find_dead_letters",
    "get_dead_letter",
    "list_dead_letters",
    "purge",
    "redrive",
    "redrive_message",
    "resolve_dead_letter",
]

_ID = re.compile(r"\d{1,20}-\d{1,20}")


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
    check_limit(count, "count", 1, MAX_COUNT)
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


def find_dead_letters(bus: EventBus, sub: str, ref: str) -> list[DeadLetter]:
    """The dead letters of ``sub`` that ``ref`` names, oldest first.

    ``ref`` is a dead letter's own id; failing that, the id or the source stream id of the
    event it holds (an event dead-lettered again after a redrive has several).  The lookup
    by event pages through the dead-letter stream: it is for an operator's command, not a
    hot path.
    """
    if _ID.fullmatch(ref):
        own = list_dead_letters(bus, sub, ids=[ref])
        if own:
            return own
    matches: list[DeadLetter] = []
    cursor: str | None = None
    while True:
        batch = list_dead_letters(bus, sub, after=cursor, count=1000)
        if not batch:
            return matches
        matches += [d for d in batch if ref in (d.event_id, d.source_id)]
        cursor = batch[-1].id


def resolve_dead_letter(bus: EventBus, sub: str, ref: str) -> DeadLetter:
    """The one dead letter of ``sub`` that ``ref`` names (see :func:`find_dead_letters`).

    Raises :class:`NotFoundError` when none does, :class:`ChiError` listing the dead-letter
    ids when an event has several.
    """
    found = find_dead_letters(bus, sub, ref)
    if not found:
        raise NotFoundError(
            f"no dead letter {ref!r} in {sub!r} (neither a dead-letter id nor the id or stream"
            " id of an event dead-lettered there; `chi-redis dlq list` shows them)"
        )
    if len(found) > 1:
        ids = ", ".join(d.id for d in found)
        raise ChiError(f"{ref!r} was dead-lettered {len(found)} times in {sub!r}: give one of"
                       f" the dead-letter ids {ids}")
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
