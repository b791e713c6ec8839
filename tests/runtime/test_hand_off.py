"""The consumer's hand-off to an idle worker: after a read that found this queue's workers
idle, the consumer waits (without the GIL) until a worker thread took a message off
Dramatiq's work queue before it builds its next read; after a read while an entry was still
in flight, it reads again at once.  Run on fakeredis and on the real server."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from support import Runtime, stays, wait_until

from chi_redis import Event
from chi_redis.runtime import consumer as consumer_module


def ev(n: int) -> Event:
    return Event(type="cart.created", data={"n": n})


class _ConsumerThread(threading.Thread):
    """Stands for Dramatiq's ConsumerThread: iterates the consumer and puts each message on
    ``work_queue`` (a PriorityQueue, as Dramatiq's), then asks for the next one."""

    def __init__(self, next_message: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work_queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self.next_message = next_message
        self.handed = 0
        self.calls_after_hand_off = 0

    def run(self) -> None:
        message = None
        while message is None:
            message = self.next_message()
        self.work_queue.put((0, 0, message))
        self.handed += 1
        self.next_message()  # the call that may wait for a worker to take the message
        self.calls_after_hand_off += 1


@pytest.fixture
def long_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-off wait far longer than the tests' deadlines, so that it shows."""
    monkeypatch.setattr(consumer_module, "HAND_OFF_WAIT_S", 60.0)


@pytest.mark.usefixtures("long_wait")
def test_next_read_waits_until_a_worker_took_the_message(rt: Runtime) -> None:
    @rt.bus.subscribe("handoff", types=["cart.created"])
    def handoff(event: Event) -> None:
        pass

    broker = rt.broker(block_ms=100)
    consumer = broker.consume("handoff", prefetch=4, timeout=100)
    rt.publish(ev(1))
    thread = _ConsumerThread(lambda: next(consumer))
    thread.start()
    wait_until(lambda: thread.handed == 1, message="the message handed out")
    # Nobody took it: the consumer does not read again (it holds no lock a worker needs).
    assert stays(lambda: thread.calls_after_hand_off == 0, 0.5)
    _, _, message = thread.work_queue.get()  # a worker takes it
    wait_until(lambda: thread.calls_after_hand_off == 1, timeout=30,
               message="the consumer read again once the message was taken")
    thread.join(30)
    consumer.ack(message)
    consumer.close()


@pytest.mark.usefixtures("long_wait")
def test_no_wait_when_the_read_found_an_entry_in_flight(rt: Runtime) -> None:
    @rt.bus.subscribe("handoff", types=["cart.created"])
    def handoff(event: Event) -> None:
        pass

    broker = rt.broker(block_ms=100)
    consumer = broker.consume("handoff", prefetch=4, timeout=100)
    rt.publish(ev(1))
    first = wait_until(lambda: next(consumer), message="the first entry")  # left in flight
    rt.publish(ev(2))
    thread = _ConsumerThread(lambda: next(consumer))
    thread.start()
    wait_until(lambda: thread.handed == 1, message="the second entry handed out")
    # The workers were busy when it was read: the next read goes out without a taker.
    wait_until(lambda: thread.calls_after_hand_off == 1, timeout=30,
               message="the consumer read again at once")
    thread.join(30)
    _, _, second = thread.work_queue.get_nowait()
    consumer.ack(first)
    consumer.ack(second)
    consumer.close()
