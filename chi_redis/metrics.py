"""Prometheus metrics of chi-redis (base units, ``chi_`` prefix)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["DEAD_LETTERED", "TRIMMED_UNPROCESSED"]

DEAD_LETTERED = Counter(
    "chi_dead_lettered_total", "Entries moved to a dead-letter stream.", ["subscription", "reason"]
)
TRIMMED_UNPROCESSED = Counter(
    "chi_trimmed_unprocessed_total",
    "Pending entries trimmed away before they were processed.",
    ["subscription"],
)
