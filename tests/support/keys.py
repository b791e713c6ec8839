"""Looking at and cleaning up a namespace's keys; counting the commands a client sends."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from chi_redis.backend.scripts import Script


def keys_of(client: redis.Redis, namespace: str) -> list[bytes]:
    """Every key of ``namespace`` (SCAN, never KEYS)."""
    return sorted(client.scan_iter(match=f"{namespace}:*", count=1000))


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    """Delete every key ``<namespace>:*`` (the shared server is never flushed)."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


class CommandCounter:
    """Counts the commands a redis-py client sends (direct calls, pipelines, and the
    scripts sent on its pool's connections by ``Script.run_direct``, one command each)."""

    def __init__(self, client: redis.Redis) -> None:
        self.commands: list[Any] = []
        self._client = client
        self._orig_execute: Any = client.execute_command
        self._orig_pipeline = client.pipeline
        self._patch = pytest.MonkeyPatch()

    def _execute(self, *args: Any, **kwargs: Any) -> Any:
        self.commands.append(args[0] if args else None)
        return self._orig_execute(*args, **kwargs)

    def _pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.commands.append("PIPELINE")
        return self._orig_pipeline(*args, **kwargs)

    def __enter__(self) -> CommandCounter:
        self._client.execute_command = self._execute  # type: ignore[method-assign]
        self._client.pipeline = self._pipeline  # type: ignore[method-assign]
        run_direct = Script.run_direct

        def counted(script: Script, client: Any, *args: Any) -> Any:
            if client is self._client:
                self.commands.append("EVALSHA")
            return run_direct(script, client, *args)

        self._patch.setattr(Script, "run_direct", counted)
        return self

    def __exit__(self, *exc: object) -> None:
        del self._client.execute_command
        del self._client.pipeline
        self._patch.undo()

    @property
    def count(self) -> int:
        return len(self.commands)
