"""worker: runs `python -m dramatiq chi_redis.worker MODULES...` with the same settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from support import REDIS_URL, wait_until
from support.processes import ROOT, clean_env

from chi_redis import Event, EventBus
from chi_redis.cli import worker as cli_module
from chi_redis.cli.main import cli as chi_cli

from .conftest import CHI


def test_worker_execs_dramatiq_with_the_resolved_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = []
    monkeypatch.setattr(cli_module, "execute", lambda argv, env: calls.append((argv, env)))
    config = tmp_path / "c.yaml"
    config.write_text("namespace: fromfile\n")
    result = CliRunner().invoke(
        chi_cli, ["--config", str(config), "worker", "--redis-url", "redis://h:1/2",
                  "handlers.worker", "more.handlers", "--processes", "2", "--threads", "3"],
        env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None},
    )
    assert result.exit_code == 0, result.output
    [(argv, env)] = calls
    assert argv == [sys.executable, "-m", "dramatiq", "chi_redis.worker", "handlers.worker",
                    "more.handlers", "--processes", "2", "--threads", "3"]
    assert env["CHI_REDIS_URL"] == "redis://h:1/2"
    assert env["CHI_NAMESPACE"] == "fromfile"
    assert env["CHI_CONFIG"] == str(config)


def test_worker_needs_modules() -> None:
    assert CliRunner().invoke(chi_cli, ["worker"]).exit_code == 2


@pytest.mark.redis
def test_worker_subprocess_handles_published_events(
    bus: EventBus, client: redis.Redis, ns: str
) -> None:
    env = clean_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
                    CHI_BLOCK_MS="200", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(CHI), "--redis-url", REDIS_URL, "--namespace", ns, "worker", "cli_worker_app",
         "--processes", "1", "--threads", "2"],
        cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        event = Event(type="ping.sent", data={})
        bus.publish(event)
        wait_until(lambda: client.lrange(f"{ns}:test:echo", 0, -1) == [event.id.encode()],
                   timeout=60, message="the worker to handle the event")
        assert client.hexists(bus.keys.subs(), "echo")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
