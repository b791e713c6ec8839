"""``chi-redis stats``: lengths, lag, pending work and dead letters at a glance."""

from __future__ import annotations

import time

import click

from .options import common_options, emit, settings, stdout_is_tty

__all__ = ["stats_cmd"]


@click.command("stats")
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
