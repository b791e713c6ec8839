"""``dlq``, ``stats`` and ``tail`` on the bridge buses (``bus.type`` rabbitmq or kafka).

The commands keep their Redis output (the same columns, the same ``--json`` keys, ``-`` or
null where a bus has no value); what a bus cannot do raises
:class:`~chi_redis.bridges.NotSupportedError` naming the bus and what to use instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from typing import Any

import click
import msgspec

from ..bridges import NotSupportedError
from ..store.query import TypeFilter
from .options import Settings, confirm, emit, emit_lines, iso_ms

__all__ = ["bridge_name", "dlq_list", "dlq_purge", "dlq_redrive", "dlq_show", "stats", "tail"]


def bridge_name(s: Settings) -> str | None:
    """``rabbitmq`` or ``kafka`` when this invocation runs on a bridge bus, else None."""
    kind = s.config.bus.type
    return kind if kind in ("rabbitmq", "kafka") and not s.url else None


def refuse(s: Settings, what: str, instead: str) -> None:
    kind = {"rabbitmq": "RabbitMQ", "kafka": "Kafka"}[str(bridge_name(s))]
    raise NotSupportedError(f"{what} is not supported on bus.type {bridge_name(s)!r}"
                            f" ({kind}): {instead}")


# dlq ---------------------------------------------------------------------------------------
def _kafka_row(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "error_type": d.get("exception")}


def dlq_list(s: Settings, sub: str, limit: int, after: str | None,
             render: Callable[[dict[str, Any]], str], header: str) -> None:
    if after:
        refuse(s, "dlq list --after", "list from the start with --limit")
    if bridge_name(s) == "kafka":
        kbus = s.kafka()
        assert kbus is not None
        rows = [_kafka_row(d) for d in kbus.dead_letters(sub, count=limit)]
    else:
        bridge = s.bridge()
        assert bridge is not None
        rows = [msgspec.structs.asdict(d) for d in bridge.dead_letters(sub, count=limit)]
        for r in rows:
            r.pop("body")
            r.pop("traceback")
    if not emit_lines(rows, render, header) and not s.json:
        click.echo(f"no dead letters in {sub!r}", err=True)


def dlq_show(s: Settings, sub: str, ref: str) -> None:
    if bridge_name(s) == "kafka":
        from ..bridges.kafka_deadletters import find

        kbus = s.kafka()
        assert kbus is not None
        d, msg = find(kbus, sub, ref)
        d = _kafka_row(d)
        fields = {k.removeprefix("chi-"): v for k, v in (msg.headers() or [])
                  if k.startswith("chi-") and not k.startswith("chi-dlq-") and v is not None}
        fields["data"] = msg.value() or b""
        topic = str(d["source"] or "").rsplit(":", 2)[0].removeprefix(f"{kbus.namespace}.")
        d["event"] = kbus.codec.envelope(topic, d["id"].encode(), fields)
        when = d["at_ms"]
    else:
        from ..bridges.rabbitmq_deadletters import show

        bridge = s.bridge()
        assert bridge is not None
        dl, event = show(bridge, sub, ref)
        d = msgspec.structs.asdict(dl)
        d.pop("body")
        d.pop("traceback")
        d["event"] = event
        when = dl.last_failure_ms
    lines = [f"{k}: {v}" for k, v in d.items() if k != "event"]
    lines.append(f"dead_lettered: {iso_ms(when)}")
    lines.append("event: " + msgspec.json.encode(d["event"]).decode())
    emit(d, lines)


def dlq_redrive(s: Settings, sub: str, ids: list[str] | None) -> int:
    if bridge_name(s) == "kafka":
        from ..bridges.kafka_deadletters import redrive

        kbus = s.kafka()
        assert kbus is not None
        return redrive(kbus, sub, ids)
    from ..bridges.rabbitmq_deadletters import show

    bridge = s.bridge()
    assert bridge is not None
    for ref in ids or ():  # every id must name a dead letter before any moves (as on Redis)
        show(bridge, sub, ref)
    return bridge.redrive(sub, ids)


def dlq_purge(s: Settings, sub: str, before_ms: int | None, yes: bool) -> int:
    when = "" if before_ms is None else f" dead-lettered before {iso_ms(before_ms)}"
    if bridge_name(s) == "kafka":
        from ..bridges.kafka_deadletters import list_dead_letters, purge

        kbus = s.kafka()
        assert kbus is not None
        if not yes:
            n = len(list_dead_letters(kbus, sub, count=10**9))
            confirm(f"Purge the {n} dead letter(s) of {sub!r}{when} (Kafka: marked purged,"
                    " the records stay until the topic's retention)?", yes)
        return purge(kbus, sub, before_ms=before_ms)
    from ..bridges.rabbitmq_deadletters import count_dead_letters
    from ..bridges.rabbitmq_deadletters import purge as rpurge

    bridge = s.bridge()
    assert bridge is not None
    if not yes:
        n = count_dead_letters(bridge, sub)
        confirm(f"Delete {'the' if when else 'all'} dead letters of {sub!r}{when}"
                f" ({n} in its queue)?", yes)
    return rpurge(bridge, sub, before_ms)


# stats -------------------------------------------------------------------------------------
def stats(s: Settings, subs: list[str]) -> dict[str, Any]:
    if bridge_name(s) == "kafka":
        from ..bridges.stats import kafka_stats

        kbus = s.kafka()
        assert kbus is not None
        return kafka_stats(kbus, subs)
    from ..bridges.stats import rabbitmq_stats

    bridge = s.bridge()
    assert bridge is not None
    return rabbitmq_stats(bridge, subs)


# tail --------------------------------------------------------------------------------------
def tail(s: Settings, names: list[str], match: TypeFilter, from_: str | None,
         count: int | None) -> None:
    """Follow ``names`` on the bridge bus: one JSON line per new event."""
    if from_ is not None:
        refuse(s, "tail --from", "a tail shows new events only; read older ones from the"
               " event store (`chi-redis events list --redis-url ...`)")
    bus: Any
    source: Generator[tuple[str, bytes, dict[str, bytes]], None, None]
    if bridge_name(s) == "kafka":
        from ..bridges.kafka_tail import follow as kfollow

        bus = s.kafka()
        source = kfollow(bus, names)
    else:
        from ..bridges.rabbitmq_tail import follow as rfollow

        bus = s.bridge()
        source = rfollow(bus, names)
    out, n = sys.stdout.buffer, 0
    try:
        for topic, where, fields in source:
            if match and not match(fields):
                continue
            out.write(bus.codec.envelope_json(topic, where, fields) + b"\n")
            out.flush()
            n += 1
            if count is not None and n >= count:
                return
    except KeyboardInterrupt:
        out.flush()
    finally:
        source.close()
