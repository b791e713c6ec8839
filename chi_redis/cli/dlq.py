"""``chi-redis dlq list|show|redrive|purge``: inspect and repair dead letters.

``list`` prints each dead letter's own id first; ``show`` and ``redrive --id`` take that id,
or the id or stream id of the event it holds when only one dead letter holds that event.
"""

from __future__ import annotations

import re
from typing import Any

import click
import msgspec

from ..errors import NotFoundError, ValidationError
from ..events.names import validate_name
from ..ops.timeparse import parse_time
from . import bridge_cmds
from .bridge_cmds import bridge_name
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

__all__ = ["dlq"]

_ID = re.compile(r"\d{1,20}-\d{1,20}")
#: How much of the error ``dlq list`` shows on its one line (``dlq show`` has all of it).
ERROR_CHARS = 160
LIST_HEADER = (
    f"{'DEAD-LETTER ID':<17} {'TYPE':<24} {'EVENT ID':<36} {'REASON':<18} {'ATTEMPTS':>8}  ERROR"
)


@click.group(cls=ChiGroup)
@common_options
def dlq() -> None:
    """Dead letters: list, show, redrive, purge."""


def _known_sub(bus: Any, sub: str) -> None:
    """Refuse a subscription neither registered nor holding dead letters."""
    from ..ops.deadletters import dead_letters_exist

    validate_name(sub, "subscription")
    registered = bus.call(lambda: bus.client.hexists(bus.keys.subs(), sub))
    if not registered and not dead_letters_exist(bus, sub):
        raise NotFoundError(f"unknown subscription {sub!r}: not registered and no dead letters")


def _check_ids(ids: list[str]) -> list[str]:
    for i in ids:
        if not _ID.fullmatch(i):
            raise ValidationError(f"invalid dead-letter id {i!r}: expected MS-SEQ", field="id")
    return ids


def one_line(text: str, limit: int = ERROR_CHARS) -> str:
    """``text`` on one line, cut at the end with ``…`` when longer than ``limit``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _resolve(bus: Any, sub: str, ref: str) -> str:
    from ..ops.deadletters import resolve_dead_letter

    return resolve_dead_letter(bus, sub, ref).id


def _dl_dict(dl: Any, full: bool = False) -> dict[str, Any]:
    d = msgspec.structs.asdict(dl)
    body = d.pop("body")
    if not full:
        d.pop("traceback")
        return d
    if dl.kind in ("event", "raw") and body:
        from ..runtime.deadletters import decode_body

        try:
            fields = decode_body(body)
            d["event"] = settings().bus().codec.envelope(dl.topic, dl.source_id.encode(), fields)
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
    from ..ops.deadletters import list_dead_letters

    s = settings()
    if bridge_name(s):  # its dead-letter queue (RabbitMQ) or topic (Kafka)
        bridge_cmds.dlq_list(s, sub, limit, after, _render_row, LIST_HEADER)
        return
    with usage_errors():
        cursor = _check_ids([after])[0] if after else None
    validate_name(sub, "subscription")  # before the bus connects (and asks INFO)
    bus = s.bus()
    _known_sub(bus, sub)
    letters = list_dead_letters(bus, sub, after=cursor, count=limit)
    n = emit_lines((_dl_dict(d) for d in letters), _render_row, LIST_HEADER)
    if not n and not settings().json:
        click.echo(f"no dead letters in {sub!r}", err=True)


def _render_row(d: dict[str, Any]) -> str:
    error = f"{d['error_type']}: {d['error']}" if d["error"] else d["error_type"] or "-"
    return (
        f"{d['id']:<17} {d['type'] or '-':<24} {d['event_id'] or '-':<36} {d['reason'] or '-':<18}"
        f" {d['attempts']:>8}  {one_line(error)}"
    )


@dlq.command("show")
@common_options
@click.argument("sub", metavar="SUB")
@click.argument("dl_id", metavar="ID")
def dlq_show(sub: str, dl_id: str) -> None:
    """Show one dead letter (by its id, or its event's id or stream id) with its traceback."""
    from ..ops.deadletters import resolve_dead_letter

    if bridge_name(settings()):
        bridge_cmds.dlq_show(settings(), sub, dl_id)
        return
    validate_name(sub, "subscription")  # before the bus connects (and asks INFO)
    bus = settings().bus()
    _known_sub(bus, sub)
    d = _dl_dict(resolve_dead_letter(bus, sub, dl_id), full=True)
    tb = d.get("traceback") or ""
    lines = [f"{k}: {v}" for k, v in d.items() if k not in ("traceback", "event")]
    lines.append(f"first_failure: {iso_ms(d['first_failure_ms'])}")
    lines.append(f"last_failure: {iso_ms(d['last_failure_ms'])}")
    if d.get("event") is not None:
        lines.append("event: " + msgspec.json.encode(d["event"]).decode())
    if tb:
        lines += ["traceback:", tb.rstrip()]
    emit(d, lines)


@dlq.command("redrive")
@common_options
@click.argument("sub", metavar="SUB")
@click.option("--id", "ids", multiple=True, metavar="ID",
              help="Dead letter, or its event's id (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Redrive every dead letter.")
def dlq_redrive(sub: str, ids: tuple[str, ...], all_: bool) -> None:
    """Put dead letters back on the subscription's queue, each once."""
    if bool(ids) == all_:
        raise click.UsageError("give --id ID (repeatable) or --all")
    from ..ops.deadletters import redrive

    if bridge_name(settings()):  # ids: dead-letter ids or event ids
        n = bridge_cmds.dlq_redrive(settings(), sub, list(ids) if ids else None)
        emit({"subscription": sub, "redriven": n}, f"redriven {n} dead letter(s) of {sub!r}")
        return
    validate_name(sub, "subscription")  # before the bus connects (and asks INFO)
    bus = settings().bus()
    _known_sub(bus, sub)
    n = redrive(bus, sub, [_resolve(bus, sub, i) for i in ids] if ids else None)
    emit({"subscription": sub, "redriven": n}, f"redriven {n} dead letter(s) of {sub!r}")


@dlq.command("purge")
@common_options
@click.argument("sub", metavar="SUB")
@click.option("--before", metavar="TIME", help="Only those dead-lettered before TIME.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(sub: str, before: str | None, yes: bool) -> None:
    """Delete dead letters (asks first)."""
    from ..ops.deadletters import count_dead_letters, purge

    with usage_errors():
        cutoff = parse_time(before, field="--before") if before else None
    if bridge_name(settings()):
        n = bridge_cmds.dlq_purge(settings(), sub, cutoff.lower_id()[0] if cutoff else None, yes)
        emit({"subscription": sub, "purged": n}, f"purged {n} dead letter(s) of {sub!r}")
        return
    validate_name(sub, "subscription")  # before the bus connects (and asks INFO)
    bus = settings().bus()
    _known_sub(bus, sub)
    if cutoff is None:
        count = count_dead_letters(bus, sub)
        what = f"all {count} dead letter(s) of {sub!r}"
    else:
        what = f"the dead letters of {sub!r} from before {cutoff.iso()}"
    confirm(f"Delete {what}?", yes)
    n = purge(bus, sub, before_ms=cutoff.lower_id()[0] if cutoff else None)
    emit({"subscription": sub, "purged": n}, f"purged {n} dead letter(s) of {sub!r}")
