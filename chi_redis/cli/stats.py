"""``chi-redis stats``: lengths, lag, pending work and dead letters at a glance."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import click

from . import bridge_cmds
from .bridge_cmds import bridge_name
from .options import common_options, emit, settings, split_topics, stdout_is_tty

__all__ = ["stats_cmd"]


@click.command("stats")
@common_options
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--iterations", type=click.IntRange(min=1), hidden=True)
@click.option("--sub", "subs", multiple=True, metavar="NAME",
              help="Only this subscription (repeatable; needed on bus.type rabbitmq).")
def stats_cmd(watch: bool, interval: float, iterations: int | None,
              subs: tuple[str, ...]) -> None:
    """Per topic and per subscription: length, lag, pending, delayed, dead letters."""
    s = settings()
    names = split_topics(subs)
    if bridge_name(s):
        from ..bridges.stats import render as render_bridge

        def gather() -> tuple[dict[str, Any], Iterable[str]]:
            st = bridge_cmds.stats(s, names)
            return st, render_bridge(st)
    else:
        from ..ops.stats import collect, render

        bus = s.bus()

        def gather() -> tuple[dict[str, Any], Iterable[str]]:
            st = collect(bus)
            if names:
                st.subscriptions = [x for x in st.subscriptions if x.name in names]
            return st.as_dict(), render(st)

    runs = 0
    try:
        while True:
            data, lines = gather()
            if s.json:
                emit(data)
            else:
                if watch and stdout_is_tty():
                    click.clear()
                for line in lines:
                    click.echo(line)
            runs += 1
            if not watch or (iterations is not None and runs >= iterations):
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return
