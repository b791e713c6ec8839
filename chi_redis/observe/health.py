"""Readiness: Redis reachable, the subscriptions' consumer groups exist, lag within a bound.

One check serves three callers: ``/readyz`` of the exporter (``chi-redis metrics``), ``/readyz``
of a worker process (:mod:`chi_redis.observe.middleware`) and ``chi-redis health``.  It reads
the same three pipelined round trips as ``chi-redis stats`` (:func:`chi_redis.ops.stats.collect`).

Which subscriptions are checked: the names given, else every subscription in the registry
(the exporter and ``chi-redis health``) — a worker passes the subscriptions it serves.  A
subscription is ready when it is registered and its group exists on every topic it reads
that exists; a lag Redis cannot tell (after a trim) never exceeds the bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..ops.stats import Stats
    from ..publish.bus import EventBus

__all__ = ["Readiness", "check_ready"]


@dataclass
class Readiness:
    """The answer of :func:`check_ready`: ``ok``, and ``reason`` (one line) when not."""

    ok: bool
    reason: str = ""
    subscriptions: list[str] = field(default_factory=list)
    lag: dict[str, int | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of ``/readyz``: ``{"status": "ok"|"unavailable", ...}``."""
        out: dict[str, Any] = {"status": "ok" if self.ok else "unavailable"}
        if self.reason:
            out["reason"] = self.reason
        out["subscriptions"] = self.subscriptions
        out["lag"] = self.lag
        return out

    def line(self) -> str:
        """One line for people and scripts."""
        if not self.ok:
            return f"not ready: {self.reason}"
        return f"ready: {len(self.subscriptions)} subscription(s)"


def check_ready(
    bus: EventBus, subscriptions: Iterable[str] | None = None, *, max_lag: int | None = None,
) -> Readiness:
    """Whether ``subscriptions`` (default: every registered one) can be served now."""
    from ..ops.stats import collect

    try:
        stats = collect(bus)
    except Exception as exc:  # any failure to read Redis: "not ready"
        return Readiness(False, f"redis unreachable: {_one_line(exc)}")
    registered = {s.name: s for s in stats.subscriptions if s.registered}
    names = sorted(registered) if subscriptions is None else sorted(set(subscriptions))
    lags = {n: registered[n].lag if n in registered else None for n in names}
    missing = _missing_groups(bus, stats, names)
    if missing:
        return Readiness(False, missing, names, lags)
    if max_lag is not None:
        over = [(n, lag) for n, lag in lags.items() if lag is not None and lag > max_lag]
        if over:
            text = ", ".join(f"{n} lag {lag}" for n, lag in over)
            return Readiness(False, f"lag over {max_lag}: {text}", names, lags)
    return Readiness(True, "", names, lags)


def _missing_groups(bus: EventBus, stats: Stats, names: list[str]) -> str:
    """The first missing piece among ``names`` as a reason, ``""`` when none is missing."""
    from ..runtime.subscriptions import decode_record

    known = [t.topic for t in stats.topics]
    by_name = {s.name: s for s in stats.subscriptions}
    records = bus.call(lambda: bus.client.hmget(bus.keys.subs(), names)) if names else []
    for name, raw in zip(names, records, strict=True):
        sub = by_name.get(name)
        if raw is None or sub is None or not sub.registered:
            return f"subscription {name} is not registered (no worker declared it)"
        wanted = set(decode_record(name, raw).bound_topics(known)) & set(known)
        absent = sorted(wanted - set(sub.topics))
        if absent:
            return f"subscription {name} has no consumer group on {', '.join(absent)}"
    return ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
