"""The ``chi-redis`` command: see what is happening, look back, replay, repair, trim.

::

    chi-redis publish TOPIC TYPE [DATA_JSON]   chi-redis dlq list|show|redrive|purge
    chi-redis tail TOPIC...                    chi-redis subscriptions list|rewind|prune
    chi-redis events get|list                  chi-redis stats [--watch]
    chi-redis replay ...                       chi-redis retention apply|run
    chi-redis doctor                           chi-redis worker MODULES...

Exit codes: 0 success, 1 an error the user can fix (one line on stderr, no traceback, no
password), 2 a usage error.  Shared options: see :mod:`chi_redis.cli.options`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import click
import msgspec

from .. import __version__
from ..errors import NotFoundError, ValidationError, redact_url
from ..events.event import Event
from ..events.names import validate_name
from ..ops.timeparse import MAX_SEQ, TimePoint, format_id, parse_id, parse_rate, parse_time, pred
from ..store.history import (
    By,
    TypeFilter,
    envelope,
    envelope_json,
    index_pages,
    merged,
    split_globs,
    str_fields,
    stream_pages,
)
from .admin import dlq, retention, subscriptions
from .options import (
    ChiGroup,
    common_options,
    emit,
    emit_lines,
    json_line,
    settings,
    stdout_is_tty,
)

__all__ = ["cli", "main"]

BY = click.Choice(["append", "event-time"])


@click.group(cls=ChiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.version_option(__version__, prog_name="chi-redis")
def cli() -> None:
    """Operate a chi-redis deployment: events, replay, dead letters, retention.

    TIME is ISO 8601 (naive = UTC), a relative age (-15m, -2h, -7d) or a stream id;
    DUR is 30s, 15m, 7d.
    """


cli.add_command(dlq)
cli.add_command(subscriptions)
cli.add_command(retention)


def main() -> None:
    """Console-script entry point.  Library log records below ``$CHI_LOG_LEVEL`` (default
    ERROR) stay quiet, so a user-fixable error is exactly one line."""
    level = os.environ.get("CHI_LOG_LEVEL", "ERROR").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "ERROR",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cli(prog_name="chi-redis")


def _time(text: str | None, field: str) -> TimePoint | None:
    return None if text is None else parse_time(text, field=field)


def _topics(values: tuple[str, ...]) -> list[str]:
    return sorted({validate_name(t, "topic") for v in values for t in v.split(",") if t})


# publish ----------------------------------------------------------------------------------
@cli.command()
@common_options
@click.argument("topic")
@click.argument("type_", metavar="TYPE")
@click.argument("data", metavar="[DATA_JSON]", required=False)
@click.option("--meta", multiple=True, metavar="K=V", help="Metadata entry (repeatable).")
@click.option("--idempotency-key", metavar="KEY", help="Publish at most once per key (24 h).")
def publish(
    topic: str, type_: str, data: str | None, meta: tuple[str, ...], idempotency_key: str | None
) -> None:
    """Publish one event; prints its stream id.  DATA_JSON '-' reads stdin."""
    if data == "-":
        data = sys.stdin.read()
    try:
        payload = msgspec.json.decode(data) if data else None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"DATA_JSON is not valid JSON: {exc}", field="data") from None
    metadata: dict[str, str | int | float | bool] = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(f"--meta {item!r}: use KEY=VALUE", field="meta")
        metadata[key] = value
    event = Event(type=type_, topic=validate_name(topic, "topic"), data=payload, metadata=metadata)
    sid = settings().bus().publish(event, idempotency_key=idempotency_key)
    emit({"stream_id": sid, "id": event.id, "topic": event.topic, "type": event.type}, sid)


# tail -------------------------------------------------------------------------------------
@cli.command()
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
    names = _topics(topics)
    match = TypeFilter(split_globs(types))
    start = _time(from_, "--from")
    bus = settings().bus()
    k = bus.keys
    streams = {k.stream(t): t for t in names}
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
            read = bus.call(lambda w=want: client.xread(positions, count=w, block=block_ms))
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
                out.write(envelope_json(bus.codec, streams[stream], sid, fields) + b"\n")
                n += 1
            out.flush()
    except KeyboardInterrupt:
        out.flush()


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
@cli.group(cls=ChiGroup)
@common_options
def events() -> None:
    """Look events up in the event store."""


@events.command("get")
@common_options
@click.argument("event_id")
def events_get(event_id: str) -> None:
    """Show one event by its id."""
    bus = settings().bus()
    where = bus.store.locate(event_id)
    entries = []
    if where is not None:
        topic, sid = where
        entries = bus.call(lambda: bus.client.xrange(bus.keys.stream(topic), sid, sid))
    if not entries:
        raise NotFoundError(f"no event {event_id!r}" + (" (trimmed)" if where else ""))
    env = envelope(bus.codec, where[0], entries[0][0], str_fields(entries[0][1]))  # type: ignore[index]
    emit(env, msgspec.json.format(json_line(env), indent=2).decode())


def _render_event(e: dict[str, Any]) -> str:
    if "error" in e:
        return f"{e['stream_id']}  {e['topic']:<12} ERROR {e['error']}"
    return f"{e['stream_id']}  {e['timestamp']}  {e['topic']:<12} {e['type']:<28} {e['id']}"


def read_history(
    bus: Any, topics: list[str], by: By, since: TimePoint | None, until: TimePoint | None,
    page: int = 1000,
) -> Any:
    """Merged pages of items of ``topics`` in the range."""
    if by == "append":
        lo = since.lower_id() if since else (0, 0)
        hi = until.upper_id() if until else (MAX_SEQ, MAX_SEQ)
        readers = [stream_pages(bus.client, bus.keys, t, lo, hi, page=page) for t in topics]
    else:
        lo_us = since.lower_us() if since else 0
        hi_us = until.upper_us() if until else 2**62
        readers = [index_pages(bus.client, bus.keys, t, lo_us, hi_us, page=page) for t in topics]
    return merged(readers, by, page)


@events.command("list")
@common_options
@click.option("--topic", "topics", multiple=True, help="Topic (repeatable; default: all).")
@click.option("--since", metavar="TIME", help="From (inclusive): TIME or stream id.")
@click.option("--until", metavar="TIME", help="Until (inclusive): TIME or stream id.")
@click.option("--by", type=BY, default="append", show_default=True,
              help="Range over append time (stream ids) or event time (the time index).")
@click.option("--types", multiple=True, metavar="GLOB", help="Only these types (repeatable).")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="At most N events (0: no limit).")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the first N.")
def events_list(
    topics: tuple[str, ...], since: str | None, until: str | None, by: By,
    types: tuple[str, ...], limit: int, offset: int,
) -> None:
    """List events, oldest first."""
    names = _topics(topics)
    match = TypeFilter(split_globs(types))
    lo, hi = _time(since, "--since"), _time(until, "--until")
    bus = settings().bus()
    names = names or bus.store.topics()

    def gen() -> Any:
        skip, left = offset, limit or None
        for page in read_history(bus, names, by, lo, hi, page=min(1000, (limit or 1000) + offset)):
            for topic, sid, f, _ in page:
                if match and not match(f):
                    continue
                if skip:
                    skip -= 1
                    continue
                yield envelope(bus.codec, topic, sid, f)
                if left is not None:
                    left -= 1
                    if not left:
                        return

    emit_lines(gen(), _render_event)


# replay -----------------------------------------------------------------------------------
@cli.command("replay")
@common_options
@click.option("--topic", "topics", multiple=True, help="Topic (repeatable).")
@click.option("--since", metavar="TIME", help="From (inclusive): TIME or stream id.")
@click.option("--until", metavar="TIME", help="Until (inclusive; default: now).")
@click.option("--by", type=BY, default="append", show_default=True,
              help="Range over append time (stream ids) or event time (the time index).")
@click.option("--to", "to_sub", metavar="SUBSCRIPTION", help="Deliver to this subscription only.")
@click.option("--republish", is_flag=True, help="Publish again as new events (marked).")
@click.option("--print", "print_", is_flag=True, help="Print JSON lines.")
@click.option("--types", multiple=True, metavar="GLOB", help="Only these types (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed.")
@click.option("--rate", metavar="N/s", help="At most N events per second.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Parallel delivery threads (order is not kept above 1).")
@click.option("--checkpoint", metavar="NAME", help="Resumable: run again to continue.")
def replay_cmd(
    topics: tuple[str, ...], since: str | None, until: str | None, by: By, to_sub: str | None,
    republish: bool, print_: bool, types: tuple[str, ...], dry_run: bool, rate: str | None,
    batch_size: int, workers: int, checkpoint: str | None,
) -> None:
    """Replay a range of events into one subscription, back onto the topic, or stdout."""
    from ..ops.replay import ReplayInterrupted, ReplayOptions, choose_target, estimate_total, replay

    chosen = [x for x in (to_sub, republish, print_) if x]
    if len(chosen) > 1:
        raise click.UsageError("choose one target: --to SUBSCRIPTION, --republish or --print")
    if not chosen and not dry_run:
        raise click.UsageError(
            "choose a target: --to SUBSCRIPTION, --republish or --print (or --dry-run to count)"
        )
    names = _topics(topics)
    globs = split_globs(types)
    lo, hi = _time(since, "--since"), _time(until, "--until")
    opts = ReplayOptions(
        batch_size=batch_size, rate=parse_rate(rate) if rate else None, workers=workers,
        dry_run=dry_run, checkpoint=checkpoint,
    )
    opts.validate()
    s = settings()
    bus = s.bus()
    printing = print_ and not dry_run
    target, default_topics = choose_target(
        bus, to_sub=to_sub, republish=republish,
        out=sys.stdout.buffer if print_ else None,
    )
    names = names or default_topics
    # The summary goes to stderr when stdout carries the events.
    report_err = printing
    try:
        if stdout_is_tty() and not printing and not s.json:
            total = estimate_total(bus, names, by, lo, hi)
            with click.progressbar(length=max(total, 1), label="replaying") as bar:
                report = replay(bus, target, topics=names, by=by, since=lo, until=hi,
                                types=globs, options=opts, progress=bar.update)
        else:
            report = replay(bus, target, topics=names, by=by, since=lo, until=hi, types=globs,
                            options=opts)
    except ReplayInterrupted as exc:
        for g in exc.report.gaps:
            click.echo(f"warning: {g.describe()}", err=True)
        raise
    if s.json:
        click.echo(json_line(report.as_dict()).decode(), err=report_err)
        return
    for g in report.gaps:
        click.echo(f"warning: {g.describe()}", err=True)
    click.echo(report.summary(), err=report_err)


# stats ------------------------------------------------------------------------------------
@cli.command("stats")
@common_options
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--iterations", type=click.IntRange(min=1), hidden=True)
def stats_cmd(watch: bool, interval: float, iterations: int | None) -> None:
    """Per topic and per subscription: length, lag, pending, delayed, dead letters."""
    from ..ops.stats import collect, render

    s = settings()
    bus = s.bus()
    runs = 0
    try:
        while True:
            st = collect(bus)
            if s.json:
                emit(st.as_dict())
            else:
                if watch and stdout_is_tty():
                    click.clear()
                for line in render(st):
                    click.echo(line)
            runs += 1
            if not watch or (iterations is not None and runs >= iterations):
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


# doctor -----------------------------------------------------------------------------------
@cli.command()
@common_options
def doctor() -> None:
    """Check the Redis server the way production needs it; exit 1 on findings."""
    from ..ops.doctor import check_server

    s = settings()
    bus = s.bus()
    findings = check_server(bus.client, s.redis_url)
    failed = [f for f in findings if f.level == "fail"]
    if s.json:
        emit({"ok": not failed, "server": redact_url(s.redis_url),
              "findings": [f.as_dict() for f in findings]})
    else:
        click.echo(f"server {redact_url(s.redis_url)}")
        for f in findings:
            click.echo(f"{f.level.upper():<5} {f.check}: {f.message}")
    if failed:
        if not s.json:
            click.echo(f"{len(failed)} problem(s) found", err=True)
        sys.exit(1)


# worker -----------------------------------------------------------------------------------
@cli.command()
@common_options
@click.argument("modules", nargs=-1, required=True)
@click.option("--processes", "-p", type=click.IntRange(min=1), help="Worker processes.")
@click.option("--threads", "-t", type=click.IntRange(min=1), help="Threads per process.")
def worker(modules: tuple[str, ...], processes: int | None, threads: int | None) -> None:
    """Run Dramatiq workers for the subscriptions MODULES register."""
    s = settings()
    env = dict(os.environ)
    env["CHI_REDIS_URL"] = s.redis_url
    env["CHI_NAMESPACE"] = s.ns
    if s.config_path:
        env["CHI_CONFIG"] = s.config_path
    argv = [sys.executable, "-m", "dramatiq", "chi_redis.worker", *modules]
    if processes:
        argv += ["--processes", str(processes)]
    if threads:
        argv += ["--threads", str(threads)]
    execute(argv, env)


def execute(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with ``argv`` (tests replace this function)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":  # pragma: no cover
    main()
