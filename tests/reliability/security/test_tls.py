"""TLS (``rediss://``) with certificate verification, against a redis-server that speaks TLS
only, with a certificate for ``localhost`` signed by a CA this module makes with openssl.

- the right CA (``?ssl_ca_certs=`` in the URL; ``CHI_REDIS_TLS_CA_FILE`` for the worker
  process and the CLI) works end to end: publish, a worker process consumes, the CLI reads;
- a wrong CA, a host name the certificate is not for, and a plain ``redis://`` to the TLS
  port each give one clear line (RedisTLSError / RedisUnavailableError; the CLI exits 1
  with no traceback); TLS failures are not retried;
- verification is on by default; turning it off is explicit and logs a WARNING.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from support import wait_until
from support.processes import WorkerProcess, clean_env, wait_ready, worker_env
from support.servers import RedisServer
from support.skips import skip_or_fail

from chi_redis import Event, EventBus, RedisTLSError, RedisUnavailableError
from chi_redis.backend.connection import connect
from chi_redis.cli.main import cli
from chi_redis.config import bus_from_config, load_config

pytestmark = pytest.mark.redis

CHI = str(Path(sys.executable).parent / "chi-redis")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ca.pem`` (signed the server's certificate, for ``localhost`` only) and
    ``other-ca.pem`` (a CA that signed nothing of this server)."""
    if shutil.which("openssl") is None:
        skip_or_fail("no openssl to make the test CA with")
    d = tmp_path_factory.mktemp("certs")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
             cwd=d)
    return d


class TLSRedisServer(RedisServer):
    """A redis-server that listens with TLS only (``--port 0 --tls-port``)."""

    def __init__(self, workdir: Path, certs: Path) -> None:
        super().__init__(workdir)
        self.certs = certs
        self.args = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(certs / "server.pem"),
                     "--tls-key-file", str(certs / "server.key"),
                     "--tls-ca-cert-file", str(certs / "ca.pem"), "--tls-auth-clients", "no"]

    def client(self, **kwargs: Any) -> redis.Redis:
        options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 2, **kwargs}
        return redis.Redis(host="localhost", port=self.port, ssl=True,
                           ssl_ca_certs=str(self.certs / "ca.pem"), **options)

    def tls_url(self, host: str = "localhost", ca: str = "ca") -> str:
        return f"rediss://{host}:{self.port}/0?ssl_ca_certs={self.certs / ca}.pem"


@pytest.fixture(scope="module")
def tls_server(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedisServer]:
    server = TLSRedisServer(tmp_path_factory.mktemp("tls-redis"), certs).start()
    try:
        yield server
    finally:
        server.stop()


def test_the_right_ca_works_end_to_end(tls_server: TLSRedisServer, certs: Path,
                                       tmp_path: Path, ns: str) -> None:
    env = worker_env(f"rediss://localhost:{tls_server.port}/0", ns,
                     CHI_REDIS_TLS_CA_FILE=str(certs / "ca.pem"))
    w = WorkerProcess("reliability.security.proc_tls", env, tmp_path / "worker.log", threads=1)
    bus = EventBus(connect(tls_server.tls_url()), namespace=ns)
    try:
        w.start()
        wait_ready(w)
        wait_until(lambda: bus.client.hlen(bus.keys.subs()) == 1, 60, "subscription registered")
        events = [Event(type="tls.sent", data={"n": i}) for i in range(3)]
        bus.publish(events[0])
        bus.publish_batch(events[1:])
        wait_until(lambda: bus.client.hlen(f"{ns}:t:done") == 3, 60, "consumed over TLS",
                   interval=0.1)
    finally:
        w.stop()
    assert "Traceback" not in w.output(), w.output()
    result = CliRunner().invoke(cli, ["events", "list", "--topic", "tls"], env={
        "CHI_REDIS_URL": f"rediss://localhost:{tls_server.port}/0", "CHI_NAMESPACE": ns,
        "CHI_REDIS_TLS_CA_FILE": str(certs / "ca.pem"), "CHI_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert all(e.id in result.output for e in events)


FAILURES = {
    # case: (URL, the error, what its one line says)
    "wrong-ca": ("rediss://localhost:{port}/0?ssl_ca_certs={certs}/other-ca.pem", RedisTLSError,
                 "cannot verify the server's certificate"),
    "no-ca": ("rediss://localhost:{port}/0", RedisTLSError,
              "cannot verify the server's certificate"),
    "host-name": ("rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs}/ca.pem", RedisTLSError,
                  "not valid for the host name"),
    "plaintext": ("redis://localhost:{port}/0", RedisUnavailableError,
                  "if the server speaks TLS only, use rediss://"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_tls_failures_are_one_clear_line(tls_server: TLSRedisServer, certs: Path, case: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    template, error, says = FAILURES[case]
    url = template.format(port=tls_server.port, certs=certs)
    caplog.set_level(logging.DEBUG)
    bus = EventBus(connect(url), namespace="tls")
    with pytest.raises(error) as raised:
        bus.publish(Event(type="tls.never", data={}))
    assert says in str(raised.value) and "\n" not in str(raised.value)
    retried = [r for r in caplog.records if "attempt" in r.getMessage()]
    assert (retried == []) == (error is RedisTLSError), "TLS failures are not retried"
    out = subprocess.run([CHI, "stats"], env=clean_env(CHI_REDIS_URL=url), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == "", out
    assert "Traceback" not in out.stderr and says in out.stderr
    assert out.stderr.startswith("Error: ") and out.stderr.count("\n") == 1, out.stderr


def test_turning_verification_off_is_explicit_and_warns(
    tls_server: TLSRedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING)
    url = f"rediss://localhost:{tls_server.port}/0"
    EventBus(connect(url + "?ssl_cert_reqs=none"), namespace="tls").client.ping()
    (record,) = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert record.levelno == logging.WARNING
    caplog.clear()
    config = tmp_path / "chi.yaml"
    config.write_text(f"events:\n  bus:\n    redis:\n      address: localhost:{tls_server.port}\n"
                      "      tls: true\n      tls_verify: false\n")
    assert bus_from_config(load_config(config)).client.ping()
    assert [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    caplog.clear()
    EventBus(connect(tls_server.tls_url()), namespace="tls").client.ping()  # verified: quiet
    assert not [r for r in caplog.records if "OFF" in r.getMessage()]
