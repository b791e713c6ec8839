"""What every command shares: option sources, exit codes, one-line errors, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from support import REDIS_URL, free_port
from support.processes import clean_env

from chi_redis import EventBus
from chi_redis.cli.main import cli as chi_cli

from .conftest import Cli, Sh

CANARY = "canary-7f3a9c1e"


def _dead_url() -> str:
    return f"redis://chi-admin:{CANARY}@127.0.0.1:{free_port()}/0"


def test_unknown_option_is_a_usage_error_with_exit_code_2() -> None:
    result = CliRunner().invoke(chi_cli, ["events", "list", "--bogus"])
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_replay_without_a_target_is_a_usage_error() -> None:
    result = CliRunner().invoke(chi_cli, ["replay", "--topic", "order"])
    assert result.exit_code == 2
    assert "choose a target" in result.stderr


def test_bad_time_is_a_usage_error_with_one_error_line_and_no_traceback() -> None:
    result = CliRunner().invoke(chi_cli, ["events", "list", "--since", "last tuesday"])
    assert result.exit_code == 2  # the README: 2 for usage errors, and a bad value is one
    errors = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: invalid --since 'last tuesday'")
    assert "ISO 8601" in errors[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [
    ["events", "list", "--until", "soon"],
    ["tail", "user", "--from", "yesterday-ish"],
    ["replay", "--topic", "order", "--print", "--since", "whenever"],
    ["replay", "--topic", "order", "--print", "--rate", "fast"],
    ["events", "list", "--types", "user.*x"],
    ["events", "list", "--topic", "Bad Topic"],
    ["dlq", "list", "mail", "--after", "not-an-id"],
    ["dlq", "purge", "mail", "--before", "later"],
    ["subscriptions", "rewind", "audit", "--to", "whenever"],
    ["retention", "apply", "--max-age", "soonish"],
])
def test_every_bad_option_value_exits_2_before_redis_is_touched(args: list[str]) -> None:
    result = CliRunner().invoke(chi_cli, ["--redis-url", _dead_url(), *args])
    assert result.exit_code == 2, (args, result.output)
    assert "cannot reach Redis" not in result.stderr and CANARY not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["events", "list"], ["replay", "--print"]])
@pytest.mark.parametrize("by", ["append", "event-time"])
def test_a_reversed_range_is_a_usage_error(command: list[str], by: str) -> None:
    result = CliRunner().invoke(chi_cli, [
        "--redis-url", _dead_url(), *command, "--topic", "order", "--by", by,
        "--since", "2026-11-02", "--until", "2026-11-01",
    ])
    assert result.exit_code == 2, result.output
    assert "--since 2026-11-02 is after --until 2026-11-01" in result.stderr


def test_publish_without_data_is_refused() -> None:
    for args, stdin in (([], None), (["-"], ""), (["  "], None)):
        result = CliRunner().invoke(
            chi_cli, ["--redis-url", _dead_url(), "publish", "user", "user.created", *args],
            input=stdin,
        )
        assert result.exit_code == 2, (args, result.output)
        assert "give the event's data as DATA_JSON" in result.stderr
        assert "null for an event without data" in result.stderr


def test_wildcard_topic_is_rejected_before_redis_is_touched() -> None:
    result = CliRunner().invoke(
        chi_cli, ["--redis-url", _dead_url(), "replay", "--topic", "orders*", "--print"]
    )
    assert result.exit_code == 2  # a bad option value: a usage error
    assert "invalid topic" in result.stderr and CANARY not in result.output


def test_unreachable_redis_exits_1_in_one_line_without_the_password() -> None:
    for args in (["stats"], ["events", "list"], ["publish", "user", "user.created", "{}"],
                 ["doctor"], ["dlq", "list", "mail"], ["retention", "apply", "--max-len", "1"]):
        result = CliRunner().invoke(chi_cli, ["--redis-url", _dead_url(), *args])
        assert result.exit_code == 1, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "cannot reach Redis" in result.stderr
        # ... and how to point at another server.
        assert "use --redis-url URL or CHI_REDIS_URL" in result.stderr
        assert CANARY not in result.output and "Traceback" not in result.output


def test_password_from_environment_is_never_printed() -> None:
    result = CliRunner().invoke(chi_cli, ["stats"], env={"CHI_REDIS_URL": _dead_url()})
    assert result.exit_code == 1
    assert CANARY not in result.output
    assert "chi-admin:***@" in result.stderr or "127.0.0.1" in result.stderr


def test_unreachable_redis_as_a_subprocess(sh: Sh) -> None:
    proc = sh("--redis-url", _dead_url(), "stats", base=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert CANARY not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.redis
def test_options_on_the_command_win_over_the_group(cli: Cli, bus: EventBus, ns: str) -> None:
    # The group names another namespace; the command's --namespace wins.
    cli("--namespace", "elsewhere", "publish", "--namespace", ns, "user", "user.created",
        "{}", base=False, env={"CHI_REDIS_URL": REDIS_URL})
    assert bus.client.xlen(bus.keys.stream("user")) == 1
    # --json works on the group and on the command.
    out1 = cli("--json", "publish", "user", "user.created", "{}").stdout
    out2 = cli("publish", "--json", "user", "user.created", "{}").stdout
    assert json.loads(out1)["topic"] == json.loads(out2)["topic"] == "user"


@pytest.mark.redis
def test_url_precedence_flag_then_env_then_config(
    cli: Cli, bus: EventBus, ns: str, tmp_path: Path
) -> None:
    config = tmp_path / "chi.yaml"
    config.write_text(f"namespace: {ns}\nredis:\n  url: {REDIS_URL}\n")
    # Config file only.
    cli("--config", str(config), "publish", "user", "user.created", "{}", base=False)
    # The environment beats the config file (a dead URL there: the command fails).
    r = cli("--config", str(config), "stats", base=False, ok=False,
            env={"CHI_REDIS_URL": _dead_url()})
    assert r.exit_code == 1 and CANARY not in r.output
    # The flag beats both.
    cli("--config", str(config), "--redis-url", REDIS_URL, "publish", "user", "user.created",
        "{}", base=False, env={"CHI_REDIS_URL": _dead_url()})
    # CHI_CONFIG names the file when --config is absent.
    cli("publish", "user", "user.created", "{}", base=False,
        env={"CHI_CONFIG": str(config)})
    assert bus.client.xlen(bus.keys.stream("user")) == 3


def test_config_file_errors_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("redis:\n  urll: x\n")
    result = CliRunner().invoke(chi_cli, ["--config", str(bad), "stats"])
    assert result.exit_code == 1
    assert "unknown field" in result.stderr


def test_version_and_help() -> None:
    assert CliRunner().invoke(chi_cli, ["--version"]).exit_code == 0
    result = CliRunner().invoke(chi_cli, ["--help"])
    assert result.exit_code == 0
    for command in ("publish", "tail", "events", "replay", "dlq", "subscriptions", "stats",
                    "retention", "doctor", "worker"):
        assert command in result.stdout


@pytest.mark.redis
def test_every_command_accepts_the_shared_options(cli: Cli, client: redis.Redis) -> None:
    for args in (["stats"], ["events", "list"], ["subscriptions", "list"],
                 ["retention", "apply"], ["replay", "--dry-run"]):
        r = cli(*args[:-1], args[-1], "--redis-url", REDIS_URL, "--namespace", cli.ns, "--json",
                base=False)
        assert r.exit_code == 0
    assert clean_env()  # sanity: helper used by subprocess tests
