"""``chi-redis doctor``: check the Redis server against what production needs."""

from __future__ import annotations

import sys

import click

from ..errors import redact_url
from .options import common_options, emit, settings

__all__ = ["doctor"]


@click.command()
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
