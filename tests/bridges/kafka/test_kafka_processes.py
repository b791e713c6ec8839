"""The Kafka bus through the CLI: ``chi-redis publish`` / ``dlq list`` (CliRunner), and
``chi-redis worker`` as a real process that is killed mid-handler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.kafka import TansuBroker
from support.processes import clean_env
from support.waiting import wait_until

from chi_redis import Event
from chi_redis.bridges.kafka import KafkaEventBus
from chi_redis.cli.main import cli

from .conftest import SESSION_MS

pytestmark = pytest.mark.kafka

TESTS = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0


def kafka_config(tmp_path: Path, broker: TansuBroker, ns: str) -> Path:
    path = tmp_path / "events.yaml"
    path.write_text(
        "events:\n"
        f"  namespace: {ns}\n"
        "  bus:\n"
        "    type: kafka\n"
        "    kafka:\n"
        f"      brokers: ['{broker.address}']\n"
        f"      session_timeout_ms: {SESSION_MS}\n")
    return path


def test_cli_publish_dlq_list_and_refusals(kafka_broker: TansuBroker, kns: str,
                                           kbus: KafkaEventBus, tmp_path: Path) -> None:
    env = clean_env(CHI_CONFIG=str(kafka_config(tmp_path, kafka_broker, kns)))
    runner = CliRunner()
    out = runner.invoke(cli, ["publish", "parcel", "parcel.sent", '{"n": 1}', "--json"], env=env)
    assert out.exit_code == 0, out.output
    got: list[Event] = []
    kbus.subscribe("cli-recv", types=["parcel.sent"], start="earliest", max_retries=0)(
        lambda e: (got.append(e), 1 / 0))
    kbus.worker().start()
    wait_until(lambda: got, DEADLINE_S, "the published event")
    assert got[0].data == {"n": 1} and got[0].id in out.output
    listed = wait_until(
        lambda: (r := runner.invoke(cli, ["dlq", "list", "cli-recv"], env=env)).exit_code == 0
        and got[0].id in r.output and r, DEADLINE_S, "dlq list showing the dead letter")
    assert "retries_exhausted" in listed.output and "ZeroDivisionError" in listed.output
    refused = runner.invoke(cli, ["events", "list"], env=env)
    assert refused.exit_code == 1 and "is not supported on bus.type 'kafka'" in refused.output
    keyed = runner.invoke(cli, ["publish", "parcel", "parcel.sent", "1",
                                "--idempotency-key", "k"], env=env)
    assert keyed.exit_code == 1 and "cannot deduplicate" in keyed.output  # not ignored


def test_cli_tail_follows_new_events_of_the_given_types(
        kafka_broker: TansuBroker, kns: str, kbus: KafkaEventBus, tmp_path: Path) -> None:
    env = clean_env(CHI_CONFIG=str(kafka_config(tmp_path, kafka_broker, kns)))
    runner, result = CliRunner(), {}
    tail = threading.Thread(target=lambda: result.update(out=runner.invoke(
        cli, ["tail", "parcel", "--types", "parcel.sent", "--count", "2"], env=env)),
        daemon=True)
    tail.start()
    sent: list[str] = []

    def publish_until_tail_is_done() -> bool:  # the tail shows only what comes after it
        skipped, shown = Event(type="parcel.skipped", data=1), Event(type="parcel.sent", data=2)
        kbus.publish_batch([skipped, shown])
        sent.append(shown.id)
        return not tail.is_alive()

    wait_until(publish_until_tail_is_done, DEADLINE_S, "tail to print 2 events", interval=0.3)
    out = result["out"]
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert len(lines) == 2 and all(d["type"] == "parcel.sent" and d["id"] in sent
                                   and d["data"] == 2 for d in lines)
    refused = runner.invoke(cli, ["tail", "parcel", "--from", "2026-01-01T00:00:00Z"], env=env)
    assert refused.exit_code == 1 and "new events only" in refused.output


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = [str(Path(sys.executable).parent / "chi-redis"), "worker", "bridges.kafka.proc_handlers"]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_worker_killed_mid_handler_redelivers(kafka_broker: TansuBroker, kns: str,
                                              kbus: KafkaEventBus, tmp_path: Path) -> None:
    notes, gate, out = tmp_path / "notes", tmp_path / "gate", tmp_path / "worker.log"
    env = clean_env(CHI_CONFIG=str(kafka_config(tmp_path, kafka_broker, kns)),
                    KAFKA_TEST_LOG=str(notes), KAFKA_TEST_GATE=str(gate),
                    PYTHONPATH=str(TESTS), PYTHONUNBUFFERED="1")
    event = Event(type="job.run", data={"n": 1})
    kbus.publish(event)
    first = _worker(env, out)
    try:
        wait_until(lambda: notes.exists() and f"start {event.id}" in notes.read_text(),
                   DEADLINE_S, "the handler to start")
        os.kill(first.pid, signal.SIGKILL)  # mid-handler: its offset was never committed
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    gate.touch()
    second = _worker(env, out)
    try:
        wait_until(lambda: f"done {event.id}" in notes.read_text(), DEADLINE_S,
                   "the event redelivered to the restarted worker")
        assert notes.read_text().split("\n") == [
            f"start {event.id}", f"start {event.id}", f"done {event.id}", ""]
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            assert second.wait(30) == 0, out.read_text()
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(30)
