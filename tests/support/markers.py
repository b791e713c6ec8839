"""The ``redis`` marker stays true: every test that needs a real redis-server carries it.

Two checks (wired up in tests/conftest.py):

- at collection, :func:`unmarked_real_server_tests` lists tests whose fixtures include a
  real-server fixture (:data:`REAL_SERVER_FIXTURES`) but that carry no ``redis`` marker;
  tests/conftest.py fails the collection when there is any;
- at set-up, :func:`require_redis_marker` fails a test that reaches a real-server fixture
  dynamically (``request.getfixturevalue``) without the marker.

A module whose every test needs the server says so once: ``pytestmark = pytest.mark.redis``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

# Fixtures that talk to the shared server at 6379 or start a redis-server of their own.
REAL_SERVER_FIXTURES = frozenset({"real_client", "redis_servers", "redis_cluster", "cli"})


def has_redis_marker(item: pytest.Item) -> bool:
    """Whether ``item`` carries the ``redis`` marker (from itself, its module or a param)."""
    return item.get_closest_marker("redis") is not None


def unmarked_real_server_tests(items: Iterable[pytest.Item]) -> list[str]:
    """Node ids of tests that use a real-server fixture but carry no ``redis`` marker."""
    bad = []
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        used = sorted(names & REAL_SERVER_FIXTURES)
        if used and not has_redis_marker(item):
            bad.append(f"{item.nodeid} (uses {', '.join(used)})")
    return bad


def check_collection(items: Iterable[pytest.Item]) -> None:
    """Raise a usage error (the collection fails) when a real-server test is unmarked."""
    bad = unmarked_real_server_tests(items)
    if bad:
        raise pytest.UsageError(
            "tests that need a real redis-server must carry the `redis` marker "
            "(pytestmark = pytest.mark.redis, or @pytest.mark.redis):\n  " + "\n  ".join(bad))


def require_redis_marker(node: pytest.Item | pytest.Collector, fixture: str) -> None:
    """Fail the test at set-up when it reached ``fixture`` without the ``redis`` marker."""
    if node.get_closest_marker("redis") is None:
        pytest.fail(f"{node.nodeid} uses {fixture} (a real redis-server) without the `redis`"
                    " marker", pytrace=False)


# The "real server" parameter of fixtures parametrised over fakeredis and the real server.
REAL = pytest.param("real", marks=pytest.mark.redis)
