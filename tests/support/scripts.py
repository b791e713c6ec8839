"""Lua scripts and helpers of the script-call tests."""

from __future__ import annotations

import redis

from chi_redis.backend.scripts import Script

__all__ = ["conn_ids", "slow_incr"]


def slow_incr(name: str) -> Script:
    """A script that INCRBYs ``KEYS[1]`` by ``ARGV[1]``, then holds the server for 2 s."""
    return Script(
        name,
        "local n = redis.call('INCRBY', KEYS[1], ARGV[1])\n"
        "local t0 = redis.call('TIME')\n"
        "repeat local t = redis.call('TIME')\n"
        "until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 2000000\n"
        "return n",
    )


def conn_ids(client: redis.Redis, name: str) -> set[int]:
    """The server's ids of the connections named ``name``."""
    return {int(c["id"]) for c in client.client_list() if c.get("name") == name}
