"""Packing events into publish-script calls (shared by the sync and async buses)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..backend.keys import Keys
from ..errors import ChiError, PublishError, ValidationError
from ..events.codec import Codec
from ..events.event import Event
from ..events.names import validate_name

__all__ = ["DEFAULT_CHUNK", "DEFAULT_IDEMPOTENCY_TTL_MS", "pack", "partial_failure"]

DEFAULT_CHUNK = 500
DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000

Call = tuple[list[str], list[bytes | str | int]]
_BUS_OPTIONS = ("encoding", "max_event_bytes", "idempotency_ttl_ms", "retry")


def split_bus_options(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the bus's own options out of ``options``; what stays goes to the redis client."""
    return {k: options.pop(k) for k in _BUS_OPTIONS if k in options}


def _check_idempotency_key(idem: object) -> str:
    if not isinstance(idem, str) or not idem or len(idem) > 256 or not idem.isprintable():
        raise ValidationError(
            "idempotency key must be a printable string of 1-256 characters",
            field="idempotency_key",
        )
    return idem


def pack(
    keys: Keys,
    codec: Codec,
    events: Sequence[Event],
    idempotency_keys: Sequence[str | None] | None,
    ttl_ms: int,
    archive: bool = False,
) -> Call:
    """KEYS and ARGV of one publish-script call for ``events`` (validated and encoded first).

    Raises before anything is sent: nothing of an invalid chunk reaches Redis.  The layout
    is documented in ``lua/publish.lua``: each topic's keys are passed once per chunk and
    each event costs seven arguments, so packing stays cheap in Python and in Redis.
    """
    slots: dict[str, int] = {}
    topic_keys: list[str] = []
    topic_names: list[str] = []
    idem_keys: list[str] = []
    body: list[bytes | str | int] = []
    parts = codec.encode_parts
    with_idem = bool(idempotency_keys) and any(k is not None for k in idempotency_keys or ())
    for i, event in enumerate(events):
        if not isinstance(event, Event):
            raise ValidationError(
                f"expected an Event, got {type(event).__name__}", field=f"events[{i}]"
            )
        topic = event.topic
        slot = slots.get(topic)
        if slot is None:
            slot = slots[topic] = len(topic_names) + 1
            topic_names.append(topic)
            topic_keys += (keys.stream(topic), keys.index(topic))
        body.append(slot)
        body += parts(event)
        if with_idem:
            idem = idempotency_keys[i] if idempotency_keys else None
            if idem is None:
                body.append(0)
            else:
                idem_keys.append(keys.idem(topic, _check_idempotency_key(idem)))
                body.append(len(idem_keys))
    klist = [keys.ids(), keys.topics(), *topic_keys, *idem_keys]
    head: list[bytes | str | int] = [
        ttl_ms,
        len(events),
        len(topic_names),
        b"1" if archive else b"0",
        codec.enc_tag,
        b"1" if with_idem else b"0",
        *topic_names,
    ]
    return klist, head + body


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
