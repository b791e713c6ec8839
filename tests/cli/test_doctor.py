"""doctor: production checks against redis-servers this test starts with known settings."""

from __future__ import annotations

import json

import pytest
import redis
from support import RedisServer, RedisServers

from chi_redis.ops import doctor as health
from chi_redis.ops.doctor import check_server

from .conftest import Cli, Sh

SECRET = "canary-d0c7or"


pytestmark = pytest.mark.redis  # every test starts a redis-server of its own


@pytest.fixture
def good_redis(redis_servers: RedisServers) -> RedisServer:
    return redis_servers.start("--appendonly", "yes", "--maxmemory", "64mb",
                               "--maxmemory-policy", "noeviction", password=SECRET)


@pytest.fixture
def lax_redis(redis_servers: RedisServers) -> RedisServer:
    return redis_servers.start("--appendonly", "no", "--maxmemory-policy", "allkeys-lru")


def test_a_production_ready_server_passes(cli: Cli, good_redis: RedisServer) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{good_redis.port}/0"
    r = cli("--redis-url", url, "--json", "doctor", base=False)
    report = json.loads(r.stdout)
    assert report["ok"] is True
    levels = {f["check"]: f["level"] for f in report["findings"]}
    assert levels == {"version": "ok", "appendonly": "ok", "maxmemory-policy": "ok",
                      "maxmemory": "ok", "auth": "ok", "tls": "ok"}
    assert SECRET not in r.output
    assert "***" in report["server"]


def test_a_lax_server_fails_with_a_list_of_findings(cli: Cli, lax_redis: RedisServer) -> None:
    url = f"redis://127.0.0.1:{lax_redis.port}/0"
    r = cli("--redis-url", url, "doctor", base=False, ok=False)
    assert r.exit_code == 1
    assert "FAIL  appendonly" in r.stdout
    assert "FAIL  maxmemory-policy: maxmemory-policy is allkeys-lru" in r.stdout
    assert "FAIL  auth: the default user needs no password" in r.stdout
    assert "WARN  maxmemory" in r.stdout
    assert "3 problem(s) found" in r.stderr


def test_config_get_forbidden_is_reported_and_info_used_instead(
    cli: Cli, good_redis: RedisServer
) -> None:
    admin = redis.Redis(port=good_redis.port, password=SECRET)
    admin.acl_setuser("ops", enabled=True, passwords=[f"+{SECRET}"], keys=["*"],
                      commands=["+@all", "-config"])
    admin.close()
    url = f"redis://ops:{SECRET}@127.0.0.1:{good_redis.port}/0"
    report = json.loads(cli("--redis-url", url, "--json", "doctor", base=False).stdout)
    by_check = {f["check"]: f for f in report["findings"]}
    assert by_check["config"]["level"] == "info"
    assert "CONFIG GET is not allowed" in by_check["config"]["message"]
    assert by_check["appendonly"]["level"] == "ok"
    assert by_check["maxmemory-policy"]["level"] == "ok"
    assert report["ok"] is True


def test_plain_connection_to_a_remote_host_is_a_finding(
    good_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "_open_default_user", lambda url: False)
    client = redis.Redis(port=good_redis.port, password=SECRET)
    try:
        remote = {f.check: f for f in check_server(client, "redis://:x@10.1.2.3:6379/0")}
        tls = {f.check: f for f in check_server(client, "rediss://:x@10.1.2.3:6379/0")}
    finally:
        client.close()
    assert remote["tls"].level == "fail" and "10.1.2.3" in remote["tls"].message
    assert tls["tls"].level == "ok"


def test_doctor_as_a_subprocess(sh: Sh, good_redis: RedisServer) -> None:
    proc = sh("--redis-url", f"redis://:{SECRET}@127.0.0.1:{good_redis.port}/0", "doctor",
              base=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK    appendonly" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
