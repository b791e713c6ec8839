"""Overview: topics and subscriptions as ``chi-redis stats`` counts them, worst first.

The numbers are :func:`chi_redis.ops.stats.collect`'s, taken fresh for each request; the
charts are the sampler's last minutes (:mod:`chi_redis.console.sampler`).  The table body
is also served alone (``/partials/overview``) for the page's live refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...ops.inspect import ConsumerInfo, consumers
from ...ops.stats import LAG_FOOTNOTE, SubscriptionStats
from ..app import Console, console_of

__all__ = ["ATTENTION_LAG", "ATTENTION_PENDING_AGE_S", "Row", "routes"]

#: Lag from which a subscription needs attention even with consumers alive.
ATTENTION_LAG = 1_000
#: Age of the oldest pending entry from which a subscription needs attention.
ATTENTION_PENDING_AGE_S = 300.0


@dataclass
class Row:
    """One subscription's line: its statistics, live consumers, and what is wrong."""

    stats: SubscriptionStats
    alive: int
    problems: list[str] = field(default_factory=list)

    @property
    def severity(self) -> int:
        return len(self.problems)


def _problems(s: SubscriptionStats, alive: int) -> list[str]:
    out = []
    if s.dead_letters:
        out.append(f"{s.dead_letters} dead letter(s)")
    if s.lag is None:
        out.append("lag unknown")
    backlog = (s.lag or 0) + s.queued + s.pending
    if backlog and not alive:
        out.append(f"no consumer alive, {backlog} waiting")
    elif (s.lag or 0) >= ATTENTION_LAG:
        out.append(f"lag {s.lag}")
    if s.oldest_pending_age_s is not None and s.oldest_pending_age_s >= ATTENTION_PENDING_AGE_S:
        out.append(f"oldest pending {s.oldest_pending_age_s:.0f}s")
    return out


def _quiet_ms(c: ConsumerInfo) -> int:
    """Since the consumer last read (Redis 7.2+ says so; before, its idle time)."""
    return c.inactive_ms if c.inactive_ms is not None else c.idle_ms


def overview_context(console: Console) -> dict[str, Any]:
    sample = console.sampler.latest()
    rows = []
    for s in sample.stats.subscriptions:
        found = consumers(console.bus, s.name, s.topics)
        alive = sum(1 for c in found if _quiet_ms(c) < console.alive_ms)
        rows.append(Row(s, alive, _problems(s, alive)))
    rows.sort(key=lambda r: (-r.severity, r.stats.name))
    return {
        "topics": sample.stats.topics,
        "rows": rows,
        "attention": [r for r in rows if r.problems],
        "rates": console.sampler.rates(),
        "lags": console.sampler.lags(),
        "unknown_lag": LAG_FOOTNOTE if any(r.stats.lag is None for r in rows) else None,
        "server_time_ms": sample.stats.server_time_ms,
    }


def overview(request: Request) -> Response:
    console = console_of(request)
    return console.render(request, "overview.html", **overview_context(console))


def overview_partial(request: Request) -> Response:
    console = console_of(request)
    return console.render(request, "overview_body.html", **overview_context(console))


def routes() -> list[Route]:
    return [Route("/", overview), Route("/partials/overview", overview_partial)]
