"""One tansu broker for the Kafka tests of a session; each test its own namespace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kafka import TansuBroker
from support.skips import skip_or_fail

from chi_redis.bridges.kafka import KafkaEventBus
from chi_redis.bridges.kafka_worker import KafkaWorker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        skip_or_fail("confluent-kafka is not installed (pip install 'chi-redis[kafka]')")
    broker = TansuBroker(Path(tmp_path_factory.mktemp("tansu"))).start()
    yield broker
    broker.stop()


@pytest.fixture
def kns() -> str:
    """A namespace (so Kafka topics and groups) no other test uses."""
    return f"k{uuid.uuid4().hex[:10]}"


#: The consumer session timeout of the tests: a group join takes about half of it on tansu,
#: and a killed worker's partitions move after it.
SESSION_MS = 2000


@pytest.fixture
def kbus(kafka_broker: TansuBroker, kns: str) -> Iterator[KafkaEventBus]:
    """A Kafka bus on the test broker in a fresh namespace; its workers stopped after."""
    bus = KafkaEventBus([kafka_broker.address], namespace=kns, session_timeout_ms=SESSION_MS)
    workers: list[KafkaWorker] = []
    real_worker = bus.worker

    def worker(*, threads: int = 1) -> KafkaWorker:
        w = real_worker(threads=threads)
        workers.append(w)
        return w

    bus.worker = worker  # type: ignore[method-assign]
    yield bus
    for w in workers:
        w.stop(timeout_s=30)
        assert w._threads == [], "a consumer thread outlived stop()"
    bus.close()
