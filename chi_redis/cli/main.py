"""The ``chi-redis`` command: see what is happening, look back, replay, repair, trim.

::

    chi-redis publish TOPIC TYPE [DATA_JSON]   chi-redis dlq list|show|redrive|purge
    chi-redis tail TOPIC...                    chi-redis subscriptions list|show|rewind|prune
    chi-redis events get|list                  chi-redis stats [--watch]
    chi-redis replay ...                       chi-redis retention apply|run
    chi-redis doctor                           chi-redis worker MODULES...
    chi-redis config check FILE|show           chi-redis metrics --port P
    chi-redis health [--max-lag N]             chi-redis console [--host H --port P]

Exit codes: 0 success, 1 an error the user can fix (one line on stderr, no traceback, no
password), 2 a usage error.  Shared options: see :mod:`chi_redis.cli.options`.

Each command group lives in its own module, imported only when that command runs (or its
own ``--help`` is asked for): ``chi-redis --help`` lists them from :data:`COMMANDS` alone,
so a command's start-up never pays for the others' imports.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from typing import Any

import click

from .. import __version__
from .options import ChiGroup, common_options

__all__ = ["COMMANDS", "LazyGroup", "cli", "main"]

#: Command name → (``"module:attribute"`` of the click command, its help's first line).
#: The help line is what ``chi-redis --help`` shows; a test checks it against the command.
COMMANDS: dict[str, tuple[str, str]] = {
    "archive": (
        "chi_redis.cli.archive:archive",
        "The archiver: copy events into the configured database or file store.",
    ),
    "config": (
        "chi_redis.cli.config:config_group",
        "Configuration files: check one, show the effective configuration.",
    ),
    "console": (
        "chi_redis.cli.console:console_cmd",
        "Serve the web console: lag, stuck entries, dead letters, events and replay.",
    ),
    "demo": (
        "chi_redis.cli.demo:demo",
        "Tour: publish, query, run the example handlers (no Redis needed).",
    ),
    "dlq": ("chi_redis.cli.dlq:dlq", "Dead letters: list, show, redrive, purge."),
    "doctor": (
        "chi_redis.cli.doctor:doctor",
        "Check the Redis server the way production needs it; exit 1 on findings.",
    ),
    "events": ("chi_redis.cli.events:events", "Look events up in the event store."),
    "health": (
        "chi_redis.cli.health:health_cmd",
        "Exit 0 when Redis and the subscriptions are ready, else 1 with the reason.",
    ),
    "metrics": (
        "chi_redis.cli.metrics:metrics_cmd",
        "Serve the stream gauges on /metrics and health on /healthz, /readyz.",
    ),
    "migrate": (
        "chi_redis.cli.migrate:migrate_cmd",
        "Move data of the earlier key layout (one id hash) into the current one.",
    ),
    "outbox": (
        "chi_redis.cli.outbox:outbox",
        "Transactional outbox: its table, its relay to the streams, its backlog and failed rows.",
    ),
    "publish": (
        "chi_redis.cli.events:publish",
        "Publish one event; prints its stream id.  DATA_JSON '-' reads stdin.",
    ),
    "replay": (
        "chi_redis.cli.replay:replay_cmd",
        "Replay a range of events into one subscription, back onto the topic, or stdout.",
    ),
    "retention": (
        "chi_redis.cli.retention:retention",
        "Trim streams without dropping what a subscription still needs.",
    ),
    "store": ("chi_redis.cli.archive:store_group", "The persistent event store: create its table."),
    "stats": (
        "chi_redis.cli.stats:stats_cmd",
        "Per topic and per subscription: length, lag, pending, delayed, dead letters.",
    ),
    "subscriptions": (
        "chi_redis.cli.subscriptions:subscriptions",
        "Registered subscriptions: list, show, rewind, prune.",
    ),
    "tail": (
        "chi_redis.cli.events:tail",
        "Follow topics: one JSON line per event (no consumer group involved).",
    ),
    "worker": (
        "chi_redis.cli.worker:worker",
        "Run Dramatiq workers for the subscriptions MODULES register.",
    ),
}


class LazyGroup(ChiGroup):
    """A group whose subcommands are imported on first use (click's lazy-loading pattern).

    ``lazy_subcommands`` maps a command name to ``("package.module:attribute", help)``.
    The group's own help lists every command with that help text, imports nothing.
    """

    def __init__(
        self, *args: Any, lazy_subcommands: Mapping[str, tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, _, attribute = self.lazy_subcommands[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}:{attribute} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own version would import every command to ask for its short help.
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            if name in self.lazy_subcommands:
                # A stand-in command shortens the text exactly as the real one would.
                text = click.Command(name, help=self.lazy_subcommands[name][1])
                rows.append((name, text.get_short_help_str(limit)))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=LazyGroup, lazy_subcommands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@common_options
@click.version_option(__version__, prog_name="chi-redis")
def cli() -> None:
    """Operate a chi-redis deployment: events, replay, dead letters, retention.

    TIME is ISO 8601 (naive = UTC), a relative age (-15m, -2h, -7d) or a stream id;
    DUR is 30s, 15m, 7d.
    """


def main() -> None:
    """Console-script entry point.  Library log records below ``$CHI_LOG_LEVEL`` (default
    ERROR) stay quiet, so a user-fixable error is exactly one line."""
    level = os.environ.get("CHI_LOG_LEVEL", "ERROR").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "ERROR",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if "CHI_LOG_LEVEL" not in os.environ:
        # pika logs a refused connection at ERROR, with tracebacks: the bus's
        # BusUnavailableError says it in one line (docs/buses.md).
        for name in ("pika",):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    from ..observe.logs import install_json_logs, use_json_logs

    if use_json_logs():  # CHI_LOG_FORMAT=json: one JSON object per line
        install_json_logs()
    cli(prog_name="chi-redis")


if __name__ == "__main__":  # pragma: no cover
    main()
