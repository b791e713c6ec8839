"""Prometheus metrics of chi-redis (base units, ``chi_`` prefix).

``prometheus_client`` is imported on first use, never at import time: it picks its value
store (in-memory or the multiprocess directory) when it is imported, and Dramatiq's
Prometheus middleware sets ``PROMETHEUS_MULTIPROC_DIR`` only after the worker process has
booted.  Importing it earlier would make every worker's counters invisible.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["counter"]

_SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chi_dead_lettered_total": (
        "Entries moved to a dead-letter stream.", ("subscription", "reason")),
    "chi_trimmed_unprocessed_total": (
        "Pending entries trimmed away before they were processed.", ("subscription",)),
    "chi_events_published_total": (
        "Events written to Redis by the buffered publisher.", ("namespace",)),
    "chi_publish_failed_total": (
        "Events the buffered publisher could not write (reported to on_error).", ("namespace",)),
}
_made: dict[str, Any] = {}
_lock = threading.Lock()


def counter(name: str) -> Any:
    """The process-wide Counter ``name`` (one of the metrics listed above)."""
    made = _made.get(name)
    if made is not None:
        return made
    with _lock:
        if name not in _made:
            from prometheus_client import Counter

            doc, labels = _SPECS[name]
            _made[name] = Counter(name, doc, list(labels))
        return _made[name]
