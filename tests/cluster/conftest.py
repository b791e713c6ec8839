"""Fixtures of the cluster tests: ``cbus``, an :class:`EventBus` on the session's local
cluster (tests/support/cluster.py) in this test's namespace, whose keys on every master
are deleted after the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.cluster import LocalCluster, delete_cluster_namespace

from chi_redis import EventBus


@pytest.fixture
def cbus(redis_cluster: LocalCluster, ns: str) -> Iterator[EventBus]:
    bus = EventBus.from_url(redis_cluster.url, namespace=ns)
    yield bus
    delete_cluster_namespace(bus.client, ns)
    bus.close()
