"""The RabbitMQ backend of the runtime conformance suite: the shared broker at
``CHI_TEST_RABBITMQ_URL`` (127.0.0.1:5672), each test on its own exchanges and queues
(``<ns>.events``, ``<ns>.<sub>``…), deleted afterwards.

Workers run in this process as :class:`~chi_redis.bridges.rabbitmq_worker.RabbitMQWorker`;
worker processes are ``chi-redis worker MODULE`` on a ``bus.type: rabbitmq`` configuration.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest

from chi_redis.bridges.rabbitmq import RabbitMQEventBus
from chi_redis.bridges.rabbitmq_worker import RabbitMQWorker

from .backends import DEADLINE_S, Backend, BridgeSession, Features, Session
from .processes import WorkerProcess
from .rabbitmq import RABBITMQ_URL, rabbitmq_bus
from .skips import skip_or_fail
from .waiting import wait_until


def held(prefix: str) -> int:
    """Messages, ready or unacknowledged, in queue ``prefix`` and its delay queues
    (``rabbitmqctl list_queues``: AMQP's passive declare counts only the ready ones)."""
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


class RabbitSession(BridgeSession):
    """A session on a :class:`RabbitMQEventBus` of its own exchange."""

    bus: RabbitMQEventBus

    def __init__(self, bus: RabbitMQEventBus) -> None:
        super().__init__(bus, url=bus.url)
        self.workers: list[RabbitMQWorker] = []

    def prepare(self, **options: Any) -> None:
        """Declare the exchanges and every subscription's queues (what a worker does first)."""
        self.bus.declare()

    def run(self, threads: int = 4) -> None:
        worker = self.bus.worker(threads=threads)
        self.workers.append(worker)
        worker.start()

    def join(self, sub: str) -> None:
        queue = self.bus.names.queue(sub)
        wait_until(lambda: held(queue) == 0, DEADLINE_S, f"{sub}'s queues empty", interval=0.2)

    def strand(self, sub: str, topic: str, count: int) -> int:
        """``basic.get`` without an ack on a connection that then closes, as when the
        consumer's process dies: RabbitMQ delivers those messages again."""
        conn = self.bus.connect("stranded")
        taken = 0
        try:
            channel = conn.channel()
            for _ in range(count):
                method, _props, _body = channel.basic_get(self.bus.names.queue(sub))
                if method is None:
                    break
                taken += 1
        finally:
            conn.close()
        return taken

    def inject_malformed(self, topic: str, type_: str, event_id: str) -> str:
        conn = self.bus.connect("foreign")
        try:
            channel = conn.channel()
            channel.confirm_delivery()
            headers = {"chi-topic": topic, "chi-ts": 1, "chi-ver": "1.0", "chi-meta": "{}",
                       "chi-enc": "mp"}
            channel.basic_publish(self.bus.names.exchange, type_, b"\xc1", pika.BasicProperties(
                delivery_mode=2, message_id=event_id, type=type_, headers=headers))
        finally:
            conn.close()
        return event_id  # a RabbitMQ dead letter's source id is the message id

    def bus_config(self) -> dict[str, Any]:
        return {"type": "rabbitmq",
                "rabbitmq": {"url": self.bus.url, "exchange": self.bus.names.exchange}}

    def wait_ready(self, proc: WorkerProcess, subs: dict[str, list[str]]) -> None:
        wait_until(lambda: "consuming with" in proc.output(), DEADLINE_S,
                   "the RabbitMQ worker process consuming", interval=0.1)
        for name, topics in subs.items():  # mirrored (default options): deleted at the end
            if name not in self.bus.subscriptions:
                self.bus.subscribe(name, topics=topics)(lambda event: None)


@contextlib.contextmanager
def _rabbitmq(ns: str, tmp_path: Path) -> Iterator[Session]:
    parts = urlsplit(RABBITMQ_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2).close()
    except OSError as exc:
        skip_or_fail(f"RabbitMQ at {parts.hostname}:{parts.port} does not answer ({exc})")
    with rabbitmq_bus(ns) as bus:
        yield RabbitSession(bus)


RABBITMQ = Backend(
    "rabbitmq",
    _rabbitmq,
    Features(
        replay=False, batch=False, idempotent_publish=False, time_limit=False, refuses=frozenset({
            "priority", "start_earliest", "time_limit_ms", "batch_size", "dedupe",
            "idempotency_key"}),
        reasons={
            "kill_and_restart": "the shared RabbitMQ at 127.0.0.1:5672 is never killed by a"
                                " test",
            "persistence": "the shared RabbitMQ is never restarted by a test",
            "replay": "replay reads the event store (Redis or the archive); the RabbitMQ bus"
                      " only delivers",
            "batch": "batch subscriptions are refused by the RabbitMQ bus",
            "idempotent_publish": "refused: RabbitMQ keeps no record of published keys",
            "time_limit": "time_limit_ms is refused: the RabbitMQ worker has no time-limit"
                          " watchdog (Dramatiq's TimeLimit runs on the Redis worker only)",
            "key_order": "one queue per subscription, shared by its consumers: order holds"
                         " for one consumer only (guaranteed_order), there are no per-key"
                         " partitions",
        },
    ),
    marks=(pytest.mark.rabbitmq,),
)
