"""``chi-redis console``: serve the web console (extra ``chi-redis[console]``).

Credentials come from the environment only, never from the command line (where ``ps``
shows them): ``CHI_CONSOLE_TOKEN``, or ``CHI_CONSOLE_USER`` and ``CHI_CONSOLE_PASSWORD``.
Without one the console is read-only and serves loopback only.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ..errors import ConfigError
from .options import common_options, settings

__all__ = ["console_cmd"]


@click.command("console")
@common_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs a credential.")
@click.option("--port", type=click.IntRange(0, 65535), default=9181, show_default=True)
@click.option("--redact", "redact", multiple=True, metavar="FIELD",
              help="Never show this event field's value (repeatable; also $CHI_CONSOLE_REDACT,"
                   " comma-separated).")
@click.option("--sample-interval", type=click.FloatRange(min=0.2), default=2.0,
              show_default=True, help="Seconds between the samples the charts draw.")
@click.option("--alive-within", type=click.FloatRange(min=0.1), default=15.0, show_default=True,
              help="A consumer that read within this many seconds counts as alive.")
def console_cmd(host: str, port: int, redact: tuple[str, ...], sample_interval: float,
                alive_within: float) -> None:
    """Serve the web console: lag, stuck entries, dead letters, events and replay.

    Reading needs nothing on a loopback bind; every action (redrive, purge, rewind, replay)
    needs CHI_CONSOLE_TOKEN (or CHI_CONSOLE_USER and CHI_CONSOLE_PASSWORD), and so does
    every page on any other bind.  Each action is logged with who and what.
    """
    try:
        import uvicorn

        from ..console.app import Console, create_app
        from ..console.security import Credentials, check_bind, is_loopback
    except ImportError as exc:
        raise ConfigError(f"the console needs its extra: pip install 'chi-redis[console]'"
                          f" ({exc.name} is missing)") from None
    env = os.environ
    creds = Credentials(token=env.get("CHI_CONSOLE_TOKEN") or None,
                        user=env.get("CHI_CONSOLE_USER") or None,
                        password=env.get("CHI_CONSOLE_PASSWORD") or None)
    if bool(creds.user) != bool(creds.password):
        raise ConfigError("set both CHI_CONSOLE_USER and CHI_CONSOLE_PASSWORD, or neither")
    check_bind(host, creds)
    fields = [*redact, *env.get("CHI_CONSOLE_REDACT", "").split(",")]
    s = settings()
    bus = s.bus()
    console = Console(bus, creds, loopback=is_loopback(host), redact_fields=fields,
                      sample_interval=sample_interval, replay_config=s.config.replay,
                      alive_ms=int(alive_within * 1000))
    console.secrets = [*s.secrets, *(x for x in (creds.token, creds.password) if x)]
    _log_actions()
    mode = "actions need the credential" if creds.configured else "read-only"
    click.echo(f"chi-redis console on http://{host}:{port}/ ({mode})", err=True)
    uvicorn.run(create_app(console), host=host, port=port, log_level="warning",
                access_log=False)


def _log_actions() -> None:
    """The console's own records (every action, every refusal) go to stderr at INFO,
    whatever ``$CHI_LOG_LEVEL`` says for the rest of the library."""
    log = logging.getLogger("chi_redis.console")
    log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
