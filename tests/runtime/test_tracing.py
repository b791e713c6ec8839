"""OpenTelemetry tracing (chi_redis.observe.tracing) with the SDK's in-memory exporter.

One trace runs from the publish through every retry, the dead letter and the redrive: the
redriven handle span is a *child* of the original publish span (the dead letter keeps the
event's metadata, so its trace context).  A replayed delivery starts a new trace that
*links* to the original publish span.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import Recorder, wait_until

from chi_redis import Event, EventBus
from chi_redis.embedded import InProcessWorker
from chi_redis.observe import tracing
from chi_redis.ops.replay import choose_target, replay
from chi_redis.ops.timeparse import parse_time
from chi_redis.runtime.broker import BrokerOptions

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0
QUICK = BrokerOptions(reclaim_interval_ms=200)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.configure(True, provider=provider)
    try:
        yield exporter
    finally:
        tracing.configure(False)
        provider.shutdown()


@pytest.fixture
def bus() -> Iterator[EventBus]:
    bus = EventBus.embedded(namespace="traced")
    yield bus
    bus.close()


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def test_one_trace_from_publish_through_retries_dead_letter_and_redrive(
    spans: InMemorySpanExporter, bus: EventBus
) -> None:
    failing = {"on": True}
    runs = Recorder()

    @bus.subscribe("billing", types=["invoice.*"], max_retries=2, min_backoff_ms=10,
                   max_backoff_ms=20)
    def bill(event: Event) -> None:
        runs.add(event.metadata.get("traceparent"))
        if failing["on"]:
            raise RuntimeError("card declined, password=hunter2")

    event = Event(type="invoice.issued", data={"n": 1})
    with InProcessWorker(bus, options=QUICK) as worker:
        bus.publish(event)
        wait_until(lambda: bus.dead_letters("billing"), DEADLINE_S, "the dead letter")
        failing["on"] = False
        assert bus.redrive("billing") == 1
        wait_until(lambda: len(runs) == 4, DEADLINE_S, "the redriven run")
        worker.drain(DEADLINE_S)
    wait_until(lambda: len(named(spans, "chi handle")) == 4, DEADLINE_S, "handle spans")

    (publish,) = named(spans, "chi publish")
    assert publish.name == "chi publish invoice" and publish.kind == SpanKind.PRODUCER
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == "redis-streams"
    assert publish.attributes["messaging.destination.name"] == "invoice"
    assert publish.attributes["messaging.message.id"] == event.id
    trace_id = publish.context.trace_id
    # The handler saw the publish span's context in the event's metadata, on every run.
    assert {str(tp).rsplit("-", 1)[0] for tp in runs.items()} == {
        f"00-{trace_id:032x}-{publish.context.span_id:016x}"}

    handles = sorted(named(spans, "chi handle"), key=lambda s: s.start_time or 0)
    assert [s.attributes["chi.attempt"] for s in handles if s.attributes] == [1, 2, 3, 1]
    assert [s.attributes["chi.outcome"] for s in handles if s.attributes] == [
        "failed", "failed", "failed", "ok"]
    for s in handles:
        assert s.kind == SpanKind.CONSUMER and s.name == "chi handle billing"
        assert s.context.trace_id == trace_id  # retries and the redrive: the same trace
        assert s.parent is not None and s.parent.span_id == publish.context.span_id
        assert s.attributes is not None
        assert s.attributes["messaging.message.id"] == event.id
        assert s.attributes["messaging.consumer.group.name"] == "billing"
    # Exception messages are redacted in the spans too.
    failed = handles[0]
    assert not failed.status.is_ok
    assert "hunter2" not in json.dumps([e.attributes for e in failed.events], default=str)
    assert "hunter2" not in (failed.status.description or "")

    (dead,) = named(spans, "chi dead_letter")
    assert dead.context.trace_id == trace_id and dead.attributes is not None
    assert dead.attributes["chi.reason"] == "retries_exhausted"
    assert dead.attributes["messaging.message.id"] == event.id


def test_a_replayed_delivery_links_to_the_original_trace(
    spans: InMemorySpanExporter, bus: EventBus
) -> None:
    sid = bus.publish(Event(type="ledger.posted", data={"n": 1}))
    (publish,) = named(spans, "chi publish")
    seen = Recorder()
    bus.subscribe("audit", types=["ledger.*"])(lambda e, d: seen.add(d.replay))
    with InProcessWorker(bus, options=QUICK) as worker:
        target, topics = choose_target(bus, to_sub="audit")
        report = replay(bus, target, topics=topics, since=parse_time(sid), until=parse_time(sid))
        assert report.delivered == 1
        worker.drain(DEADLINE_S)
    assert seen.items() == [True]
    wait_until(lambda: named(spans, "chi handle"), DEADLINE_S, "the handle span")
    (handle,) = named(spans, "chi handle")
    assert handle.attributes is not None and handle.attributes["chi.replay"] is True
    assert handle.context.trace_id != publish.context.trace_id  # a trace of its own
    assert handle.parent is None
    (link,) = handle.links
    assert link.context.trace_id == publish.context.trace_id
    assert link.context.span_id == publish.context.span_id


def test_a_republished_replay_links_to_the_original_trace(
    spans: InMemorySpanExporter, bus: EventBus
) -> None:
    sid = bus.publish(Event(type="ledger.posted", data={"n": 2}))
    (publish,) = named(spans, "chi publish")
    seen = Recorder()
    # start="new": only the republished copy reaches the subscription
    bus.subscribe("ledger-audit", types=["ledger.*"])(lambda e, d: seen.add(d.replay))
    with InProcessWorker(bus, options=QUICK) as worker:
        target, _ = choose_target(bus, republish=True)
        replay(bus, target, topics=["ledger"], since=parse_time(sid), until=parse_time(sid))
        wait_until(lambda: seen.items(), DEADLINE_S, "the replayed delivery")
        worker.drain(DEADLINE_S)
    assert seen.items() == [True]
    wait_until(lambda: named(spans, "chi handle"), DEADLINE_S, "the handle span")
    (handle,) = named(spans, "chi handle")
    assert handle.context.trace_id != publish.context.trace_id
    assert [link.context.span_id for link in handle.links] == [publish.context.span_id]


def test_a_publish_inside_a_handler_is_a_child_of_its_handle_span(
    spans: InMemorySpanExporter, bus: EventBus
) -> None:
    @bus.subscribe("signup", types=["user.created"])
    def welcome(event: Event) -> None:
        bus.publish(Event(type="mail.queued", data={"to": event.data["email"]}))

    with InProcessWorker(bus, options=QUICK) as worker:
        bus.publish(Event(type="user.created", data={"email": "a@example.com"}))
        wait_until(lambda: len(named(spans, "chi publish")) == 2, DEADLINE_S, "second publish")
        worker.drain(DEADLINE_S)
    first, second = sorted(named(spans, "chi publish"), key=lambda s: s.start_time or 0)
    (handle,) = named(spans, "chi handle")
    assert second.name == "chi publish mail"
    assert second.parent is not None and second.parent.span_id == handle.context.span_id
    assert {first.context.trace_id, second.context.trace_id} == {handle.context.trace_id}


def test_batches_get_one_span_per_topic(spans: InMemorySpanExporter, bus: EventBus) -> None:
    events = [Event(type=t, data={"i": i}) for i, t in
              enumerate(["a.x", "a.y", "b.x", "a.z"])]
    bus.publish_batch(events)
    by_name = {s.name: s for s in named(spans, "chi publish")}
    assert sorted(by_name) == ["chi publish a", "chi publish b"]
    attrs: Any = by_name["chi publish a"].attributes
    assert attrs["messaging.batch.message_count"] == 3
    stored = bus.store.load_by_topic("a", limit=10)
    span_id = f"{by_name['chi publish a'].context.span_id:016x}"
    assert all(str(e.metadata["traceparent"]).split("-")[2] == span_id for e in stored)
    assert [e.id for e in stored] == [events[0].id, events[1].id, events[3].id]
    assert all("traceparent" not in e.metadata for e in events)  # the caller's are untouched


def test_nothing_is_recorded_when_tracing_is_off(bus: EventBus) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(False)
    bus.publish(Event(type="quiet.thing", data=1))
    (stored,) = bus.store.load_by_topic("quiet", limit=10)
    assert "traceparent" not in stored.metadata
    assert exporter.get_finished_spans() == ()
    assert not tracing.enabled()


def test_the_package_works_without_opentelemetry_installed() -> None:
    code = textwrap.dedent("""
        import sys
        for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.sdk"):
            sys.modules[name] = None  # an import of it raises ImportError
        import chi_redis
        from chi_redis import Event, EventBus
        from chi_redis.observe import tracing
        assert tracing.configure(True) is False and not tracing.enabled()
        bus = EventBus.embedded(namespace="plain")
        bus.publish(Event(type="plain.thing", data=1))
        assert len(bus.store.load_by_topic("plain", limit=10)) == 1
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "OpenTelemetry is not installed" in out.stderr
