"""Fixtures of the outbox tests: the shared PostgreSQL, a fresh outbox table, relay processes.

- ``pg_dsn``: the shared server (``support.postgres.DATABASE_URL``); the test must carry
  the ``postgres`` marker.  Skipped when unreachable, failed when ``CI=true``.
- ``outbox_table``: a new outbox table (``outbox.init``) in that database, dropped after.
- ``relays``: ``chi-redis outbox relay`` processes (:class:`support.relays.RelayProcesses`),
  stopped after.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.postgres import drop_outbox, require_postgres, unique_table
from support.relays import RelayProcesses
from support.servers import redis_url

from chi_redis import outbox


@pytest.fixture
def pg_dsn(request: pytest.FixtureRequest) -> str:
    if request.node.get_closest_marker("postgres") is None:
        pytest.fail(f"{request.node.nodeid} uses pg_dsn without the `postgres` marker",
                    pytrace=False)
    return require_postgres()


@pytest.fixture
def outbox_table(pg_dsn: str) -> Iterator[str]:
    table = unique_table()
    with psycopg.connect(pg_dsn) as conn:
        outbox.init(conn, table)
    try:
        yield table
    finally:
        drop_outbox(pg_dsn, table)


@pytest.fixture
def relays(tmp_path: Path, ns: str) -> Iterator[RelayProcesses]:
    r = RelayProcesses(tmp_path, ns, redis_url())
    try:
        yield r
    finally:
        r.stop()
