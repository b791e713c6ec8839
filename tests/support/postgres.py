"""PostgreSQL of the tests (stores, outbox): the shared server, and own ones.

The shared server at ``CHI_TEST_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``, trust auth) is skipped when unreachable,
failed when ``CI=true``.  An own :class:`PostgresServer` is ``initdb``-ed into a fresh
directory and started on a free port with ``pg_ctl`` from
``/usr/lib/postgresql/<version>/bin``; ``initdb`` refuses to run as root, so when the tests
run as root both run as the ``postgres`` OS user (``runuser``) on a directory chowned to
it.  Stopping signals only that server: ``pg_ctl -D <its directory> stop``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from .ports import free_port
from .skips import skip_or_fail

DATABASE_URL = os.environ.get("CHI_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def require_postgres(dsn: str = DATABASE_URL) -> str:
    """``dsn`` when a server answers there; skips (fails in CI) otherwise."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        skip_or_fail(f"no PostgreSQL at {dsn}: {type(exc).__name__}")
    return dsn


def unique_table(prefix: str = "t_outbox") -> str:
    """A table name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def drop_outbox(dsn: str, table: str) -> None:
    """Drop an outbox table and its notify function (test cleanup)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"DROP FUNCTION IF EXISTS {table}_notify()")


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A PostgreSQL server this test owns, in its own directory on a free port."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            skip_or_fail("PostgreSQL server binaries (pg_ctl, initdb) are not installed")
        assert bindir is not None
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="chi-pg-"))
        self.data = self.root / "data"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        self.started = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
                " -c fsync=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts,
                  "-w", "-t", "60", "start")
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            self.started = False

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, stopped and removed afterwards."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
