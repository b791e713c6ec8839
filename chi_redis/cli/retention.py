"""``chi-redis retention apply|run``: trim streams, once or continuously."""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

import click

from ..errors import RedisError
from ..events.names import validate_name
from ..ops.timeparse import parse_duration
from .options import ChiGroup, common_options, emit_lines, settings, usage_errors

__all__ = ["retention"]


@click.group(cls=ChiGroup)
@common_options
def retention() -> None:
    """Trim streams without dropping what a subscription still needs."""


def _apply(topics: tuple[str, ...], max_age: str | None, max_len: int | None) -> list[Any]:
    from ..ops.retention import apply_retention

    s = settings()
    with usage_errors():
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
