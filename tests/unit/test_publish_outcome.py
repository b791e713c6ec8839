"""A failed publish says whether it may have been written: ``outcome`` on RedisError (one
command) and on PublishError (a batch)."""

from __future__ import annotations

import pytest
import redis.exceptions as rex

from chi_redis import Event
from chi_redis.backend.connection import command_outcome, map_redis_error
from chi_redis.errors import RedisFullError, RedisUnavailableError
from chi_redis.publish.writer import partial_failure


@pytest.mark.parametrize(("exc", "outcome"), [
    (rex.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
     "not_written"),
    (rex.TimeoutError("Timeout connecting to server"), "not_written"),
    (rex.TimeoutError("Timeout reading from 127.0.0.1:6379"), "unknown"),
    (rex.ConnectionError("Error while reading from x : (104, 'Connection reset by peer')"),
     "unknown"),
    (rex.ConnectionError("Connection closed by server."), "unknown"),
    (rex.BusyLoadingError("Redis is loading the dataset in memory"), "not_written"),
    (rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
     "not_written"),
    (rex.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
     "not_written"),
    (rex.ResponseError("ERR Error running script"), "unknown"),
])
def test_command_outcome(exc: Exception, outcome: str) -> None:
    assert command_outcome(exc) == outcome
    assert map_redis_error(exc).outcome == outcome  # type: ignore[attr-defined]


def test_mapped_errors_keep_their_kind() -> None:
    assert isinstance(map_redis_error(rex.TimeoutError("Timeout reading")), RedisUnavailableError)
    assert isinstance(map_redis_error(rex.ResponseError("OOM command not allowed")),
                      RedisFullError)


def test_batch_outcome_is_unknown_only_when_the_lookup_failed() -> None:
    events = [Event(type="a.b", data={}) for _ in range(3)]
    cause = RedisUnavailableError("reset")
    asked = partial_failure(events, ["1-0"], [b"a 2-0", None], cause)
    assert asked.outcome == "known" and asked.written == {0: "1-0", 1: "2-0"}
    assert asked.failed == [2]
    unasked = partial_failure(events, ["1-0"], None, cause)
    assert unasked.outcome == "unknown" and unasked.failed == [1, 2]
    assert "outcome of the rest unknown" in str(unasked)
    done = partial_failure(events, ["1-0"], [b"a 2-0", b"a 3-0"], cause)
    assert done.outcome == "known" and not done.failed
