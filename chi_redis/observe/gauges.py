"""Stream gauges read at scrape time: a Prometheus collector over :mod:`chi_redis.ops.stats`.

Every scrape costs the three pipelined round trips of :func:`chi_redis.ops.stats.collect_groups`
however many topics and subscriptions exist (plus one short query of the outbox table when
an outbox is configured).  Nothing is cached between scrapes: the values are Redis's own at
the moment Prometheus asks.

A Redis outage does not fail the scrape: ``chi_up`` drops to 0, ``chi_scrape_errors_total``
counts the failure and the stream gauges are left out, so an alert on ``chi_up == 0`` fires
instead of a silent "target down".  The metric names and their meaning are listed in
docs/operations.md.

This module imports ``prometheus_client``; only the exporter (``chi-redis metrics``) loads it,
never ``import chi_redis`` nor a worker process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..ops.stats import GroupStats, Stats
    from ..outbox.relay import OutboxStats
    from ..publish.bus import EventBus

__all__ = ["GAUGES", "QUEUE_TOPIC", "StreamGauges"]

logger = logging.getLogger("chi_redis.observe")

#: The ``topic`` label of a subscription's private queue stream (retries, redriven dead
#: letters): not a valid topic name, so it never collides with one.
QUEUE_TOPIC = "(queue)"

#: Every family this collector exports: name → (help, labels).
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chi_up": ("1 when the last scrape read Redis, 0 when Redis could not be read.", ()),
    "chi_scrape_duration_seconds": ("Time the last scrape took to read Redis.", ()),
    "chi_stream_length": ("Entries in the topic's stream.", ("topic",)),
    "chi_subscription_lag": (
        "Entries of the stream the subscription's group has not read yet (left out when"
        " Redis cannot tell).", ("subscription", "topic")),
    "chi_subscription_pending": (
        "Entries delivered to the group and not acknowledged yet.", ("subscription", "topic")),
    "chi_subscription_oldest_pending_seconds": (
        "Age of the subscription's oldest pending entry (0 when none is pending).",
        ("subscription",)),
    "chi_subscription_consumers": ("Consumers in the subscription's groups.", ("subscription",)),
    "chi_subscription_queued": (
        "Entries waiting in the subscription's private queue (retries due, redriven).",
        ("subscription",)),
    "chi_subscription_delayed": ("Retries waiting for their time.", ("subscription",)),
    "chi_dead_letters": ("Entries in the subscription's dead-letter stream.", ("subscription",)),
    "chi_outbox_backlog": ("Outbox rows not yet published (failed rows not included).", ()),
    "chi_outbox_lag_seconds": ("Age of the oldest unpublished outbox row (0 when none).", ()),
    "chi_outbox_failed": (
        "Outbox rows the relay could not turn into an event, marked failed: they wait for an"
        " operator (chi-redis outbox failed|retry|delete).", ()),
}


class StreamGauges(Collector):
    """Collects the ``chi_*`` gauges of one namespace (register it on a registry).

    ``outbox`` returns the outbox's backlog, lag and failed rows (``Relay(dsn, bus).stats``);
    when it is None the outbox gauges are not exported.  Thread-safe: scrapes may overlap.
    """

    def __init__(
        self, bus: EventBus, *, outbox: Callable[[], OutboxStats] | None = None,
    ) -> None:
        self.bus = bus
        self.outbox = outbox
        self._errors: dict[str, int] = {"redis": 0, **({"outbox": 0} if outbox else {})}
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        # Registering must not read Redis (prometheus_client calls collect() otherwise).
        return []

    def collect(self) -> Iterator[Metric]:
        from ..ops.stats import collect_groups

        started = time.perf_counter()
        up = 1.0
        try:
            stats, groups = collect_groups(self.bus)
        except Exception as exc:  # a scrape reports a failure, never raises
            up = 0.0
            self._failed("redis", exc)
        else:
            yield from _stream_families(stats, groups)
        yield _gauge("chi_up", up)
        yield _gauge("chi_scrape_duration_seconds", time.perf_counter() - started)
        if self.outbox is not None:
            yield from self._outbox_families(self.outbox)
        errors = CounterMetricFamily(
            "chi_scrape_errors", "Scrapes that could not read a source.", labels=["source"])
        with self._lock:
            for source, n in sorted(self._errors.items()):
                errors.add_metric([source], n)
        yield errors

    def _outbox_families(self, read: Callable[[], OutboxStats]) -> Iterator[Metric]:
        try:
            stats = read()
        except Exception as exc:
            self._failed("outbox", exc)
            return
        yield _gauge("chi_outbox_backlog", stats.backlog)
        yield _gauge("chi_outbox_lag_seconds", stats.lag_s)
        yield _gauge("chi_outbox_failed", stats.failed)

    def _failed(self, source: str, exc: BaseException) -> None:
        with self._lock:
            self._errors[source] += 1
        # ChiError messages carry no password (docs/design.md §9.6).
        logger.warning("scrape: cannot read %s: %s", source, exc)


def _family(name: str) -> GaugeMetricFamily:
    doc, labels = GAUGES[name]
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    doc, _ = GAUGES[name]
    return GaugeMetricFamily(name, doc, value=value)


def _stream_families(stats: Stats, groups: list[GroupStats]) -> Iterator[Metric]:
    length = _family("chi_stream_length")
    for t in stats.topics:
        length.add_metric([t.topic], t.length)
    lag, pending = _family("chi_subscription_lag"), _family("chi_subscription_pending")
    for g in groups:
        topic = QUEUE_TOPIC if g.topic is None else g.topic
        if g.topic is not None and g.lag is not None:  # the queue's lag is "queued" below
            lag.add_metric([g.subscription, topic], g.lag)
        pending.add_metric([g.subscription, topic], g.pending)
    per_sub = {n: _family(n) for n in (
        "chi_subscription_oldest_pending_seconds", "chi_subscription_consumers",
        "chi_subscription_queued", "chi_subscription_delayed", "chi_dead_letters")}
    for s in stats.subscriptions:
        values = (s.oldest_pending_age_s or 0.0, s.consumers, s.queued, s.delayed,
                  s.dead_letters)
        for family, value in zip(per_sub.values(), values, strict=True):
            family.add_metric([s.name], value)
    yield from (length, lag, pending, *per_sub.values())
