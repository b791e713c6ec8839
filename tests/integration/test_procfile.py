"""The Procfile and docker-compose.yml name commands that exist and are well formed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml
from support.processes import clean_env

from chi_redis import Event, EventBus

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_procfile_lines_run_real_commands() -> None:
    lines = _procfile()
    assert set(lines) == {"worker", "retention", "outbox", "metrics", "console"}
    # one exporter per deployment (the stream gauges are not multiplied by the workers)
    assert lines["metrics"].split()[0] == "chi-redis"
    assert lines["metrics"].endswith("metrics --port 9180")
    # The relay's database: $CHI_DATABASE_URL, else the development server (never exits 1).
    assert lines["outbox"].split()[:3] == ["chi-redis", "outbox", "relay"]
    assert "CHI_DATABASE_URL" in lines["outbox"]
    assert lines["worker"].split()[:3] == ["dramatiq", "chi_redis.worker", "handlers.worker"]
    honcho = shutil.which("honcho", path=str(BIN)) or shutil.which("honcho")
    assert honcho, "honcho is a dev dependency"
    check = subprocess.run([honcho, "check"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr
    # each program answers --help (the retention job is a real chi-redis subcommand)
    for cmd in (["dramatiq", "--help"], ["chi-redis", "retention", "run", "--help"],
                ["chi-redis", "outbox", "relay", "--help"], ["chi-redis", "metrics", "--help"],
                ["chi-redis", "console", "--help"]):
        exe = shutil.which(cmd[0], path=str(BIN)) or cmd[0]
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr


def test_compose_file_runs_the_same_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["worker"]["command"][:3] == ["dramatiq", "chi_redis.worker", "handlers.worker"]
    assert services["retention"]["command"] == ["chi-redis", "retention", "run"]
    assert services["console"]["command"][:2] == ["chi-redis", "console"]
    # Beyond loopback (in the container) only with its token, published on loopback only.
    assert "CHI_CONSOLE_TOKEN" in services["console"]["environment"]
    assert all(p.startswith("127.0.0.1:") for p in services["console"]["ports"])
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and "noeviction" in redis_cmd


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in lines if line)}


@pytest.mark.redis
def test_the_retention_line_trims_without_any_configuration(
    real_client: redis.Redis, ns: str
) -> None:
    """Run as honcho runs it (a shell, no CHI_CONFIG): the line names config/dev.yaml, whose
    default policy (7 days) trims; it never says "no retention policy configured"."""
    bus = EventBus(real_client, namespace=ns)
    stream = bus.keys.stream("order")
    old_ms = int(time.time() * 1000) - 10 * 86_400_000
    for i in range(3):
        real_client.xadd(stream, {"id": f"old-{i}", "type": "order.created"},
                         id=f"{old_ms}-{i}")
    real_client.sadd(bus.keys.topics(), "order")
    fresh = bus.publish(Event(type="order.created", data={"i": 1}))
    env = clean_env(PATH=f"{BIN}:{os.environ['PATH']}")
    # --once and the test's namespace go after the line, exactly as options on the command.
    line = f"{_procfile()['retention']} --once --namespace {ns}"
    proc = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no retention policy" not in proc.stderr
    assert [sid.decode() for sid, _ in real_client.xrange(stream)] == [fresh]
    assert "trimmed 3" in proc.stdout or '"trimmed":3' in proc.stdout, proc.stdout
    # CHI_CONFIG still chooses another file.
    other = subprocess.run(line, shell=True, cwd=ROOT, capture_output=True, text=True,
                           env={**env, "CHI_CONFIG": "/nonexistent/chi.yaml"}, timeout=60)
    assert other.returncode == 1 and "/nonexistent/chi.yaml" in other.stderr


@pytest.mark.redis
def test_the_metrics_line_serves_the_gauges(real_client: redis.Redis, ns: str) -> None:
    """Run as honcho runs it; a later --port wins over the line's (9180 may be taken here)."""
    from support import free_port, wait_until
    from support.exporter import answers, scrape

    EventBus(real_client, namespace=ns).publish(Event(type="order.created", data={}))
    port = free_port()
    line = f"exec {_procfile()['metrics']} --port {port} --namespace {ns}"
    proc = subprocess.Popen(line, shell=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=clean_env(PATH=f"{BIN}:{os.environ['PATH']}"))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.poll() is not None or answers(base + "/healthz"), 60,
                   "the metrics line serving")
        samples = scrape(base + "/metrics")
        assert samples[("chi_stream_length", (("topic", "order"),))] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


@pytest.mark.redis
def test_the_console_line_serves_the_overview(real_client: redis.Redis, ns: str) -> None:
    """Run as honcho runs it; a later --port wins over the line's (9181 may be taken here)."""
    import urllib.request

    from support import free_port, wait_until
    from support.exporter import answers

    EventBus(real_client, namespace=ns).publish(Event(type="order.created", data={}))
    port = free_port()
    line = f"exec {_procfile()['console']} --port {port} --namespace {ns}"
    proc = subprocess.Popen(line, shell=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=clean_env(PATH=f"{BIN}:{os.environ['PATH']}"))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.poll() is not None or answers(base + "/login"), 60,
                   "the console line serving")
        with urllib.request.urlopen(base + "/", timeout=30) as page:
            body = page.read().decode()
        assert '<a href="/events?topic=order">order</a>' in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)
