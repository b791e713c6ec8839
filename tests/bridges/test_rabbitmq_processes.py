"""The RabbitMQ bus with real worker processes: ``chi-redis worker`` on ``bus.type:
rabbitmq``, a ``kill -9`` mid-handler, and the CLI (``publish``, ``dlq``, and the commands
that stay on Redis) through CliRunner and once as a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from support import wait_until
from support.processes import ROOT, TESTS, WorkerProcess, clean_env
from support.rabbitmq import RABBITMQ_URL, rabbitmq_bus, require_rabbitmq

from chi_redis.bridges.rabbitmq import RabbitMQEventBus
from chi_redis.cli.main import cli as chi_cli

pytestmark = pytest.mark.rabbitmq
CHI = Path(sys.executable).parent / "chi-redis"
DEADLINE_S = 30.0


@pytest.fixture
def app(request: pytest.FixtureRequest, ns: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of ``chi-redis`` on this test's RabbitMQ names; deletes the queues
    of ``bridges.rabbit_app`` and the exchanges afterwards."""
    require_rabbitmq(request.node)
    config = tmp_path / "chi.yaml"
    config.write_text(yaml.safe_dump({"events": {"namespace": ns, "bus": {
        "type": "rabbitmq", "rabbitmq": {"url": RABBITMQ_URL, "exchange": f"{ns}.events"}}}}))
    env = clean_env(CHI_CONFIG=str(config), CHI_TEST_OUT=str(tmp_path / "handled.log"),
                    PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), PYTHONUNBUFFERED="1")
    with rabbitmq_bus(ns) as bus:
        _mirror(bus)
        yield env


def _mirror(bus: RabbitMQEventBus) -> None:
    """The subscriptions of bridges.rabbit_app, so that the fixture deletes their queues."""
    bus.subscribe("jobs", types=["job.*"], max_deliveries=5)(lambda e: None)
    bus.subscribe("rejects", types=["bad.*"], max_retries=0)(lambda e: None)


def worker(env: dict[str, str], tmp_path: Path, name: str) -> WorkerProcess:
    """``chi-redis worker bridges.rabbit_app`` (it execs chi_redis.bridges.run)."""
    proc = WorkerProcess("bridges.rabbit_app", env, tmp_path / f"{name}.log")
    proc.cmd = [str(CHI), "worker", "bridges.rabbit_app", "--threads", "2"]
    return proc


def handled(env: dict[str, str]) -> list[list[str]]:
    try:
        text = Path(env["CHI_TEST_OUT"]).read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.splitlines()]


def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner(env=env).invoke(chi_cli, list(args))
    return result.exit_code, result.output


def test_killed_worker_mid_handler_its_event_is_delivered_again(
    app: dict[str, str], tmp_path: Path
) -> None:
    first = worker(app, tmp_path, "first").start()
    try:
        wait_until(lambda: "consuming" in first.output(), DEADLINE_S, "the first worker")
        code, out = run_cli(app, "publish", "job", "job.run", '{"n": 1, "block": true}')
        assert code == 0, out
        wait_until(lambda: handled(app), DEADLINE_S, "the first delivery")
        os.kill(first.pid, signal.SIGKILL)  # our own child, mid-handler
        first.proc.wait(timeout=10)  # type: ignore[union-attr]
    finally:
        first.stop()
    second = worker(app, tmp_path, "second").start()
    try:
        wait_until(lambda: len(handled(app)) == 2, DEADLINE_S, "the redelivery")
        (pid1, _, n1, attempt1), (pid2, _, n2, attempt2) = handled(app)
        # At least the 2nd delivery: when the killed worker's other consumer thread is
        # offered the returned message before RabbitMQ has seen that thread die too, that
        # delivery counts (x-delivery-count) as well.
        assert (n1, attempt1, n2) == ("1", "1", "1") and int(attempt2) >= 2
        assert pid1 == str(first.pid) and pid2 == str(second.pid)
    finally:
        second.stop()
    assert second.proc is not None and second.proc.returncode == 0, second.output()


def test_cli_publish_dlq_and_redis_only_commands_on_a_rabbitmq_bus(
    app: dict[str, str], tmp_path: Path
) -> None:
    proc = worker(app, tmp_path, "worker").start()
    try:
        wait_until(lambda: "consuming" in proc.output(), DEADLINE_S, "the worker")
        # once for real, as a subprocess
        out = subprocess.run([str(CHI), "publish", "job", "job.run", '{"n": 5}'], env=app,
                             capture_output=True, text=True, timeout=60, check=True)
        event_id = out.stdout.strip()
        code, text = run_cli(app, "publish", "bad", "bad.input", '{"n": 6}')
        assert code == 0, text
        bad_id = text.strip()
        wait_until(lambda: len(handled(app)) == 2, DEADLINE_S, "both events")
        assert sorted(line[1:3] for line in handled(app)) == [["jobs", "5"], ["rejects", "6"]]
        wait_until(lambda: bad_id in run_cli(app, "dlq", "list", "rejects")[1], DEADLINE_S,
                   "the dead letter")
        code, text = run_cli(app, "--json", "dlq", "list", "rejects")
        assert code == 0 and '"reason":"retries_exhausted"' in text, text
        assert '"error":"refused by the handler"' in text
        assert event_id not in text
        code, text = run_cli(app, "dlq", "redrive", "rejects", "--all")
        assert (code, text.strip()) == (0, "redriven 1 dead letter(s) of 'rejects'")
        wait_until(lambda: len(handled(app)) == 3, DEADLINE_S, "the redriven event")
        assert handled(app)[-1][1:] == ["rejects", "6", "1"]  # a fresh retry budget
    finally:
        proc.stop()
    for args in (["replay", "--topic", "job", "--to", "jobs"], ["events", "list", "--topic", "job"],
                 ["publish", "job", "job.run", "{}", "--idempotency-key", "k"]):
        code, text = run_cli(app, *args)
        assert code == 1 and "not supported" in text, (args, code, text)
