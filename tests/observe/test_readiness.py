"""``/readyz`` and ``chi-redis health``: Redis reachable, groups present, lag within a bound."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
import redis
from support import REDIS_URL, RedisServers, Runtime, in_process_runtime, wait_until
from support.exporter import CHI, Exporter, get_json, sample
from support.processes import clean_env

from chi_redis import Event, EventBus

pytestmark = pytest.mark.redis


def _stopped_subscription(rt: Runtime, behind: int) -> None:
    rt.bus.subscribe("stopped", topics=["order"])(lambda e: None)
    rt.broker(set_global=False)  # groups and registry, no worker
    rt.bus.publish_batch([Event(type="order.created", data={"i": i}) for i in range(behind)])


def test_readyz_turns_503_while_redis_is_away_and_200_when_it_returns(
    redis_servers: RedisServers, ns: str, monkeypatch: pytest.MonkeyPatch,
    exporters: Callable[..., Exporter],
) -> None:
    server = redis_servers.start(persistence=True)
    with in_process_runtime(EventBus(server.client(), namespace=ns), monkeypatch) as rt:
        _stopped_subscription(rt, 3)
    exporter = exporters(server.url, ns)
    ready = exporter.base + "/readyz"
    assert get_json(ready) == (200, {"status": "ok", "subscriptions": ["stopped"],
                                     "lag": {"stopped": 3}})
    server.kill()
    status, body = get_json(ready)
    assert status == 503 and body["status"] == "unavailable"
    assert body["reason"].startswith("redis unreachable")
    down = exporter.metrics()  # the scrape itself succeeds: chi_up says what happened
    assert sample(down, "chi_up") == 0.0
    assert (sample(down, "chi_scrape_errors_total", source="redis") or 0) >= 1
    assert sample(down, "chi_stream_length", topic="order") is None
    assert get_json(exporter.base + "/healthz")[0] == 200  # alive all along
    server.start()  # same port, the AOF brings the groups back
    wait_until(lambda: get_json(ready)[0] == 200, 60, "/readyz 200 again", interval=0.1)
    assert sample(exporter.metrics(), "chi_up") == 1.0


def test_readyz_reports_a_missing_group_and_a_lag_over_the_bound(
    real_client: redis.Redis, ns: str, monkeypatch: pytest.MonkeyPatch,
    exporters: Callable[..., Exporter],
) -> None:
    with in_process_runtime(EventBus(real_client, namespace=ns), monkeypatch) as rt:
        _stopped_subscription(rt, 50)
        exporter = exporters(REDIS_URL, ns, "--max-lag", "100")
        assert get_json(exporter.base + "/readyz")[0] == 200
        status, body = get_json(exporter.base + "/readyz?max_lag=10")
        assert status == 503 and body["reason"] == "lag over 10: stopped lag 50"
        assert get_json(exporter.base + "/readyz?max_lag=x")[0] == 400
        real_client.xgroup_destroy(rt.bus.keys.stream("order"), "stopped")
        status, body = get_json(exporter.base + "/readyz")
        assert status == 503
        assert body["reason"] == "subscription stopped has no consumer group on order"


def _health(url: str, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHI, "health", "--redis-url", url, "--namespace", ns, *args],
                          capture_output=True, text=True, timeout=60, env=clean_env())


def test_chi_redis_health_exits_0_when_ready_and_1_with_one_line_why_not(
    real_client: redis.Redis, ns: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with in_process_runtime(EventBus(real_client, namespace=ns), monkeypatch) as rt:
        _stopped_subscription(rt, 50)
    ok = _health(REDIS_URL, ns)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "ready: 1 subscription(s)\n"
    lagging = _health(REDIS_URL, ns, "--max-lag", "49")
    assert lagging.returncode == 1
    assert lagging.stderr == "not ready: lag over 49: stopped lag 50\n"
    assert _health(REDIS_URL, ns, "--max-lag", "50").returncode == 0
    unknown = _health(REDIS_URL, ns, "--subscription", "stopped", "--subscription", "other")
    assert unknown.returncode == 1
    assert unknown.stderr == "not ready: subscription other is not registered" \
        " (no worker declared it)\n"
    as_json = _health(REDIS_URL, ns, "--json")
    assert as_json.returncode == 0 and '"status":"ok"' in as_json.stdout
    gone = _health("redis://:hunter2@127.0.0.1:1/0", ns)
    assert gone.returncode == 1
    assert gone.stderr.startswith("not ready: redis unreachable") and gone.stderr.count("\n") == 1
    assert "hunter2" not in gone.stderr
