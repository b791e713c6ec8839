"""Behaviours of the runtime conformance suite, run unchanged against the RabbitMQ bus.

tests/contract/test_runtime_conformance.py's harness is Redis Streams (its ``backend``
fixture builds StreamsBrokers, ``Session.strand`` is an XREADGROUP, several behaviours
compare stream ids and keys), so the RabbitMQ bus is not one more entry of its
``BACKENDS``: this module imports the behaviours that use only the bus API and gives them
a ``backend`` of its own, whose ``start()`` runs a :class:`RabbitMQWorker` and whose
``join(sub)`` waits until the subscription's queues hold nothing (ready or unacknowledged).
The others, and why they do not apply, are listed in docs/buses.md.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from contract.test_runtime_conformance import (
    test_fan_out_to_several_subscriptions,
    test_filters_deliver_matches_and_ack_the_rest_unseen,
    test_ordering_within_one_consumer,
    test_publish_and_receive,
    test_retries_then_success,
)
from support import skip_or_fail, wait_until

from chi_redis import Event
from chi_redis.bridges.rabbitmq import RabbitMQEventBus
from chi_redis.bridges.rabbitmq_worker import RabbitMQWorker

pytestmark = pytest.mark.rabbitmq

__all__ = [
    "test_fan_out_to_several_subscriptions",
    "test_filters_deliver_matches_and_ack_the_rest_unseen",
    "test_ordering_within_one_consumer",
    "test_publish_and_receive",
    "test_retries_then_success",
]


class Started:
    """What ``backend.start()`` returns: ``join(sub)`` as the suite uses it."""

    def __init__(self, bus: RabbitMQEventBus) -> None:
        self.bus = bus

    def join(self, sub: str, timeout: int) -> None:
        """Wait until ``sub``'s queue and its delay queues hold no message, ready or
        unacknowledged (``rabbitmqctl list_queues``: AMQP tells only the ready ones)."""
        prefix = self.bus.names.queue(sub)
        wait_until(lambda: _held(prefix) == 0, timeout / 1000, f"{sub}'s queues empty",
                   interval=0.2)


def _held(prefix: str) -> int:
    if shutil.which("rabbitmqctl") is None:
        skip_or_fail("rabbitmqctl is not installed")
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    total = 0
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if (name == prefix or name.startswith(prefix + ".retry.")) and count.isdigit():
            total += int(count)
    return total


class RabbitConformance:
    """The ``backend`` of the imported behaviours: the bus, ``rt.publish`` and ``start``."""

    def __init__(self, bus: RabbitMQEventBus) -> None:
        self.bus = bus
        self.rt = self
        self.workers: list[RabbitMQWorker] = []

    def publish(self, *events: Event) -> list[str]:
        return [self.bus.publish(e) for e in events]

    def start(self, threads: int = 4, **options: Any) -> Started:
        worker = self.bus.worker(threads=threads)
        worker.start()
        self.workers.append(worker)
        return Started(self.bus)


@pytest.fixture
def backend(rabbit: RabbitMQEventBus) -> Iterator[RabbitConformance]:
    conformance = RabbitConformance(rabbit)
    try:
        yield conformance
    finally:
        for worker in conformance.workers:
            worker.stop(timeout_s=10)
