"""Everything that knows Redis: connections and retries, key names, Lua scripts."""

#: Where a bus connects when nothing else is configured.
DEFAULT_URL = "redis://127.0.0.1:6379/0"
