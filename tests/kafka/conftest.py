"""One tansu broker for the Kafka tests of a session; each test its own namespace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kafka import TansuBroker
from support.skips import skip_or_fail


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
