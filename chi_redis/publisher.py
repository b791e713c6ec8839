"""Packing events into publish-script calls (shared by the sync and async buses)."""

from __future__ import annotations

from collections.abc import Sequence

from .codec import Codec
from .errors import ChiError, PublishError, ValidationError
from .event import Event
from .keys import Keys
from .names import validate_name

__all__ = ["DEFAULT_CHUNK", "DEFAULT_IDEMPOTENCY_TTL_MS", "pack", "partial_failure"]

DEFAULT_CHUNK = 500
DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000

Call = tuple[list[str], list[bytes | str | int]]


def pack(
    keys: Keys,
    codec: Codec,
    events: Sequence[Event],
    idempotency_keys: Sequence[str | None] | None,
    ttl_ms: int,
    archive: bool = False,
) -> Call:
    """KEYS and ARGV of one publish-script call for ``events`` (validated and encoded first).

    Raises before anything is sent: nothing of an invalid chunk reaches Redis.
    """
    ids_key = keys.ids()
    klist: list[str] = [ids_key, keys.topics()]
    argv: list[bytes | str | int] = [ttl_ms, len(events)]
    arc = b"1" if archive else b"0"
    for i, event in enumerate(events):
        if not isinstance(event, Event):
            raise ValidationError(
                f"expected an Event, got {type(event).__name__}", field=f"events[{i}]"
            )
        topic = event.topic
        stream = keys.stream(topic)
        idem = idempotency_keys[i] if idempotency_keys else None
        if idem is not None:
            if not isinstance(idem, str) or not idem or len(idem) > 256 or not idem.isprintable():
                raise ValidationError(
                    "idempotency key must be a printable string of 1-256 characters",
                    field="idempotency_key",
                )
            klist += (stream, keys.index(topic), keys.idem(topic, idem))
        else:
            klist += (stream, keys.index(topic), stream)
        values = codec.encode(event)
        argv += (b"1" if idem is not None else b"0", topic.encode(), *values[:6], values[6], arc)
    return klist, argv


def check_topic(topic: str) -> str:
    """Validate a topic name given on its own (queries, CLI)."""
    return validate_name(topic, "topic")


def partial_failure(
    events: Sequence[Event],
    written_ids: list[str],
    found: Sequence[bytes | str | None] | None,
    exc: ChiError,
) -> PublishError:
    """The error for a batch whose first ``len(written_ids)`` events are known written.

    ``found`` is the id lookup's answer (``HMGET ids``) for the remaining events, or None
    when Redis could not be asked: an event of a failed chunk may still have been written
    (the script ran but its reply was lost, or it failed half-way through a chunk).
    """
    written = dict(enumerate(written_ids))
    rest = list(range(len(written_ids), len(events)))
    for i, value in zip(rest, found or (), strict=False):
        if value is not None:
            text = value.decode() if isinstance(value, bytes) else value
            written[i] = text.split(" ", 1)[1]
    failed = [i for i in rest if i not in written]
    return PublishError(
        f"batch publish failed after {len(written)} of {len(events)} events: {exc}",
        written=written,
        failed=failed,
        cause=exc,
    )
