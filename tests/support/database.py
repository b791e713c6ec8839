"""PostgreSQL for the store tests: the server at ``CHI_TEST_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``, trust auth), one fresh table per test.

Tests that need it carry ``@pytest.mark.postgres``; an unreachable server skips them locally
and fails them when ``CI=true`` (:func:`support.skips.skip_or_fail`).
"""

from __future__ import annotations

import os
import uuid

from .skips import skip_or_fail

__all__ = ["database_url", "require_postgres", "unique_table"]


def database_url() -> str:
    """The test database's URL."""
    return os.environ.get("CHI_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def require_postgres() -> str:
    """The URL, after checking the server answers (skip locally, fail in CI otherwise)."""
    import psycopg

    url = database_url()
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        skip_or_fail(f"no PostgreSQL at 127.0.0.1:5432: {type(exc).__name__}")
    return url


def unique_table(prefix: str = "t") -> str:
    """A table name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
