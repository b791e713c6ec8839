"""The event model: Event, name rules, the entry codec, filters (no redis-py, no Dramatiq)."""
