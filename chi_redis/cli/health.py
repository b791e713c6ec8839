"""``chi-redis health``: the readiness check for scripts and container health checks.

Exit 0 when ready, 1 with one line saying why not (Redis unreachable, a subscription's
consumer group missing, a lag over ``--max-lag``).  The same check as ``/readyz``
(:func:`chi_redis.observe.health.check_ready`).
"""

from __future__ import annotations

import click

from .options import common_options, emit, settings

__all__ = ["health_cmd", "subscription_options"]


def subscription_options(fn: click.decorators.FC) -> click.decorators.FC:
    """``--max-lag N`` and ``--subscription S`` (repeatable), shared with ``chi-redis health``."""
    fn = click.option("--subscription", "subscriptions", multiple=True, metavar="NAME",
                      help="Check this subscription (repeatable; default: every registered"
                      " one).")(fn)
    return click.option("--max-lag", type=click.IntRange(min=0), metavar="N",
                        help="Not ready when a subscription's lag exceeds N entries.")(fn)


@click.command("health")
@common_options
@subscription_options
def health_cmd(max_lag: int | None, subscriptions: tuple[str, ...]) -> None:
    """Exit 0 when Redis and the subscriptions are ready, else 1 with the reason."""
    from ..observe.health import check_ready

    s = settings()
    result = check_ready(s.bus(), sorted(subscriptions) or None, max_lag=max_lag)
    if s.json:
        emit(result.as_dict())
    elif result.ok:
        click.echo(result.line())
    else:
        click.echo(result.line(), err=True)
    if not result.ok:
        raise click.exceptions.Exit(1)
