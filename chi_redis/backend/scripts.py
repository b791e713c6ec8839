"""Lua scripts, loaded from ``chi_redis/backend/lua`` once and called by SHA."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis.exceptions as rex

__all__ = ["Script", "script"]


class Script:
    """A Lua script's source and SHA1 (callers use EVALSHA and fall back to EVAL)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r})"

    def run(self, client: Any, keys: Sequence[Any], argv: Sequence[Any]) -> Any:
        """EVALSHA on ``client``; EVAL when the server does not know the script yet (first
        use, or after a restart or SCRIPT FLUSH)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *argv)
        except rex.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *argv)


@cache
def script(name: str) -> Script:
    """The script ``chi_redis/backend/lua/<name>.lua``."""
    source = resources.files("chi_redis.backend").joinpath("lua", f"{name}.lua").read_text()
    return Script(name, source)
