"""F20: Redis at ``maxmemory`` with ``noeviction``.

Publishing raises :class:`RedisFullError` with a message that says what to do, and sends
each refused publish once (no retry storm: the publisher's commands counted as sent); the worker
keeps handling the backlog (reads, acks and trims need no memory); once retention trims
what every group has handled, publishing works again.  Nothing published ok is lost.

And the start-up check: a worker logs a WARNING when ``maxmemory-policy`` is not
``noeviction`` and when ``appendonly`` is ``no`` (``chi-redis doctor`` says the same,
tests/cli/test_doctor.py).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from support import RedisServers, wait_until
from support.faultcase import FaultCase
from support.figures import record
from support.logged_publish import event, publish_batch, publish_one

from chi_redis import EventBus
from chi_redis.errors import RedisFullError
from chi_redis.ops.retention import Policy, trim_topic
from chi_redis.runtime.boot import server_warnings

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

BLOB = "x" * 1000


class _Sent:
    """EVALSHA and EVAL commands this test process sends (the publisher's, not the worker
    process's: ``INFO commandstats`` counts both, and the worker runs scripts of its own
    while it drains)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = {"evalsha": 0, "eval": 0}
        real = redis.connection.AbstractConnection.send_packed_command
        sent = self

        def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            chunks = [command] if isinstance(command, (bytes, str)) else command
            for chunk in chunks:
                data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                sent.calls["evalsha"] += data.count(b"$7\r\nEVALSHA\r\n")
                sent.calls["eval"] += data.count(b"$4\r\nEVAL\r\n")
            real(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                            counting)


def _fill(bus: EventBus, case: FaultCase) -> int:
    """Publish batches until Redis refuses; how many batches went through."""
    for n in range(2000):
        err = publish_batch(bus, case.history, [event(n * 50 + i, blob=BLOB, sleep_ms=3)
                                                for i in range(50)], 50)
        if err is not None:
            assert isinstance(err.cause, RedisFullError), err
            return n
    raise AssertionError("Redis never filled up")


def _refused_publishes(bus: EventBus, case: FaultCase, sent: _Sent,
                       tries: int) -> tuple[int, dict[str, int], str]:
    """``tries`` single publishes on a full Redis: how many were refused, the commands they
    sent, and the error text."""
    before = dict(sent.calls)
    refused, text = 0, ""
    for i in range(tries):
        with contextlib.suppress(RedisFullError):
            try:
                # 20 kB each: one that gets through (acks free a little memory) fills it again
                publish_one(bus, case.history, event(900_000 + i, blob=BLOB * 20))
            except RedisFullError as exc:
                refused, text = refused + 1, str(exc)
                raise
    return refused, {c: n - before[c] for c, n in sent.calls.items()}, text


def test_full_redis_refuses_publishing_clearly_drains_and_recovers_after_trim(
    tmp_path: Path, ns: str, redis_servers: RedisServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_servers.start("--maxmemory-policy", "noeviction")
    case = FaultCase(tmp_path, ns)
    client = server.client()
    figures: dict[str, object] = {}
    try:
        case.worker(server.url)
        case.ready(client)
        bus = case.bus(server.url)
        publish_one(bus, case.history, event(-1))  # both publish scripts are loaded
        publish_batch(bus, case.history, [event(-3), event(-2)])
        used = int(client.info("memory")["used_memory"])
        server.config_set(maxmemory=used + 3 * 1024 * 1024 // 2)
        figures["batches_before_full"] = _fill(bus, case)
        committed = len(case.history.commits())
        refused, sent, text = _refused_publishes(bus, case, _Sent(monkeypatch), 20)
        figures.update(refused_of_20=refused, commands_sent=sent, error_text=text)
        # The worker keeps handling the backlog while Redis is full.
        wait_until(lambda: len(case.history.commits()) >= committed + 20, 60, "draining")
        case.wait_committed(120)
        wait_until(lambda: not client.xpending(case.stream(), "hist")["pending"], 30,
                   "all acked")
        trimmed = trim_topic(bus, "hist", Policy(max_len=0))
        t0 = time.monotonic()
        wait_until(lambda: _publishes(bus, case), 30, "publishing after the trim")
        figures.update(trimmed=trimmed.trimmed, trim_to_publish_s=round(time.monotonic() - t0, 3))
        case.wait_committed()
    finally:
        case.stop()
        client.close()
    logs = case.logs()
    verdict = case.history.check()
    record("F20-maxmemory-noeviction", **verdict.figures(), **figures)
    verdict.assert_nothing_lost(max_duplicated=0)
    assert refused >= 10, f"only {refused} of 20 publishes refused on a full Redis"
    assert "maxmemory" in text and "retention" in text, text
    assert sent["evalsha"] == 20 and sent["eval"] == 0, f"retried: {sent}"
    assert trimmed.trimmed > 0
    assert "appendonly is no" in logs and "not noeviction" not in logs


def _publishes(bus: EventBus, case: FaultCase) -> bool:
    try:
        publish_one(bus, case.history, event(990_000 + int(time.monotonic() * 1000) % 1000))
    except RedisFullError:
        return False
    return True


@pytest.mark.parametrize(("args", "expected"), [
    (("--appendonly", "no", "--maxmemory-policy", "allkeys-lru"),
     ["maxmemory-policy is allkeys-lru", "appendonly is no"]),
    (("--appendonly", "yes", "--maxmemory-policy", "noeviction"), []),
])
def test_server_settings_that_put_events_at_risk_are_named(
    redis_servers: RedisServers, args: tuple[str, ...], expected: list[str]
) -> None:
    server = redis_servers.start(*args)
    with contextlib.closing(server.client()) as client:
        found = server_warnings(client)
    assert len(found) == len(expected)
    for text, part in zip(found, expected, strict=True):
        assert part in text and "chi-redis doctor" in text
