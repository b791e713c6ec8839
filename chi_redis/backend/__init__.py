"""Everything that knows Redis: connections and retries, key names, Lua scripts."""
