"""The outbox gauges of ``chi-redis metrics``: backlog, lag and failed rows of a real
PostgreSQL table."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis
from support import REDIS_URL, wait_until
from support.exporter import Exporter, sample
from support.postgres import drop_outbox, require_postgres, unique_table

from chi_redis import Event, outbox

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def table() -> Iterator[tuple[str, str]]:
    dsn = require_postgres()
    name = unique_table()
    with psycopg.connect(dsn) as conn:
        outbox.init(conn, name)
    try:
        yield dsn, name
    finally:
        drop_outbox(dsn, name)


def test_backlog_and_lag_of_the_outbox_come_from_the_table(
    real_client: redis.Redis, ns: str, table: tuple[str, str],
    exporters: Callable[..., Exporter],
) -> None:
    dsn, name = table
    with psycopg.connect(dsn) as conn:
        outbox.add_many(conn, [Event(type="order.created", data={"i": i}) for i in range(4)],
                        table=name)
        conn.execute(f"UPDATE {name} SET failed_at = now(), error = 'x'"
                     f" WHERE seq = (SELECT min(seq) FROM {name})")
    # the DSN comes from the environment, as in the Procfile; it is never printed
    exporter = exporters(REDIS_URL, ns, "--outbox-table", name, CHI_DATABASE_URL=dsn)
    m = exporter.metrics()
    assert sample(m, "chi_outbox_backlog") == 3
    assert sample(m, "chi_outbox_failed") == 1
    first = sample(m, "chi_outbox_lag_seconds")
    assert first is not None and first >= 0
    assert sample(m, "chi_scrape_errors_total", source="outbox") == 0
    wait_until(lambda: (sample(exporter.metrics(), "chi_outbox_lag_seconds") or 0) > first,
               60, "the oldest row ages", interval=0.2)
    assert dsn not in exporter.output()


def test_an_unreachable_outbox_database_is_counted_not_fatal(
    real_client: redis.Redis, ns: str, exporters: Callable[..., Exporter],
) -> None:
    secret = "postgresql://chi:s3cret@127.0.0.1:1/nowhere"
    exporter = exporters(REDIS_URL, ns, "--dsn", secret)
    m = exporter.metrics()
    assert sample(m, "chi_up") == 1.0
    assert sample(m, "chi_outbox_backlog") is None
    assert (sample(m, "chi_scrape_errors_total", source="outbox") or 0) >= 1
    assert "s3cret" not in exporter.output()
