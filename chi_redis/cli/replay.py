"""``chi-redis replay``: deliver a range of history again."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import click

from ..errors import ChiError, ConfigError
from ..ops.timeparse import parse_rate
from ..store.history import By
from .options import (
    common_options,
    json_line,
    range_options,
    settings,
    split_globs,
    split_topics,
    stdout_is_tty,
    time_range,
    usage_errors,
)

__all__ = ["replay_cmd"]


@click.command("replay")
@common_options
@range_options(topic_help="Topic (repeatable).", until_help="Until (inclusive; default: now).")
@click.option("--to", "to_sub", metavar="SUBSCRIPTION", help="Deliver to this subscription only.")
@click.option("--republish", is_flag=True, help="Publish again as new events (marked).")
@click.option("--print", "print_", is_flag=True, help="Print JSON lines.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed.")
@click.option("--rate", metavar="N/s",
              help="At most N events per second (all workers together), spread evenly.")
@click.option("--batch-size", type=click.IntRange(1, 10_000),
              help="Events per read (default: config replay.batch_size, 500).")
@click.option("--workers", type=click.IntRange(1, 64),
              help="Parallel delivery threads, order not kept above 1 (default: config"
                   " replay.concurrent_workers, 1).")
@click.option("--checkpoint", metavar="NAME", help="Resumable: run again to continue.")
@click.option("--source", type=click.Choice(["stream", "archive"]), default="stream",
              show_default=True,
              help="archive: read by event time from the configured database/file store"
                   " (same targets and options).")
def replay_cmd(
    topics: tuple[str, ...], since: str | None, until: str | None, by: By,
    types: tuple[str, ...], to_sub: str | None, republish: bool, print_: bool, dry_run: bool,
    rate: str | None, batch_size: int | None, workers: int | None, checkpoint: str | None,
    source: str,
) -> None:
    """Replay a range of events into one subscription, back onto the topic, or stdout."""
    from ..ops.replay import ReplayOptions

    chosen = [x for x in (to_sub, republish, print_) if x]
    if len(chosen) > 1:
        raise click.UsageError("choose one target: --to SUBSCRIPTION, --republish or --print")
    if not chosen and not dry_run:
        raise click.UsageError(
            "choose a target: --to SUBSCRIPTION, --republish or --print (or --dry-run to count)"
        )
    names = split_topics(topics)
    globs = split_globs(types)
    lo, hi = time_range(since, until, by)
    with usage_errors():
        per_second = parse_rate(rate) if rate else None
    s = settings()
    replay_config = s.config.replay
    if not replay_config.enabled:
        raise ConfigError("replay is disabled in the config (events.replay.enabled: false)")
    batch_size = batch_size or replay_config.batch_size
    workers = workers or replay_config.concurrent_workers
    opts = ReplayOptions(
        batch_size=batch_size, rate=per_second, workers=workers, dry_run=dry_run,
        checkpoint=checkpoint,
    )
    opts.validate()
    with _stop_on_signals() as stop:
        opts.stop = stop
        try:
            _run(s, opts, names, globs, lo, hi, by, to_sub, republish, print_, source)
        except ChiError as exc:
            if stop.signum:  # the shell's convention: 128 + the signal (130 for Ctrl-C)
                exc.exit_code = 128 + stop.signum  # type: ignore[attr-defined]
            raise


class _SignalStop(threading.Event):
    """Set by the first SIGINT/SIGTERM; ``signum`` says which."""

    signum = 0


@contextmanager
def _stop_on_signals() -> Iterator[_SignalStop]:
    """SIGINT (Ctrl-C) and SIGTERM stop the replay before its next delivery, so the
    checkpoint stands exactly after the last one delivered (even for ``--print``); a second
    signal interrupts at once.  The command then exits with 128 + the signal's number."""
    stop = _SignalStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(signum: int, frame: Any) -> None:
        stop.signum = stop.signum or signum
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(s: Any, opts: Any, names: list[str], globs: list[str] | None, lo: Any, hi: Any,
         by: By, to_sub: str | None, republish: bool, print_: bool, source: str) -> None:
    from ..ops.replay import ReplayInterrupted, choose_target, estimate_total, replay

    dry_run = opts.dry_run
    bus = s.bus()
    printing = print_ and not dry_run
    target, default_topics = choose_target(
        bus, to_sub=to_sub, republish=republish,
        out=sys.stdout.buffer if print_ else None,
    )
    if source == "archive":
        _from_archive(s, bus, target, names or (default_topics if to_sub else []), lo, hi,
                      globs, opts, report_err=printing)
        return
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


def _from_archive(s: Any, bus: Any, target: Any, names: list[str], lo: Any, hi: Any,
                  globs: list[str] | None, opts: Any, *, report_err: bool) -> None:
    """``--source archive``: the same options, read by event time from the store."""
    from ..config import store_from_config
    from ..ops.archive_replay import archive_total, replay_archive

    ctx = click.get_current_context()
    if ctx.params.get("by") == "append" and (
            ctx.get_parameter_source("by") != click.core.ParameterSource.DEFAULT):
        raise click.UsageError("--source archive reads by event time: drop --by append")
    if s.config.store.type == "memory" or not s.config.store.enabled:
        raise click.UsageError("--source archive needs store.type: database or file")
    # A reader: the archiver may be writing to a file store right now.
    store = store_from_config(s.config, bus=bus, read_only=True)
    try:
        run: Any = partial(replay_archive, store, target, bus.codec, topics=names, since=lo,
                           until=hi, types=globs, options=opts, bus=bus)
        if stdout_is_tty() and not report_err and not s.json:
            total = archive_total(store, lo.lower_us() if lo else 0,
                                  hi.upper_us() if hi else 2**62, names)
            with click.progressbar(length=max(total, 1), label="replaying") as bar:
                report = run(progress=bar.update)
        else:
            report = run()
    finally:
        close: Any = getattr(store, "close", None)
        if close is not None:
            close()
    if s.json:
        click.echo(json_line(report.as_dict()).decode(), err=report_err)
    else:
        click.echo(report.summary(), err=report_err)
