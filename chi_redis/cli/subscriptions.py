"""``chi-redis subscriptions list|rewind|prune``: the registry and the consumer groups."""

from __future__ import annotations

import time
from typing import Any

import click

from ..backend.streamids import format_id
from ..errors import NotFoundError
from ..events.names import validate_name
from ..ops.stats import LAG_FOOTNOTE
from ..ops.timeparse import TimePoint, parse_time
from .options import (
    ChiGroup,
    common_options,
    confirm,
    emit,
    emit_lines,
    iso_ms,
    settings,
    usage_errors,
)

__all__ = ["subscriptions"]


@click.group(cls=ChiGroup)
@common_options
def subscriptions() -> None:
    """Registered subscriptions: list, show, rewind, prune."""


LIST_HEADER = (
    f"{'NAME':<24} {'LAST SEEN':<20} {'LAG':>7} {'PENDING':>7} {'DLQ':>5}  {'TYPES':<20} TOPICS"
)


@subscriptions.command("list")
@common_options
def subscriptions_list() -> None:
    """Every subscription: registry entry, topics, lag, pending, dead letters."""
    from ..ops.registry import registry
    from ..ops.stats import collect

    cfg = settings()
    bus = cfg.bus()
    reg = registry(bus)
    st = {s.name: s for s in collect(bus).subscriptions}
    cutoff = time.time() * 1000 - cfg.config.subscriptions_seen_days * 86_400_000
    rows = []
    for name in sorted(set(reg) | set(st)):
        info, s = reg.get(name), st.get(name)
        seen = (info.last_seen_ms or 0) if info else 0
        rows.append({
            "name": name,
            "registered": info is not None,
            "active": seen >= cutoff,  # seen within subscriptions_seen_days
            "last_seen": iso_ms(seen) if info else None,
            "types": list(info.types) if info else [],
            "topics": s.topics if s else [],
            "lag": s.lag if s else None,
            "pending": s.pending if s else 0,
            "delayed": s.delayed if s else 0,
            "dead_letters": s.dead_letters if s else 0,
        })

    def render(r: dict[str, Any]) -> str:
        lag = "?" if r["lag"] is None else r["lag"]
        seen = r["last_seen"] or "not registered"
        stale = "" if r["active"] else " (stale)"
        return (
            f"{r['name'] + stale:<24} {seen:<20} {lag!s:>7} {r['pending']:>7}"
            f" {r['dead_letters']:>5}  {','.join(r['types']) or '-':<20}"
            f" {','.join(r['topics']) or '-'}"
        )

    if not emit_lines(rows, render, LIST_HEADER):
        if not settings().json:
            click.echo("no subscriptions", err=True)
    elif not settings().json and any(r["lag"] is None for r in rows):
        click.echo(LAG_FOOTNOTE)


@subscriptions.command("show")
@common_options
@click.argument("sub", metavar="SUB")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="Pending entries shown per stream.")
def subscriptions_show(sub: str, limit: int) -> None:
    """One subscription's consumers (idle times) and pending entries (delivery counts)."""
    from ..ops.inspect import consumers, pending_entries
    from ..ops.stats import collect

    with usage_errors():
        validate_name(sub, "subscription")
    bus = settings().bus()
    st = next((s for s in collect(bus).subscriptions if s.name == sub), None)
    if st is None:
        raise NotFoundError(f"unknown subscription {sub!r}: not registered and no group")
    found = consumers(bus, sub, st.topics)
    pending = pending_entries(bus, sub, st.topics, limit)
    out = {"subscription": sub, "topics": st.topics,
           "consumers": [c.__dict__ for c in found], "pending": [p.__dict__ for p in pending]}
    lines = [f"{'STREAM':<16} {'CONSUMER':<40} {'PENDING':>7} {'IDLE':>9}"]
    lines += [f"{c.topic or '(queue)':<16} {c.name:<40} {c.pending:>7} {c.idle_ms / 1000:>8.1f}s"
              for c in found] or ["no consumers"]
    lines += ["", f"{'STREAM':<16} {'STREAM ID':<22} {'CONSUMER':<40} {'IDLE':>9} DELIVERIES"]
    lines += [f"{p.topic or '(queue)':<16} {p.stream_id:<22} {p.consumer:<40}"
              f" {p.idle_ms / 1000:>8.1f}s {p.deliveries}" for p in pending] or ["nothing pending"]
    emit(out, lines)


@subscriptions.command("rewind")
@common_options
@click.argument("sub", metavar="SUB")
@click.option("--to", "to", metavar="ID|TIME", required=True, help="Deliver again from here.")
@click.option("--topic", "topics", multiple=True, help="Only this topic (repeatable).")
@click.option("--force", is_flag=True,
              help="Also when it re-delivers entries the subscription already handled.")
def subscriptions_rewind(sub: str, to: str, topics: tuple[str, ...], force: bool) -> None:
    """Move the subscription's groups back to ID|TIME (XGROUP SETID on each topic).

    Refused (exit 1) without --force when that re-delivers entries the subscription
    already handled: its handlers, and their side effects, would run again.
    """
    from ..ops.registry import rewind

    with usage_errors():
        point = parse_time(to, field="--to")
        chosen = [validate_name(t, "topic") for t in topics] or None
    bus = settings().bus()
    done = rewind(bus, sub, point, chosen, force=force)
    if not done:
        raise NotFoundError(f"subscription {sub!r} has no consumer group on any topic")
    where = _starts_at(point)
    emit(
        {"subscription": sub, "topics": done},
        [f"rewound {sub!r} on topic {t}: the next read starts at {where}" for t in done],
    )


def _starts_at(point: TimePoint) -> str:
    """Where a rewound group reads next, for people: the time, and the first stream id.

    (The group's own last-delivered id is the one just before, which for a time reads
    ``…-18446744073709551615``: correct, and of no use to anyone reading it.)
    """
    first = point.lower_id()
    return f"{iso_ms(first[0]) if first[0] else 'the beginning'} (stream id {format_id(first)})"


@subscriptions.command("prune")
@common_options
@click.option("--days", type=click.FloatRange(min=0), help="Seen within (default: config, 7).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def subscriptions_prune(days: float | None, yes: bool) -> None:
    """Remove groups and registry entries of subscriptions not seen recently."""
    from ..ops.registry import prune, prune_candidates

    s = settings()
    bus = s.bus()
    seen_days = s.config.subscriptions_seen_days if days is None else days
    candidates = prune_candidates(bus, seen_days)
    if not candidates:
        emit({"pruned": []}, f"nothing to prune (all seen within {seen_days:g} days)")
        return
    if not s.json or not yes:
        for c in candidates:
            why = "no registry entry" if c.info is None else f"last seen {iso_ms(c.last_seen_ms)}"
            click.echo(f"{c.name}: {why}; groups on {', '.join(c.topics) or 'no topic'}", err=True)
    confirm(f"Remove {len(candidates)} subscription(s)?", yes)
    pruned = prune(bus, candidates, seen_days)
    emit({"pruned": pruned}, f"pruned {len(pruned)}: {', '.join(pruned) or '-'}")
