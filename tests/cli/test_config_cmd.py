"""``chi-redis config check|show`` and the defaults commands take from the config file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from support.processes import ROOT, clean_env

from chi_redis.cli.main import cli as chi_cli

CHI = Path(sys.executable).parent / "chi-redis"

CLEAN = {"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None,
         "CHI_REDIS_PASSWORD": None}


def run(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    result = CliRunner(env={**CLEAN, **(env or {})}).invoke(chi_cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


GOOD = """\
events:
  namespace: shop
  bus:
    redis: {address: "cache:6380", password: "hunter2"}
  monitoring: {tracing_enabled: true}
  routing:
    rules:
      - {handler: log_handler, filter: {type: all}}
"""


def test_check_prints_a_one_line_summary_and_notices(tmp_path: Path) -> None:
    code, out, err = run("config", "check", str(write(tmp_path, GOOD)))
    assert code == 0, err
    assert out.count("\n") == 1
    assert "ok:" in out and "bus redis (redis://cache:6380/0)" in out
    assert "namespace shop" in out and "1 routing rule" in out
    assert "hunter2" not in out + err
    # Tracing is built (chi_redis.observe.tracing) and OpenTelemetry is installed in dev.
    assert "tracing" not in err


def test_check_fails_with_the_path_qualified_message(tmp_path: Path) -> None:
    code, _, err = run("config", "check",
                         str(write(tmp_path, "events:\n  bus:\n    redis:\n      adress: x\n")))
    assert code == 1
    assert "unknown field `adress` - at `$.events.bus.redis`" in err
    assert err.count("\n") == 1


def test_check_names_a_file_in_the_earlier_layout(tmp_path: Path) -> None:
    code, _, err = run("config", "check", str(write(tmp_path, "namespace: old\n")))
    assert code == 0
    assert "layout without `events:`" in err


def test_check_as_a_real_subprocess_exits_0_and_1(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    ok = subprocess.run([str(CHI), "config", "check", str(good)], capture_output=True,
                        text=True, env=clean_env(), cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"ok: {good}:")
    bad = tmp_path / "bad.yaml"
    bad.write_text("events:\n  store:\n    type: file\n")
    no = subprocess.run([str(CHI), "config", "check", str(bad)], capture_output=True,
                        text=True, env=clean_env(), cwd=ROOT, timeout=60)
    assert no.returncode == 1
    assert "needs `directory`" in no.stderr and "at `$.events.store.file.directory`" in no.stderr
    assert "Traceback" not in no.stderr


def test_show_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    file = write(tmp_path, GOOD + "  store:\n    database: {dsn: 'postgres://u:dbpw@h/e'}\n")
    code, out, err = run("--config", str(file), "config", "show")
    assert code == 0, err
    assert "hunter2" not in out and "dbpw" not in out
    assert "password: '***'" in out
    code, out, _ = run("config", "show", "--json", "--config", str(file),
                       env={"CHI_REDIS_PASSWORD": "fromenv", "CHI_LEASE_MS": "1234"})
    data = json.loads(out)["events"]
    assert "fromenv" not in out and data["bus"]["redis"]["password"] == "***"
    assert data["worker"]["lease_ms"] == 1234
    assert data["store"]["database"]["dsn"] == "postgres://u:***@h/e"


def test_show_applies_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    file = write(tmp_path, "events:\n  namespace: fromfile\n  worker: {max_deliveries: 9}\n")

    def shown(*args: str, env: dict[str, str | None] | None = None) -> dict:  # type: ignore[type-arg]
        code, out, err = run(*args, "config", "show", "--json", env=env)
        assert code == 0, err
        return json.loads(out)["events"]  # type: ignore[no-any-return]

    assert shown()["namespace"] == "chi"  # default
    assert shown("--config", str(file))["namespace"] == "fromfile"
    env = {"CHI_NAMESPACE": "fromenv", "CHI_REDIS_URL": "redis://:envpw@envhost:1/0"}
    data = shown("--config", str(file), env=env)
    assert (data["namespace"], data["worker"]["max_deliveries"]) == ("fromenv", 9)
    assert data["bus"]["redis"]["url"] == "redis://:***@envhost:1/0"
    data = shown("--config", str(file), "--namespace", "fromflag",
                 "--redis-url", "redis://flaghost:2/0", env=env)
    assert data["namespace"] == "fromflag"
    assert data["bus"]["redis"]["url"] == "redis://flaghost:2/0"


def test_worker_threads_default_from_bus_worker_count(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from chi_redis.cli import worker as worker_cmd

    seen: list[list[str]] = []
    monkeypatch.setattr(worker_cmd, "execute", lambda argv, env: seen.append(argv))
    file = write(tmp_path, "events:\n  bus:\n    worker_count: 3\n")
    assert run("--config", str(file), "worker", "handlers.worker")[0] == 0
    assert seen[-1][-2:] == ["--threads", "3"]
    assert run("--config", str(file), "worker", "handlers.worker", "--threads", "5")[0] == 0
    assert seen[-1][-2:] == ["--threads", "5"]  # the flag wins
    assert run("worker", "handlers.worker")[0] == 0
    assert "--threads" not in seen[-1]  # no config: Dramatiq's own default


def test_replay_refuses_when_the_config_disables_it(tmp_path: Path) -> None:
    file = write(tmp_path, "events:\n  replay: {enabled: false}\n")
    code, _, err = run("--config", str(file), "replay", "--topic", "user", "--dry-run")
    assert code == 1
    assert "replay is disabled in the config (events.replay.enabled: false)" in err


def test_a_memory_bus_is_refused_until_the_embedded_bus_exists(tmp_path: Path) -> None:
    from chi_redis.publish.bus import EventBus

    if getattr(EventBus, "embedded", None) is not None:  # pragma: no cover - once merged
        return
    file = write(tmp_path, "events:\n  bus: {type: memory}\n")
    code, _, err = run("--config", str(file), "events", "list", "--topic", "user")
    assert code == 1
    assert "bus.type: memory needs the embedded bus" in err
