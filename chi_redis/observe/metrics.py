"""Prometheus metrics of chi-redis (base units, ``chi_`` prefix).

``prometheus_client`` is imported on first use, never at import time: it picks its value
store (in-memory or the multiprocess directory) when it is imported, and Dramatiq's
Prometheus middleware sets ``PROMETHEUS_MULTIPROC_DIR`` only after the worker process has
booted.  Importing it earlier would make every worker's counters invisible.

Recording is on by default; :func:`set_enabled` ``(False)`` (``monitoring.metrics_enabled:
false`` in a worker) makes every helper hand out a metric that records nothing.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["NOOP", "counter", "enabled", "histogram", "labelled", "set_enabled"]

_SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chi_dead_lettered_total": (
        "Entries moved to a dead-letter stream.", ("subscription", "reason")),
    "chi_trimmed_unprocessed_total": (
        "Pending entries trimmed away before they were processed.", ("subscription",)),
    "chi_events_published_total": (
        "Events written to their topic streams (every publish path).", ("topic",)),
    "chi_publish_failed_total": (
        "Events the buffered publisher could not write (reported to on_error).", ("namespace",)),
    "chi_events_handled_total": (
        "Deliveries a subscription finished, by outcome (ok, retried, dead_lettered, filtered).",
        ("subscription", "outcome")),
    "chi_reclaimed_total": (
        "Entries taken over from a consumer whose lease expired.", ("subscription",)),
}
_HISTOGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chi_handler_duration_seconds": (
        "Time a subscription's handler took (decode and dedupe included).", ("subscription",)),
}
_made: dict[str, Any] = {}
_children: dict[tuple[str, tuple[str, ...]], Any] = {}
_lock = threading.Lock()
_enabled = True


class _Noop:
    """A metric that records nothing (metrics switched off)."""

    def labels(self, *values: str) -> _Noop:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


#: What every helper returns while recording is switched off.
NOOP = _Noop()


def set_enabled(on: bool) -> None:
    """Switch recording on or off for this process (metrics already handed out included)."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    """Whether metrics are recorded in this process."""
    return _enabled


def _make(name: str) -> Any:
    made = _made.get(name)
    if made is not None:
        return made
    with _lock:
        if name not in _made:
            from prometheus_client import Counter, Histogram

            if name in _HISTOGRAMS:
                doc, labels = _HISTOGRAMS[name]
                _made[name] = Histogram(name, doc, list(labels))
            else:
                doc, labels = _SPECS[name]
                _made[name] = Counter(name, doc, list(labels))
        return _made[name]


def counter(name: str) -> Any:
    """The process-wide Counter ``name`` (one of the metrics listed above), or :data:`NOOP`."""
    return _make(name) if _enabled else NOOP


def histogram(name: str) -> Any:
    """The process-wide Histogram ``name`` (one of the metrics listed above), or :data:`NOOP`."""
    return _make(name) if _enabled else NOOP


def labelled(name: str, *values: str) -> Any:
    """The child of metric ``name`` for label ``values``, cached: the hot paths (publish,
    ack) call this per batch or per message, and ``labels()`` takes a lock every call."""
    if not _enabled:
        return NOOP
    key = (name, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = _make(name).labels(*values)
    return child
