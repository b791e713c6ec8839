"""The RabbitMQ the ``rabbitmq``-marked tests use (127.0.0.1:5672, guest/guest).

:func:`rabbitmq_bus` gives a :class:`~chi_redis.bridges.rabbitmq.RabbitMQEventBus` whose
exchange and queues carry the test's namespace, and deletes them afterwards.  When the
broker does not answer the test is skipped, and fails under ``CI=true``
(:func:`support.skips.skip_or_fail`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from chi_redis.bridges.rabbitmq import RabbitMQEventBus

from .skips import skip_or_fail

RABBITMQ_URL = os.environ.get("CHI_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def require_rabbitmq(node: pytest.Item | pytest.Collector) -> None:
    """Fail a test without the ``rabbitmq`` marker; skip (fail in CI) without the broker."""
    if node.get_closest_marker("rabbitmq") is None:
        pytest.fail(f"{node.nodeid} uses RabbitMQ without the `rabbitmq` marker", pytrace=False)
    parts = urlsplit(RABBITMQ_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            pass
    except OSError as exc:
        skip_or_fail(f"RabbitMQ at {parts.hostname}:{parts.port} does not answer ({exc})")


@contextlib.contextmanager
def rabbitmq_bus(ns: str, **options: object) -> Iterator[RabbitMQEventBus]:
    """A bus in namespace ``ns`` on exchange ``<ns>.events``; its subscriptions' queues and
    its exchanges are deleted afterwards."""
    bus = RabbitMQEventBus(RABBITMQ_URL, namespace=ns, exchange=f"{ns}.events",
                           **options)  # type: ignore[arg-type]
    try:
        yield bus
    finally:
        with contextlib.suppress(Exception):  # the test's own failure says more
            bus.delete(exchanges=True)
        bus.close()
