"""Handlers of the worker-telemetry test (tests/integration/test_worker_telemetry.py), loaded
by a real ``dramatiq chi_redis.worker proc_telemetry`` process."""

from __future__ import annotations

from chi_redis import Event
from chi_redis.worker import bus


@bus.subscribe("tm-ok", types=["tm.ok"])
def ok(event: Event) -> None:
    # A publish from the worker: chi_events_published_total{topic="audit"} of this process.
    bus.publish(Event(type="audit.noted", data={"of": event.id}))


@bus.subscribe("tm-fail", types=["tm.fail"], max_retries=1, min_backoff_ms=10,
               max_backoff_ms=20)
def fail(event: Event) -> None:
    raise RuntimeError("always fails (password=hunter2)")
