"""``chi-redis metrics``: every gauge scraped over real HTTP after a known scenario."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from support import REDIS_URL, Runtime, in_process_runtime, wait_until
from support.exporter import Exporter, get_json, sample

from chi_redis import Event, EventBus

pytestmark = pytest.mark.redis


def _fail(event: Event) -> None:
    raise RuntimeError("handler fails on purpose")


def _scenario(rt: Runtime) -> None:
    """stopped: 50 events behind, no worker; busy: 3 of 5 read, not acked; dead: two dead
    letters; later: two retries delayed by ten minutes."""
    idle = rt.new_bus()
    idle.subscribe("stopped", topics=["order"])(lambda e: None)
    idle.subscribe("busy", topics=["audit"])(lambda e: None)
    rt.broker(idle, set_global=False)  # declares the groups and registry; nobody consumes
    rt.bus.subscribe("dead", topics=["pay"], max_retries=0)(_fail)
    rt.bus.subscribe("later", topics=["pay"], max_retries=5, min_backoff_ms=600_000,
                     max_backoff_ms=600_000)(_fail)
    rt.worker(rt.broker())
    rt.bus.publish_batch([Event(type="order.created", data={"i": i}) for i in range(50)])
    rt.bus.publish_batch([Event(type="audit.logged", data={"i": i}) for i in range(5)])
    rt.client.xreadgroup("busy", "probe", {rt.bus.keys.stream("audit"): ">"}, count=3)
    rt.publish(Event(type="pay.failed", data={"n": 1}), Event(type="pay.failed", data={"n": 2}))


def test_every_gauge_has_the_value_of_the_scenario(
    real_client: redis.Redis, ns: str, monkeypatch: pytest.MonkeyPatch,
    exporters: Callable[..., Exporter],
) -> None:
    with in_process_runtime(EventBus(real_client, namespace=ns), monkeypatch) as rt:
        _scenario(rt)
        exporter = exporters(REDIS_URL, ns)

        def settled() -> object:
            m = exporter.metrics()
            done = (sample(m, "chi_dead_letters", subscription="dead") == 2
                    and sample(m, "chi_subscription_delayed", subscription="later") == 2)
            return m if done else None

        m = wait_until(settled, 60, "two dead letters and two delayed retries", interval=0.2)
        rt.stop()
    assert sample(m, "chi_up") == 1.0
    assert sample(m, "chi_stream_length", topic="order") == 50
    assert sample(m, "chi_stream_length", topic="audit") == 5
    assert sample(m, "chi_stream_length", topic="pay") == 2
    assert sample(m, "chi_subscription_lag", subscription="stopped", topic="order") == 50
    assert sample(m, "chi_subscription_pending", subscription="stopped", topic="order") == 0
    assert sample(m, "chi_subscription_lag", subscription="busy", topic="audit") == 2
    assert sample(m, "chi_subscription_pending", subscription="busy", topic="audit") == 3
    assert sample(m, "chi_subscription_lag", subscription="dead", topic="pay") == 0
    assert sample(m, "chi_dead_letters", subscription="stopped") == 0
    assert sample(m, "chi_subscription_delayed", subscription="dead") == 0
    assert sample(m, "chi_subscription_pending", subscription="busy", topic="(queue)") == 0
    assert sample(m, "chi_subscription_oldest_pending_seconds", subscription="stopped") == 0
    busy_age = sample(m, "chi_subscription_oldest_pending_seconds", subscription="busy")
    assert busy_age is not None and busy_age >= 0
    assert sample(m, "chi_scrape_errors_total", source="redis") == 0
    # no outbox configured: no outbox gauges
    assert not [k for k in m if k[0].startswith("chi_outbox")]
    # the oldest pending entry ages while nobody acknowledges it
    wait_until(lambda: (sample(exporter.metrics(), "chi_subscription_oldest_pending_seconds",
                               subscription="busy") or 0) > busy_age, 60, "an older entry",
               interval=0.2)
    assert get_json(exporter.base + "/healthz") == (200, {"status": "ok"})
    assert exporter.stop() == 0
    assert "chi-redis metrics: stopped" in exporter.output()


def test_the_exporter_answers_404_elsewhere(
    real_client: redis.Redis, ns: str, exporters: Callable[..., Exporter],
) -> None:
    exporter = exporters(REDIS_URL, ns)
    status, body = get_json(exporter.base + "/nothing")
    assert status == 404 and body["status"] == "error"
