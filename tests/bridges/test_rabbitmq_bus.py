"""The RabbitMQ bus against the real broker: publish, routing, retries, dead letters.

Each test has its own namespace, so its own exchanges and queues (deleted afterwards by the
``rabbit`` fixture).  Handlers run in this process on a :class:`RabbitMQWorker`.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pika
import pytest
from support import skip_or_fail, wait_until

from chi_redis import Event
from chi_redis.bridges import BusUnavailableError
from chi_redis.bridges.rabbitmq import RabbitMQEventBus
from chi_redis.bridges.rabbitmq_worker import ERROR_CHARS, RabbitMQWorker
from chi_redis.events.filters import metadata
from chi_redis.runtime.subscriptions import Delivery

pytestmark = pytest.mark.rabbitmq
DEADLINE_S = 20.0


class Seen:
    """What handlers received, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        with self._lock:
            self.items.append(item)

    def __len__(self) -> int:
        with self._lock:
            return len(self.items)

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.items)


def recorder(seen: Seen, what: Any) -> Any:
    """A one-parameter handler adding ``what(event)`` to ``seen``."""

    def handle(event: Event) -> None:
        seen.add(what(event))

    return handle


@pytest.fixture
def running(rabbit: RabbitMQEventBus) -> Iterator[list[RabbitMQWorker]]:
    """Workers started by the test (``running.append(w)``), stopped at teardown."""
    workers: list[RabbitMQWorker] = []
    yield workers
    for w in workers:
        w.stop(timeout_s=10)


def start(bus: RabbitMQEventBus, running: list[RabbitMQWorker], threads: int = 2) -> None:
    worker = bus.worker(threads=threads, prefetch=2)
    worker.start()
    running.append(worker)


def test_published_event_reaches_its_handler_whole(
    rabbit: RabbitMQEventBus, running: list[RabbitMQWorker]
) -> None:
    seen = Seen()
    rabbit.subscribe("audit", types=["user.created"])(lambda e, d: seen.add((e, d)))
    start(rabbit, running)
    sent = Event(type="user.created", data={"id": 7, "tags": ["a"]},
                 metadata={"region": "eu", "n": 3, "ok": True},
                 timestamp=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC))
    assert rabbit.publish(sent) == sent.id
    wait_until(lambda: len(seen) == 1, DEADLINE_S, "the event")
    got, delivery = seen.snapshot()[0]
    assert got == sent
    assert isinstance(delivery, Delivery)
    assert (delivery.subscription, delivery.attempt, delivery.entry_id) == ("audit", 1, sent.id)


def test_fan_out_each_subscription_gets_every_event_once(
    rabbit: RabbitMQEventBus, running: list[RabbitMQWorker]
) -> None:
    seen = {name: Seen() for name in ("mailer", "billing")}
    for name, rec in seen.items():
        rabbit.subscribe(name, types=["order.**"])(recorder(rec, lambda e: e.data["n"]))
    start(rabbit, running)
    rabbit.publish_batch([Event(type="order.placed", data={"n": i}) for i in range(10)])
    for name, rec in seen.items():
        wait_until(lambda rec=rec: len(rec) == 10, DEADLINE_S, f"{name}'s events")
        assert sorted(rec.snapshot()) == list(range(10))


def test_type_globs_and_topics_route_like_amqp_patterns(
    rabbit: RabbitMQEventBus, running: list[RabbitMQWorker]
) -> None:
    routes: dict[str, dict[str, Any]] = {
        "one": {"types": ["user.*"]}, "deep": {"types": ["user.**"]},
        "created": {"types": ["*.created"]}, "audit": {"topics": ["audit"]},
        # types and a topic (checked by the worker) and a metadata filter
        "eu": {"types": ["**"], "topics": ["user", "audit"], "filter": metadata(region="eu")}}
    seen = {name: Seen() for name in routes}
    for name, binding in routes.items():
        rabbit.subscribe(name, **binding)(recorder(seen[name], lambda e: e.type))
    start(rabbit, running, threads=1)
    for type_, topic, region in [("user.created", "", "us"), ("user.profile.updated", "", "eu"),
                                 ("order.created", "", "eu"), ("login.failed", "audit", "us")]:
        rabbit.publish(Event(type=type_, topic=topic, metadata={"region": region}))
    # Last, an event every subscription binds: once each has it, the queue (FIFO, one
    # consumer) has delivered everything routed to it before.
    rabbit.publish(Event(type="user.created", topic="audit", metadata={"region": "eu"}))
    for rec in seen.values():
        wait_until(lambda rec=rec: rec.snapshot()[-1:] == ["user.created"] and len(rec) > 0
                   and rec.snapshot().count("user.created") >= (
                       1 if rec in (seen["audit"], seen["eu"]) else 2),
                   DEADLINE_S, "the fence event")
    assert seen["one"].snapshot() == ["user.created", "user.created"]
    assert seen["deep"].snapshot() == ["user.created", "user.profile.updated", "user.created"]
    assert seen["created"].snapshot() == ["user.created", "order.created", "user.created"]
    assert seen["audit"].snapshot() == ["login.failed", "user.created"]
    assert seen["eu"].snapshot() == ["user.profile.updated", "user.created"]


def test_handler_errors_are_retried_with_backoff_then_succeed(
    rabbit: RabbitMQEventBus, running: list[RabbitMQWorker]
) -> None:
    attempts = Seen()

    @rabbit.subscribe("flaky", types=["job.run"], max_retries=3, min_backoff_ms=50,
                      max_backoff_ms=200)
    def flaky(event: Event, delivery: Delivery) -> None:
        attempts.add(delivery.attempt)
        if delivery.attempt < 3:
            raise RuntimeError("not yet")

    start(rabbit, running)
    rabbit.publish(Event(type="job.run"))
    wait_until(lambda: len(attempts) == 3, DEADLINE_S, "three attempts")
    wait_until(lambda: _depth(rabbit, "flaky") == 0, DEADLINE_S, "the ack")
    assert attempts.snapshot() == [1, 2, 3]
    assert rabbit.dead_letters("flaky") == []


def test_dead_letter_after_retries_keeps_reason_type_and_truncated_error(
    rabbit: RabbitMQEventBus, running: list[RabbitMQWorker]
) -> None:
    attempts = Seen()
    healed = threading.Event()

    @rabbit.subscribe("doomed", types=["job.run"], max_retries=2, min_backoff_ms=20)
    def doomed(event: Event, delivery: Delivery) -> None:
        attempts.add(delivery.attempt)
        if not healed.is_set():
            raise ValueError("smtp refused: password=hunter2 " + "x" * 5000)

    start(rabbit, running)
    sent = Event(type="job.run", data={"n": 1})
    rabbit.publish(sent)
    letters = wait_until(lambda: rabbit.dead_letters("doomed"), DEADLINE_S, "a dead letter")
    (dl,) = letters
    assert (dl.reason, dl.error_type, dl.attempts, dl.event_id, dl.type, dl.topic) == (
        "retries_exhausted", "ValueError", 3, sent.id, "job.run", "job")
    assert dl.error == ("smtp refused: password=*** " + "x" * ERROR_CHARS)[:ERROR_CHARS]
    assert attempts.snapshot() == [1, 2, 3]
    # Redriven once the handler is fixed: handled once more, with a fresh retry budget.
    healed.set()
    assert rabbit.redrive("doomed", [dl.id]) == 1
    wait_until(lambda: len(attempts) == 4, DEADLINE_S, "the redriven event")
    assert attempts.snapshot()[-1] == 1
    assert rabbit.dead_letters("doomed") == []


def test_errors_in_throws_are_dead_lettered_without_retry(
    rabbit: RabbitMQEventBus, running: list[RabbitMQWorker]
) -> None:
    calls = Seen()

    @rabbit.subscribe("strict", types=["job.run"], throws=(KeyError,))
    def strict(event: Event) -> None:
        calls.add(1)
        raise KeyError("missing")

    start(rabbit, running)
    rabbit.publish(Event(type="job.run"))
    (dl,) = wait_until(lambda: rabbit.dead_letters("strict"), DEADLINE_S, "a dead letter")
    assert (dl.reason, dl.error_type, len(calls)) == ("not_retryable", "KeyError", 1)


def test_malformed_message_is_rejected_into_the_dead_letters_unhandled(
    rabbit: RabbitMQEventBus, running: list[RabbitMQWorker]
) -> None:
    calls = Seen()
    rabbit.subscribe("strict", types=["job.run"])(lambda e: calls.add(e))
    start(rabbit, running)
    conn = rabbit.connect()
    try:  # a foreign producer: no chi headers, a body that is not msgpack
        conn.channel().basic_publish(rabbit.names.exchange, "job.run", b"\xc1garbage",
                                     pika.BasicProperties(message_id="m-1", type="job.run"))
    finally:
        conn.close()
    rabbit.publish(Event(type="job.run", data={"ok": 1}))
    (dl,) = wait_until(lambda: rabbit.dead_letters("strict"), DEADLINE_S, "a dead letter")
    wait_until(lambda: len(calls) == 1, DEADLINE_S, "the good event")
    assert (dl.reason, dl.error_type, dl.event_id) == ("decode", "DecodeError", "m-1")
    assert "chi-ts" in dl.error
    assert calls.snapshot()[0].data == {"ok": 1}


def test_publish_returns_once_confirmed_and_a_refused_publish_raises(
    rabbit: RabbitMQEventBus
) -> None:
    # A queue that takes one message and refuses more (reject-publish): the broker nacks.
    conn = rabbit.connect()
    queue = f"{rabbit.namespace}.capped"
    try:
        channel = conn.channel()
        rabbit.publish(Event(type="warm.up"))  # declares the exchanges
        channel.queue_declare(queue, durable=True, arguments={
            "x-max-length": 1, "x-overflow": "reject-publish"})
        channel.queue_bind(queue, rabbit.names.exchange, routing_key="capped.*")
        rabbit.publish(Event(type="capped.one"))
        # Confirmed means enqueued: no wait needed to see it.
        assert channel.queue_declare(queue, passive=True).method.message_count == 1
        with pytest.raises(BusUnavailableError, match="refused"):
            rabbit.publish(Event(type="capped.two"))
        rabbit.publish(Event(type="other.event"))  # the bus recovers on a new channel
    finally:
        conn.channel().queue_delete(queue)
        conn.close()


def _depth(bus: RabbitMQEventBus, sub: str) -> int:
    """Messages in ``sub``'s queue, acknowledged or not (ready + unacked)."""
    conn = bus.connect()
    try:
        ch = conn.channel()
        ready = ch.queue_declare(bus.names.queue(sub), passive=True).method.message_count
        return int(ready)
    finally:
        conn.close()


def test_stop_lets_the_handler_in_flight_finish_and_acks_it(
    rabbit: RabbitMQEventBus
) -> None:
    started, release, done = threading.Event(), threading.Event(), Seen()

    @rabbit.subscribe("slow", types=["job.run"])
    async def slow(event: Event) -> None:  # async handlers run to completion too
        started.set()
        release.wait(DEADLINE_S)
        done.add(event.id)

    worker = rabbit.worker(threads=1, prefetch=1)
    worker.start()
    sent = Event(type="job.run")
    rabbit.publish(sent)
    assert started.wait(DEADLINE_S)
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout_s": DEADLINE_S})
    stopper.start()
    release.set()
    stopper.join(DEADLINE_S)
    assert not stopper.is_alive()
    assert done.snapshot() == [sent.id]
    assert _depth(rabbit, "slow") == 0  # acknowledged before the connection closed


def test_worker_and_publisher_connect_again_when_the_broker_drops_them(
    rabbit: RabbitMQEventBus, running: list[RabbitMQWorker]
) -> None:
    seen = Seen()
    rabbit.subscribe("steady", types=["job.run"])(recorder(seen, lambda e: e.data["n"]))
    start(rabbit, running)
    rabbit.publish(Event(type="job.run", data={"n": 1}))
    wait_until(lambda: len(seen) == 1, DEADLINE_S, "the first event")
    # The broker closes this bus's worker and publisher connections (by name: only ours).
    assert _close_connections(f"chi {rabbit.namespace} ") == 3  # 2 worker threads + publisher
    rabbit.publish(Event(type="job.run", data={"n": 2}))  # sent again on a new connection
    wait_until(lambda: len(seen) == 2, DEADLINE_S, "the event after the reconnect")
    assert seen.snapshot() == [1, 2]


def _close_connections(prefix: str) -> int:
    """Close, with ``rabbitmqctl``, the broker's connections whose name starts with
    ``prefix``; returns how many."""
    if shutil.which("rabbitmqctl") is None:
        skip_or_fail("rabbitmqctl is not installed")
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    pids = [line.split("\t", 1)[0] for line in listed.splitlines()
            if f'{{"connection_name","{prefix}' in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"],
                       capture_output=True, timeout=60, check=True)
    return len(pids)
