"""Redis servers of the tests: the shared one at ``CHI_TEST_REDIS_URL``, and own ones.

An own :class:`RedisServer` runs on a free port in the test's directory; it can be killed
(``kill -9``), restarted on the same port with or without persistence (AOF), protected by
``requirepass`` and reconfigured with ``CONFIG SET``.  Cleanup only ever signals the PID
this object started.  Tests get them from the ``redis_servers`` fixture (tests/conftest.py),
which stops every server it started at teardown.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

import redis

from .ports import free_port
from .skips import require_redis_server_binary, skip_or_fail
from .waiting import wait_until

REDIS_URL = os.environ.get("CHI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_url() -> str:
    """The shared test server's URL."""
    return REDIS_URL


def connect_real_redis(url: str = REDIS_URL) -> redis.Redis:
    """A client of the shared real server at ``url``; skips (fails in CI) if it is down."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        client.close()
        skip_or_fail(f"no redis-server at {url}: {type(exc).__name__}")
    return client


class RedisServer:
    """A redis-server this test owns: started on a free port, stopped by the PID we started.

    ``args`` are extra ``redis-server`` options (they come last, so they win over the
    defaults); ``persistence=True`` turns the AOF on with ``appendfsync always`` so that a
    ``kill -9`` loses nothing.
    """

    def __init__(self, workdir: Path, *args: str, password: str | None = None,
                 persistence: bool = False) -> None:
        require_redis_server_binary()
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.persistence = persistence
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL without credentials."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The ``redis-server`` command line for the current settings."""
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistence else [
            "--appendonly", "no"]
        auth = ["--requirepass", self.password] if self.password is not None else []
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                *aof, "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"),
                *auth, *self.args]

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new client of this server (with the password, if any)."""
        options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 2, **kwargs}
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **options)

    def user_client(self, user: str, *, denied: tuple[str, ...] = (),
                    **kwargs: Any) -> redis.Redis:
        """A client of ACL user ``user`` (created now, password ``pw``) who may run every
        command but ``denied`` (e.g. ``("xadd",)``: writes the worker's scripts refuse)."""
        self.client().acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"],
                                  channels=["*"],
                                  commands=["+@all", *(f"-{c}" for c in denied)])
        return redis.Redis(host="127.0.0.1", port=self.port, username=user, password="pw",
                           socket_timeout=10, **kwargs)

    def allow(self, user: str, *commands: str) -> None:
        """Give ``user`` back ``commands``.  ``enabled=True``: redis-py's ``acl_setuser``
        sends ``off`` unless told, which would disable the user for new connections."""
        self.client().acl_setuser(user, enabled=True, commands=[f"+{c}" for c in commands])

    def start(self) -> RedisServer:
        """Start it (again, on the same port) and wait until it answers PING."""
        assert not self.alive(), "already running"
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(self._answers, 20, message=f"own redis-server on port {self.port}",
                   interval=0.05)
        return self

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (
            f"redis-server exited with {self.proc and self.proc.returncode}: "
            f"{self.log_tail()}")
        try:
            with contextlib.closing(self.client(socket_connect_timeout=1)) as c:
                return bool(c.ping())
        except redis.exceptions.ConnectionError:
            return False

    def alive(self) -> bool:
        """Whether the process we started is running."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9`` the process we started: nothing is saved on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, *, persistence: bool | None = None) -> RedisServer:
        """Kill it and start it again on the same port, optionally switching the AOF.

        With persistence the data written before the kill is loaded again; without, the
        server comes back empty (no streams, no groups, no scripts).
        """
        self.kill()
        if persistence is not None:
            self.persistence = persistence
        return self.start()

    def config_set(self, **settings: Any) -> None:
        """``CONFIG SET`` each ``name=value`` (underscores in names become dashes)."""
        with contextlib.closing(self.client()) as c:
            for name, value in settings.items():
                c.config_set(name.replace("_", "-"), value)

    def stop(self) -> None:
        """SIGTERM the process we started (SIGKILL if it does not exit in 10 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            text = (self.workdir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class RedisServers:
    """Own redis-servers of one test, each in its own directory; all stopped by ``stop_all``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[RedisServer] = []

    def start(self, *args: str, password: str | None = None,
              persistence: bool = False) -> RedisServer:
        """Start a new server (see :class:`RedisServer`) and return it once it answers."""
        server = RedisServer(self.workdir / f"redis-{len(self.servers)}", *args,
                             password=password, persistence=persistence)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        """Stop every server started here (and nothing else)."""
        for server in self.servers:
            server.stop()
