"""One module per command group, imported only when its command runs.

Which modules a command imports is checked in a fresh interpreter (this one has imported
every command long ago); the help listing is checked against the real commands.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest

from chi_redis.cli.main import COMMANDS, LazyGroup
from chi_redis.cli.main import cli as chi_cli

from .conftest import REDIS_URL, Sh, clean_env

EVERY_COMMAND = [
    "archive", "config", "console", "demo", "dlq", "doctor", "events", "health", "metrics",
    "migrate", "outbox", "publish", "replay", "retention", "stats", "store", "subscriptions",
    "tail", "worker",
]
COMMAND_MODULES = {
    "chi_redis.cli.archive", "chi_redis.cli.config", "chi_redis.cli.demo", "chi_redis.cli.dlq",
    "chi_redis.cli.doctor", "chi_redis.cli.events", "chi_redis.cli.outbox", "chi_redis.cli.replay",
    "chi_redis.cli.retention", "chi_redis.cli.stats", "chi_redis.cli.subscriptions",
    "chi_redis.cli.worker", "chi_redis.cli.health", "chi_redis.cli.metrics",
    "chi_redis.cli.console",
}


#: Packages no part of ``chi-redis stats`` uses: the worker's, the exporter's, the config
#: file formats', the databases', the embedded bus's.
STATS_NEVER = ("dramatiq", "prometheus_client", "yaml", "psycopg", "psycopg_pool",
               "fakeredis", "lupa", "uvloop")


def _packages(modules: set[str], names: tuple[str, ...]) -> set[str]:
    return {m.split(".")[0] for m in modules} & set(names)


def _modules_of_import(module: str) -> set[str]:
    """``sys.modules`` after ``import MODULE`` alone, in a fresh interpreter."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env=clean_env(), check=True,
    )
    return set(json.loads(done.stdout))


def _modules_after(*argv: str) -> dict[str, Any]:
    """Run ``chi-redis ARGV`` in a fresh interpreter: its exit code and ``sys.modules``."""
    code = textwrap.dedent("""
        import json, sys
        from chi_redis.cli.main import cli
        try:
            cli(sys.argv[1:], prog_name="chi-redis")
            code = 0
        except SystemExit as exc:
            code = exc.code
        print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
    """)
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120, env=clean_env(), check=False)
    got: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    got["stdout"] = done.stdout
    return got


def test_help_lists_every_command(sh: Sh) -> None:
    done = sh("--help", base=False)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed if line.strip()] == EVERY_COMMAND
    assert sorted(COMMANDS) == EVERY_COMMAND


def test_help_imports_no_command_module() -> None:
    got = _modules_after("--help")
    assert got["code"] == 0 and "Commands:" in got["stdout"]
    loaded = set(got["modules"])
    assert not loaded & COMMAND_MODULES
    assert not {m for m in loaded if m.split(".")[0] in ("dramatiq", "prometheus_client", "yaml")}
    assert "chi_redis.ops.replay" not in loaded and "chi_redis.ops.stats" not in loaded


@pytest.mark.redis
def test_a_command_imports_its_own_module_only(ns: str) -> None:
    got = _modules_after("stats", "--redis-url", REDIS_URL, "--namespace", ns)
    assert got["code"] == 0, got["stdout"]
    loaded = set(got["modules"])
    assert loaded & COMMAND_MODULES == {"chi_redis.cli.stats"}
    assert "chi_redis.ops.stats" in loaded and "chi_redis.ops.replay" not in loaded


@pytest.mark.redis
def test_stats_imports_only_what_it_uses(ns: str) -> None:
    got = _modules_after("stats", "--redis-url", REDIS_URL, "--namespace", ns)
    assert got["code"] == 0 and "SUBSCRIPTION" in got["stdout"], got["stdout"]
    loaded = set(got["modules"])
    assert not _packages(loaded, STATS_NEVER)
    # Of the runtime and observability modules, only what the bus itself is made of.
    used = {"chi_redis.runtime.subscriptions", "chi_redis.observe.logs",
            "chi_redis.observe.metrics", "chi_redis.observe.tracing"}
    assert {m for m in loaded if m.startswith(("chi_redis.runtime.", "chi_redis.observe."))} \
        <= used
    # redis-py 8 imports opentelemetry.sdk.metrics (and psutil under it) by itself whenever
    # the OpenTelemetry SDK is installed; stats (tracing off) must add nothing to that.
    by_redis = _modules_of_import("redis")
    otel = {m for m in loaded if m.split(".")[0] in ("opentelemetry", "psutil")}
    assert otel <= by_redis, sorted(otel - by_redis)


def test_the_module_check_sees_a_command_that_does_import_one(tmp_path: Path) -> None:
    # The check above looks at the right thing: reading a YAML file does import yaml.
    path = tmp_path / "chi.yaml"
    path.write_text("events:\n  namespace: lazy-check\n")
    got = _modules_after("config", "check", str(path))
    assert got["code"] == 0, got["stdout"]
    assert _packages(set(got["modules"]), STATS_NEVER) == {"yaml"}


@pytest.mark.parametrize("name", EVERY_COMMAND)
def test_each_entry_loads_the_command_of_that_name(name: str) -> None:
    cmd = chi_cli.get_command(click.Context(chi_cli), name)
    assert isinstance(cmd, click.Command) and cmd.name == name
    # The listed help is the command's own first paragraph, so the two cannot drift.
    assert cmd.help is not None and cmd.help.split("\n\n")[0] == COMMANDS[name][1]


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_the_listing_is_what_the_loaded_commands_would_show(width: int) -> None:
    ctx = click.Context(chi_cli, terminal_width=width, max_content_width=width)
    lazy, loaded = ctx.make_formatter(), ctx.make_formatter()
    chi_cli.format_commands(ctx, lazy)
    click.Group.format_commands(chi_cli, ctx, loaded)  # click's own: imports every command
    assert lazy.getvalue() == loaded.getvalue() and "replay" in lazy.getvalue()


def test_a_lazy_entry_that_is_not_a_command_is_refused() -> None:
    group = LazyGroup(lazy_subcommands={"bad": ("chi_redis.cli.main:COMMANDS", "Not one.")})
    with pytest.raises(TypeError, match="not a click command"):
        group.get_command(click.Context(group), "bad")
