"""The Procfile and docker-compose.yml name commands that exist and are well formed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_procfile_lines_run_real_commands() -> None:
    lines = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    assert set(lines) == {"worker", "retention", "outbox"}
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
                ["chi-redis", "outbox", "relay", "--help"]):
        exe = shutil.which(cmd[0], path=str(BIN)) or cmd[0]
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr


def test_compose_file_runs_the_same_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["worker"]["command"][:3] == ["dramatiq", "chi_redis.worker", "handlers.worker"]
    assert services["retention"]["command"] == ["chi-redis", "retention", "run"]
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and "noeviction" in redis_cmd
