"""``chi-redis migrate``: move data of the earlier key layout into the current one."""

from __future__ import annotations

import click

from .options import common_options, emit, settings

__all__ = ["migrate_cmd"]


@click.command("migrate")
@common_options
def migrate_cmd() -> None:
    """Move data of the earlier key layout (one id hash) into the current one.

    The id lookup <ns>:ids becomes one hash per topic.  Run once after upgrading from a
    release that kept one id hash; safe to run again.
    """
    from ..ops.migrate import migrate_ids

    bus = settings().bus()
    result = migrate_ids(bus)
    emit({"moved": result.moved, "topics": result.topics, "unreadable": result.unreadable},
         result.describe(bus.keys.legacy_ids()))
