"""``monitoring.health_check_enabled``: a real ``dramatiq chi_redis.worker`` process serves
``/healthz`` and a ``/readyz`` that checks the subscriptions of that process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import REDIS_URL, free_port, wait_until
from support.exporter import answers, get_json
from support.processes import Workers, wait_ready

from chi_redis import Event, EventBus

pytestmark = pytest.mark.redis


@pytest.fixture
def workers(tmp_path: Path, ns: str) -> Iterator[Workers]:
    w = Workers(tmp_path, REDIS_URL, ns)
    yield w
    w.stop()


def test_a_worker_process_serves_health_for_its_subscriptions(
    real_client: redis.Redis, ns: str, tmp_path: Path, workers: Workers,
) -> None:
    port = free_port()
    config = tmp_path / "chi.yaml"
    config.write_text("events:\n  monitoring:\n    health_check_enabled: true\n")
    proc = workers.start("observe.proc_health", threads=2, CHI_CONFIG=str(config),
                         CHI_HEALTH_PORT=str(port))
    wait_ready(proc)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(base + "/healthz"), 60, "the worker's health port")
    assert get_json(base + "/healthz") == (200, {"status": "ok"})
    status, body = get_json(base + "/readyz")
    assert status == 200, body
    assert body["subscriptions"] == ["orders"]
    EventBus(real_client, namespace=ns).publish(Event(type="order.created", data={}))
    wait_until(lambda: real_client.get(f"{ns}:t:handled") == b"1", 60, "the event handled")
    status, body = get_json(base + "/readyz?max_lag=0")
    assert status == 200 and body["lag"] == {"orders": 0}
    proc.stop()
    assert not answers(base + "/healthz")
    assert "Traceback" not in workers.logs()
