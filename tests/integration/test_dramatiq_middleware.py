"""Dramatiq's stock middleware on StreamsBroker: TimeLimit, AgeLimit, Callbacks, plain tasks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from support import wait_until

from chi_redis import Event, EventBus
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker

pytestmark = pytest.mark.redis


@pytest.fixture
def bus(real_client: redis.Redis, ns: str) -> EventBus:
    return EventBus(real_client, namespace=ns)


@pytest.fixture
def broker(bus: EventBus) -> Iterator[StreamsBroker]:
    broker = StreamsBroker(bus, options=BrokerOptions(lease_ms=5000, reclaim_interval_ms=500))
    dramatiq.set_broker(broker)
    yield broker


def run_worker(broker: StreamsBroker) -> dramatiq.Worker:
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    return worker


def test_time_limit_interrupts_a_slow_handler_and_dead_letters_it(
    bus: EventBus, broker: StreamsBroker
) -> None:
    finished = threading.Event()

    @bus.subscribe("slow", types=["job.run"], time_limit_ms=300, max_retries=0)
    def slow(event: Event) -> None:
        for _ in range(300):  # async exceptions land between bytecodes, not inside sleep()
            time.sleep(0.1)
        finished.set()

    worker = run_worker(broker)
    try:
        bus.publish(Event(type="job.run", data={"n": 1}))
        dead = wait_until(lambda: bus.dead_letters("slow"), timeout=60, message="dead letter")
    finally:
        worker.stop()
    assert dead[0].error_type == "TimeLimitExceeded"
    assert dead[0].reason == "retries_exhausted"
    assert not finished.is_set()


def test_age_limit_skips_a_stale_task_into_the_dead_letters(
    bus: EventBus, broker: StreamsBroker
) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="tasks", max_age=1)
    def stale(x: int) -> None:
        ran.append(x)

    stale.send_with_options(args=(1,), delay=200)  # older than 1 ms when it runs
    worker = run_worker(broker)
    try:
        dead = wait_until(lambda: bus.dead_letters("tasks"), timeout=60, message="dead letter")
    finally:
        worker.stop()
    assert ran == []
    assert dead[0].reason == "skipped"
    assert dead[0].kind == "task"


def test_callbacks_run_on_success_and_failure(bus: EventBus, broker: StreamsBroker) -> None:
    seen: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="tasks")
    def on_ok(message: dict[str, object], result: object) -> None:
        seen.append(f"ok:{result}")

    @dramatiq.actor(broker=broker, queue_name="tasks")
    def on_fail(message: dict[str, object], exc: dict[str, str]) -> None:
        seen.append(f"fail:{exc['type']}")

    @dramatiq.actor(broker=broker, queue_name="tasks", max_retries=0)
    def divide(a: int, b: int) -> float:
        return a / b

    divide.send_with_options(args=(6, 3), on_success=on_ok, on_failure=on_fail)
    divide.send_with_options(args=(1, 0), on_success=on_ok, on_failure=on_fail)
    worker = run_worker(broker)
    try:
        wait_until(lambda: len(seen) == 2, timeout=60, message="callbacks")
        broker.join("tasks", timeout=60_000)
    finally:
        worker.stop()
    assert sorted(seen) == ["fail:ZeroDivisionError", "ok:2.0"]
    assert [d.reason for d in bus.dead_letters("tasks")] == ["retries_exhausted"]


def test_plain_tasks_and_subscriptions_share_one_broker(
    bus: EventBus, broker: StreamsBroker
) -> None:
    done: list[str] = []

    @bus.subscribe("greeter", types=["user.created"])
    def greet(event: Event) -> None:
        done.append(f"event:{event.data['name']}")

    @dramatiq.actor(broker=broker)
    def add(a: int, b: int) -> None:
        done.append(f"task:{a + b}")

    assert dramatiq.get_broker() is broker
    worker = run_worker(broker)
    try:
        bus.publish(Event(type="user.created", data={"name": "ada"}))
        add.send(2, 3)
        wait_until(lambda: len(done) == 2, timeout=60, message="both handled")
        broker.join("default", timeout=60_000)
        broker.join("greeter", timeout=60_000)
    finally:
        worker.stop()
    assert sorted(done) == ["event:ada", "task:5"]
