"""StreamsBroker's middleware signals call only the middleware implementing each hook, with
Dramatiq's semantics: order (``after`` hooks reversed), SkipMessage propagating, other
failures logged, middleware added later honoured; the messages a consumer builds equal
Dramatiq's own; a pipeline still runs through the lighter Pipelines."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.middleware import Pipelines, SkipMessage
from support import wait_until

from chi_redis import Event, EventBus
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker
from chi_redis.runtime.hooks import LightPipelines, overrides
from chi_redis.runtime.messages import StreamMessage, topic_message

pytestmark = pytest.mark.redis

#: What the signals pass as the message here (ChiMiddleware reads these two fields).
MSG = SimpleNamespace(queue_name="none", options={})


class Recorder(dramatiq.Middleware):
    """Records its hooks into a shared list as ``(name, hook)``."""

    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.name, self.calls = name, calls

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.calls.append((self.name, "before_process_message"))

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self.calls.append((self.name, "after_process_message"))

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self.calls.append((self.name, "after_skip_message"))


class AfterOnly(dramatiq.Middleware):
    def __init__(self, calls: list[tuple[str, str]]) -> None:
        self.calls = calls

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self.calls.append(("after-only", "after_process_message"))


class Skipper(dramatiq.Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        raise SkipMessage("skipped by the test")


class Broken(dramatiq.Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        raise RuntimeError("broken middleware")


@pytest.fixture
def bus(real_client: redis.Redis, ns: str) -> EventBus:
    return EventBus(real_client, namespace=ns)


@pytest.fixture
def broker(bus: EventBus) -> Iterator[StreamsBroker]:
    broker = StreamsBroker(bus, middleware=[],
                           options=BrokerOptions(lease_ms=5000, reclaim_interval_ms=500))
    dramatiq.set_broker(broker)
    yield broker


def test_only_overriding_middleware_is_called_in_dramatiqs_order(broker: StreamsBroker) -> None:
    calls: list[tuple[str, str]] = []
    a, b, c = Recorder("a", calls), AfterOnly(calls), Recorder("c", calls)
    plain = dramatiq.Middleware()
    for m in (a, plain, b, c):
        broker.add_middleware(m)
    assert not overrides(plain, "before_process_message")
    assert overrides(b, "after_process_message") and not overrides(b, "before_process_message")
    broker.emit_before("process_message", MSG)
    broker.emit_after("process_message", MSG, result=None)
    assert calls == [
        ("a", "before_process_message"), ("c", "before_process_message"),
        ("c", "after_process_message"), ("after-only", "after_process_message"),
        ("a", "after_process_message"),
    ]
    # A hook set on an instance of a class that does not override it is a listener too.
    calls.clear()
    plain.before_process_message = lambda broker, message: calls.append(  # type: ignore[method-assign]
        ("plain", "before_process_message"))
    broker.middleware.remove(c)  # the list changed directly: the lists are rebuilt
    broker.emit_before("process_message", MSG)
    assert calls == [("a", "before_process_message"), ("plain", "before_process_message")]


def test_middleware_added_later_is_honoured_in_its_place(broker: StreamsBroker) -> None:
    calls: list[tuple[str, str]] = []
    broker.add_middleware(Recorder("a", calls))
    broker.emit_before("process_message", MSG)
    broker.add_middleware(Recorder("first", calls), before=Recorder)
    broker.emit_before("process_message", MSG)
    assert calls == [("a", "before_process_message"), ("first", "before_process_message"),
                     ("a", "before_process_message")]


def test_skip_message_propagates_and_other_failures_are_logged(
    broker: StreamsBroker, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, str]] = []
    broker.add_middleware(Broken())
    broker.add_middleware(Recorder("a", calls))
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("process_message", MSG)
    assert calls == [("a", "before_process_message")]  # the next hook still ran
    assert "Unexpected failure in before_process_message" in caplog.text
    broker.add_middleware(Skipper(), before=Recorder)
    calls.clear()
    with pytest.raises(SkipMessage):
        broker.emit_before("process_message", MSG)
    assert calls == []  # hooks after the skipping one never ran


def test_a_worker_honours_skips_and_middleware_added_while_it_runs(
    bus: EventBus, broker: StreamsBroker
) -> None:
    handled: list[str] = []
    calls: list[tuple[str, str]] = []

    @bus.subscribe("hooked", types=["hook.*"], max_retries=0)
    def handle(event: Event) -> None:
        handled.append(event.type)

    class SkipOne(dramatiq.Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            if message.args[1]["type"] == b"hook.skip":
                raise SkipMessage("not this one")

    broker.add_middleware(SkipOne())
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        bus.publish(Event(type="hook.first", data={}))
        wait_until(lambda: handled == ["hook.first"], timeout=30, message="first event")
        broker.add_middleware(Recorder("late", calls))  # while the worker runs
        bus.publish(Event(type="hook.skip", data={}))
        bus.publish(Event(type="hook.second", data={}))
        wait_until(lambda: "hook.second" in handled, timeout=30, message="second event")
        wait_until(lambda: ("late", "after_skip_message") in calls, timeout=30,
                   message="the late middleware saw the skip")
        wait_until(lambda: broker.is_idle("hooked"), timeout=30, message="everything acked")
    finally:
        worker.stop()
    assert handled == ["hook.first", "hook.second"]  # the skipped event never ran
    assert ("late", "before_process_message") in calls
    assert ("late", "after_process_message") in calls


def test_topic_messages_equal_dramatiqs_and_the_proxy_reads_them(bus: EventBus) -> None:
    args = ("orders", {"id": b"1"})
    built = topic_message("q", args, "q:1", 1700000000000)
    stock = dramatiq.Message(queue_name="q", actor_name="q", args=args, kwargs={}, options={},
                             message_id="q:1", message_timestamp=1700000000000)
    assert built == stock and dataclasses.asdict(built) == dataclasses.asdict(stock)
    proxy = StreamMessage(built, "q", "s", b"1-0", 1)
    for f in dataclasses.fields(stock):
        assert getattr(proxy, f.name) == getattr(stock, f.name), f.name
    proxy.options["retries"] = 1  # the proxy's options are the message's
    assert built.options == {"retries": 1}
    assert proxy.copy(queue_name="r").queue_name == "r" and str(proxy) == "q(q:1)"


def test_pipelines_still_run_through_the_lighter_middleware(bus: EventBus) -> None:
    broker = StreamsBroker(bus, options=BrokerOptions(lease_ms=5000, reclaim_interval_ms=500))
    dramatiq.set_broker(broker)
    assert any(type(m) is LightPipelines for m in broker.middleware)
    assert not any(type(m) is Pipelines for m in broker.middleware)
    got: list[int] = []
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="pipe_a", max_retries=0)
    def add_one(x: int) -> int:
        return x + 1

    @dramatiq.actor(broker=broker, queue_name="pipe_b", max_retries=0)
    def record(x: int) -> None:
        got.append(x)
        done.set()

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        dramatiq.pipeline([add_one.message(41), record.message()]).run()
        assert done.wait(30), "the pipeline's second step never ran"
    finally:
        worker.stop()
    assert got == [42]
