"""``chi-redis dlq``, ``subscriptions`` and ``retention``: repairing and housekeeping."""

from __future__ import annotations

import re
import signal
import time
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click
import msgspec

from ..errors import NotFoundError, RedisError, ValidationError
from ..events.names import validate_name
from ..ops.timeparse import parse_duration, parse_time
from .options import ChiGroup, common_options, emit, emit_lines, settings

__all__ = ["dlq", "retention", "subscriptions"]

_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    when = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
    return when.replace("+00:00", "Z")


def _confirm(question: str, yes: bool) -> None:
    if not yes:
        click.confirm(question, abort=True, err=True)


# dlq --------------------------------------------------------------------------------------
@click.group(cls=ChiGroup)
@common_options
def dlq() -> None:
    """Dead letters: list, show, redrive, purge."""


def _known_sub(bus: Any, sub: str) -> None:
    """Refuse a subscription neither registered nor holding dead letters."""
    from ..runtime.deadletters import dead_letters_exist

    validate_name(sub, "subscription")
    registered = bus.call(lambda: bus.client.hexists(bus.keys.subs(), sub))
    if not registered and not dead_letters_exist(bus, sub):
        raise NotFoundError(f"unknown subscription {sub!r}: not registered and no dead letters")


def _check_ids(ids: list[str]) -> list[str]:
    for i in ids:
        if not _ID.fullmatch(i):
            raise ValidationError(f"invalid dead-letter id {i!r}: expected MS-SEQ", field="id")
    return ids


def _dl_dict(dl: Any, full: bool = False) -> dict[str, Any]:
    d = msgspec.structs.asdict(dl)
    body = d.pop("body")
    if not full:
        d.pop("traceback")
        return d
    if dl.kind in ("event", "raw") and body:
        from ..runtime.deadletters import decode_body
        from ..store.history import envelope

        try:
            fields = decode_body(body)
            d["event"] = envelope(settings().bus().codec, dl.topic, dl.source_id.encode(), fields)
        except msgspec.DecodeError:
            d["event"] = None
    return d


@dlq.command("list")
@common_options
@click.argument("sub", metavar="SUB")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=100, show_default=True)
@click.option("--after", metavar="ID", help="Start after this dead-letter id.")
def dlq_list(sub: str, limit: int, after: str | None) -> None:
    """List a subscription's dead letters, oldest first."""
    from ..runtime.deadletters import list_dead_letters

    bus = settings().bus()
    _known_sub(bus, sub)
    letters = list_dead_letters(
        bus, sub, after=_check_ids([after])[0] if after else None, count=limit
    )

    def render(d: dict[str, Any]) -> str:
        return (
            f"{d['id']}  {d['type'] or '-':<24} {d['event_id'] or '-':<36} {d['reason']:<18}"
            f" x{d['deliveries']}  {d['error_type']}: {d['error'][:80]}"
        )

    n = emit_lines((_dl_dict(d) for d in letters), render)
    if not n and not settings().json:
        click.echo(f"no dead letters in {sub!r}", err=True)


@dlq.command("show")
@common_options
@click.argument("sub", metavar="SUB")
@click.argument("dl_id", metavar="ID")
def dlq_show(sub: str, dl_id: str) -> None:
    """Show one dead letter with its traceback and event."""
    from ..runtime.deadletters import get_dead_letter

    bus = settings().bus()
    _known_sub(bus, sub)
    d = _dl_dict(get_dead_letter(bus, sub, _check_ids([dl_id])[0]), full=True)
    tb = d.get("traceback") or ""
    lines = [f"{k}: {v}" for k, v in d.items() if k not in ("traceback", "event")]
    lines.append(f"first_failure: {_when(d['first_failure_ms'])}")
    lines.append(f"last_failure: {_when(d['last_failure_ms'])}")
    if d.get("event") is not None:
        lines.append("event: " + msgspec.json.encode(d["event"]).decode())
    if tb:
        lines += ["traceback:", tb.rstrip()]
    emit(d, lines)


@dlq.command("redrive")
@common_options
@click.argument("sub", metavar="SUB")
@click.option("--id", "ids", multiple=True, metavar="ID", help="Dead letter (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Redrive every dead letter.")
def dlq_redrive(sub: str, ids: tuple[str, ...], all_: bool) -> None:
    """Put dead letters back on the subscription's queue, each once."""
    if bool(ids) == all_:
        raise click.UsageError("give --id ID (repeatable) or --all")
    from ..runtime.deadletters import redrive

    bus = settings().bus()
    _known_sub(bus, sub)
    n = redrive(bus, sub, _check_ids(list(ids)) if ids else None)
    emit({"subscription": sub, "redriven": n}, f"redriven {n} dead letter(s) of {sub!r}")


@dlq.command("purge")
@common_options
@click.argument("sub", metavar="SUB")
@click.option("--before", metavar="TIME", help="Only those dead-lettered before TIME.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(sub: str, before: str | None, yes: bool) -> None:
    """Delete dead letters (asks first)."""
    from ..runtime.deadletters import count_dead_letters, purge

    cutoff = parse_time(before, field="--before") if before else None
    bus = settings().bus()
    _known_sub(bus, sub)
    if cutoff is None:
        count = count_dead_letters(bus, sub)
        what = f"all {count} dead letter(s) of {sub!r}"
    else:
        what = f"the dead letters of {sub!r} from before {cutoff.iso()}"
    _confirm(f"Delete {what}?", yes)
    n = purge(bus, sub, before_ms=cutoff.lower_id()[0] if cutoff else None)
    emit({"subscription": sub, "purged": n}, f"purged {n} dead letter(s) of {sub!r}")


# subscriptions ----------------------------------------------------------------------------
@click.group(cls=ChiGroup)
@common_options
def subscriptions() -> None:
    """Registered subscriptions: list, rewind, prune."""


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
        seen = int(info.get("last_seen_ms") or 0) if info else 0
        rows.append({
            "name": name,
            "registered": info is not None,
            "active": seen >= cutoff,  # seen within subscriptions_seen_days
            "last_seen": _when(seen) if info else None,
            "types": (info or {}).get("types", []),
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
            f"{r['name'] + stale:<24} seen {seen:<20} lag {lag!s:<7} pending {r['pending']:<6}"
            f" dlq {r['dead_letters']:<5} types {','.join(r['types']) or '-'}"
            f"  topics {','.join(r['topics']) or '-'}"
        )

    if not emit_lines(rows, render) and not settings().json:
        click.echo("no subscriptions", err=True)


@subscriptions.command("rewind")
@common_options
@click.argument("sub", metavar="SUB")
@click.option("--to", "to", metavar="ID|TIME", required=True, help="Deliver again from here.")
@click.option("--topic", "topics", multiple=True, help="Only this topic (repeatable).")
def subscriptions_rewind(sub: str, to: str, topics: tuple[str, ...]) -> None:
    """Move the subscription's groups back to ID|TIME (XGROUP SETID on each topic)."""
    from ..ops.registry import rewind

    point = parse_time(to, field="--to")
    bus = settings().bus()
    chosen = [validate_name(t, "topic") for t in topics] or None
    done = rewind(bus, sub, point, chosen)
    if not done:
        raise NotFoundError(f"subscription {sub!r} has no consumer group on any topic")
    emit(
        {"subscription": sub, "topics": done},
        [f"rewound {sub!r} on topic {t}: next read starts after {sid}" for t, sid in done.items()],
    )


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
            why = "no registry entry" if c.info is None else f"last seen {_when(c.last_seen_ms)}"
            click.echo(f"{c.name}: {why}; groups on {', '.join(c.topics) or 'no topic'}", err=True)
    _confirm(f"Remove {len(candidates)} subscription(s)?", yes)
    pruned = prune(bus, candidates, seen_days)
    emit({"pruned": pruned}, f"pruned {len(pruned)}: {', '.join(pruned) or '-'}")


# retention --------------------------------------------------------------------------------
@click.group(cls=ChiGroup)
@common_options
def retention() -> None:
    """Trim streams without dropping what a subscription still needs."""


def _apply(topics: tuple[str, ...], max_age: str | None, max_len: int | None) -> list[Any]:
    from ..ops.retention import apply_retention

    s = settings()
    age = parse_duration(max_age, "--max-age") if max_age else None
    names = [validate_name(t, "topic") for t in topics] or None
    bus = s.bus()
    return apply_retention(bus, s.config, topics=names, max_age_ms=age, max_len=max_len)


@retention.command("apply")
@common_options
@click.option("--topic", "topics", multiple=True, help="Only this topic (repeatable).")
@click.option("--max-age", metavar="DUR", help="Trim entries older than DUR.")
@click.option("--max-len", type=click.IntRange(min=0), help="Keep at most N entries.")
def retention_apply(topics: tuple[str, ...], max_age: str | None, max_len: int | None) -> None:
    """Trim once; report what was trimmed and what a group held back."""
    results = _apply(topics, max_age, max_len)
    if not results and not settings().json:
        click.echo("no retention policy: give --max-age/--max-len or configure retention",
                   err=True)
    emit_lines((r.as_dict() for r in results), lambda d: _describe(d))


def _describe(d: dict[str, Any]) -> str:
    from ..ops.retention import TrimResult

    return TrimResult(**d).describe()


@retention.command("run")
@common_options
@click.option("--interval", type=click.FloatRange(min=0.1), help="Seconds between passes"
              " (default: config retention.interval_s).")
@click.option("--once", is_flag=True, help="One pass, then exit.")
def retention_run(interval: float | None, once: bool) -> None:
    """Apply the configured per-topic policies continuously (Procfile `retention:`)."""
    s = settings()
    every = interval if interval is not None else s.config.retention.interval_s
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    cfg = s.config.retention
    if not (cfg.default.max_age or cfg.default.max_len is not None or cfg.topics):
        click.echo("warning: no retention policy configured (retention.default or"
                   " retention.topics in the config file): nothing will be trimmed", err=True)
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while not stop:
            started = time.monotonic()
            try:
                for r in _apply((), None, None):
                    if r.trimmed or r.held_back:
                        emit_lines([r.as_dict()], lambda d: _describe(d))
            except RedisError as exc:  # keep running: Redis may be restarting
                if once:
                    raise
                click.echo(f"retention pass failed: {exc}", err=True)
            if once:
                return
            while not stop and time.monotonic() - started < every:
                time.sleep(min(0.2, every))
    except KeyboardInterrupt:
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
