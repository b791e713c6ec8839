"""``chi-redis publish``, ``tail`` and ``events get|list``: writing and reading events.

``publish`` prints the stream id of the entry it wrote; ``events get`` takes that stream id
as well as the event id (``--json`` output of both carries both ids).
"""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from ..backend.cluster import group_by_slot, is_cluster
from ..backend.streamids import format_id, parse_id, pred
from ..errors import ValidationError
from ..events.codec import Codec
from ..events.event import Event
from ..events.names import validate_name
from ..runtime.slotreads import CLUSTER_BLOCK_MS
from ..store.history import By, str_fields
from ..store.query import TypeFilter
from . import bridge_cmds
from .bridge_cmds import bridge_name
from .options import (
    ChiGroup,
    common_options,
    emit,
    emit_lines,
    json_line,
    range_options,
    settings,
    split_globs,
    split_topics,
    time_arg,
    time_range,
    usage_errors,
)

__all__ = ["events", "publish", "tail"]


# publish ----------------------------------------------------------------------------------
@click.command()
@common_options
@click.argument("topic")
@click.argument("type_", metavar="TYPE")
@click.argument("data", metavar="DATA_JSON", required=False)
@click.option("--meta", multiple=True, metavar="K=V", help="Metadata entry (repeatable).")
@click.option("--idempotency-key", metavar="KEY", help="Publish at most once per key (24 h).")
def publish(
    topic: str, type_: str, data: str | None, meta: tuple[str, ...], idempotency_key: str | None
) -> None:
    """Publish one event; prints its stream id.  DATA_JSON '-' reads stdin."""
    if data == "-":
        data = sys.stdin.read()
    if data is None or not data.strip():
        # An event without data is rare enough that it must be asked for, not a typo's result.
        raise click.UsageError(
            "give the event's data as DATA_JSON ('-' reads stdin; null for an event without"
            " data)", ctx=click.get_current_context(),
        )
    with usage_errors():
        payload = _decode_data(data)
        metadata = _metadata(meta)
        event = Event(type=type_, topic=validate_name(topic, "topic"), data=payload,
                      metadata=metadata)
    s = settings()
    bridge = s.bridge()
    if bridge is not None:  # bus.type: rabbitmq: no stream id, the event id is the handle
        eid = bridge.publish(event, idempotency_key=idempotency_key)
        emit({"id": eid, "topic": event.topic, "type": event.type}, eid)
        return
    if s.config.bus.type != "kafka" or s.url:  # the size limit, before connecting
        Codec(s.config.bus.encoding, s.config.bus.max_event_bytes).encode_parts(event)
    target = s.publisher()  # the Redis bus, or the Kafka bus (bus.type: kafka)
    sid = target.publish(event, idempotency_key=idempotency_key)
    emit({"stream_id": sid, "id": event.id, "topic": event.topic, "type": event.type}, sid)


def _decode_data(data: str) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"DATA_JSON is not valid JSON: {exc}", field="data") from None


def _metadata(meta: tuple[str, ...]) -> dict[str, str | int | float | bool]:
    metadata: dict[str, str | int | float | bool] = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(f"--meta {item!r}: use KEY=VALUE", field="meta")
        metadata[key] = value
    return metadata


# tail -------------------------------------------------------------------------------------
@click.command()
@common_options
@click.argument("topics", metavar="TOPIC...", nargs=-1, required=True)
@click.option("--types", multiple=True, metavar="GLOB", help="Only these types (repeatable).")
@click.option("--from", "from_", metavar="ID|TIME", help="Start here (default: new events).")
@click.option("--count", type=click.IntRange(min=1), help="Stop after N events.")
@click.option("--block-ms", type=click.IntRange(min=1, max=5000), default=1000, hidden=True)
def tail(
    topics: tuple[str, ...], types: tuple[str, ...], from_: str | None, count: int | None,
    block_ms: int,
) -> None:
    """Follow topics: one JSON line per event (no consumer group involved)."""
    names = split_topics(topics)
    match = TypeFilter(split_globs(types))
    start = time_arg(from_, "--from")
    s = settings()
    if bridge_name(s):  # a group-less Kafka consumer, a RabbitMQ queue of its own
        bridge_cmds.tail(s, names, match, from_, count)
        return
    bus = s.bus()
    k = bus.keys
    # A partitioned topic is followed on each of its names (docs/design.md §15.2).
    streams = {k.stream(n): t for t in names for n in bus.partitions.names(t)}
    positions: dict[str, Any]
    if start is not None:
        positions = dict.fromkeys(streams, format_id(pred(start.lower_id())))
    else:
        positions = _last_ids(bus, list(streams))
    out = sys.stdout.buffer
    client: Any = bus.client
    n = 0
    try:
        while count is None or n < count:
            want = 100 if count is None else min(100, count - n)
            read = bus.call(lambda w=want: _read(client, positions, w, block_ms))
            got = []
            for raw_stream, entries in read or ():
                stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
                positions[stream] = entries[-1][0].decode()
                got += [(parse_id(sid), stream, sid, f) for sid, f in entries]
            got.sort(key=lambda g: g[0])  # one order across topics: append time
            for _, stream, sid, f in got:
                fields = str_fields(f)
                if (count is not None and n >= count) or (match and not match(fields)):
                    continue
                out.write(bus.codec.envelope_json(streams[stream], sid, fields) + b"\n")
                n += 1
            out.flush()
    except KeyboardInterrupt:
        out.flush()


def _read(client: Any, positions: dict[str, Any], count: int, block_ms: int) -> Any:
    """One XREAD of every stream from its position; on a cluster one per slot, sent to
    their masters in one pipeline, each blocking at most 100 ms when there are several
    (an XREAD cannot name streams of different slots: docs/design.md §3.4)."""
    groups = group_by_slot(positions) if is_cluster(client) else [list(positions)]
    if len(groups) == 1:
        return client.xread(positions, count=count, block=block_ms)
    pipe = client.pipeline(transaction=False)
    for names in groups:
        pipe.xread({n: positions[n] for n in names}, count=count,
                   block=min(block_ms, CLUSTER_BLOCK_MS))
    return [item for reply in pipe.execute() for item in reply or ()]


def _last_ids(bus: Any, streams: list[str]) -> dict[str, Any]:
    def run() -> list[Any]:
        pipe = bus.client.pipeline(transaction=False)
        for s in streams:
            pipe.xinfo_stream(s)
        return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    out = {}
    for s, info in zip(streams, bus.call(run), strict=True):
        last = info["last-generated-id"] if isinstance(info, dict) else b"0-0"
        out[s] = last.decode() if isinstance(last, bytes) else str(last)
    return out


# events -----------------------------------------------------------------------------------
@click.group(cls=ChiGroup)
@common_options
def events() -> None:
    """Look events up in the event store."""


@events.command("get")
@common_options
@click.argument("event_id", metavar="ID")
@click.option("--topic", metavar="TOPIC", help="The topic, when a stream id is in several.")
def events_get(event_id: str, topic: str | None) -> None:
    """Show one event by its id, or by the stream id ``publish`` printed."""
    from ..ops.inspect import get_event

    bus = settings().bus()
    with usage_errors():  # a bad --topic, or a stream id in several topics (exit 2)
        env = get_event(bus, event_id, topic)
    emit(env, msgspec.json.format(json_line(env), indent=2).decode())


#: ``events list``'s columns (text mode); the widths are those of :func:`_render_event`.
EVENTS_HEADER = f"{'STREAM ID':<17}  {'TIME':<24}  {'TOPIC':<12} {'TYPE':<28} EVENT ID"


def _render_event(e: dict[str, Any]) -> str:
    if "error" in e:
        return f"{e['stream_id']:<17}  {e['topic']:<12} ERROR {e['error']}"
    return (
        f"{e['stream_id']:<17}  {e['timestamp']:<24}  {e['topic']:<12} {e['type']:<28}"
        f" {e['id']}"
    )


@events.command("list")
@common_options
@range_options(topic_help="Topic (repeatable; default: all).",
               until_help="Until (inclusive): TIME or stream id.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="At most N events (0: no limit).")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the first N.")
def events_list(
    topics: tuple[str, ...], since: str | None, until: str | None, by: By,
    types: tuple[str, ...], limit: int, offset: int,
) -> None:
    """List events, oldest first."""
    from ..ops.inspect import iter_events

    names = split_topics(topics)
    globs = split_globs(types)
    lo, hi = time_range(since, until, by)
    bus = settings().bus()
    found = iter_events(bus, names, by, lo, hi, globs, limit=limit, offset=offset)
    if not emit_lines(found, _render_event, EVENTS_HEADER) and not settings().json:
        click.echo("no events in this range", err=True)
