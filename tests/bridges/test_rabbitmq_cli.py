"""``chi-redis publish | tail | dlq list/show/redrive/purge | stats`` on ``bus.type:
rabbitmq``, each run as a real ``chi-redis`` process configured by the CHI_* environment
only, against the real RabbitMQ and a real ``chi-redis worker`` process."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until
from support.processes import CHI, ROOT, TESTS, WorkerProcess, chi, clean_env, ok
from support.rabbitmq import RABBITMQ_URL, rabbitmq_bus, require_rabbitmq

pytestmark = pytest.mark.rabbitmq
DEADLINE_S = 60.0


@pytest.fixture
def env(request: pytest.FixtureRequest, ns: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """CHI_* settings of a RabbitMQ bus in this test's names (no config file); the queues
    of ``bridges.rabbit_app`` and the exchanges are deleted afterwards."""
    require_rabbitmq(request.node)
    env = clean_env(CHI_BUS_TYPE="rabbitmq", CHI_RABBITMQ_URL=RABBITMQ_URL,
                    CHI_RABBITMQ_EXCHANGE=f"{ns}.events", CHI_NAMESPACE=ns,
                    CHI_TEST_OUT=str(tmp_path / "handled.log"),
                    PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), PYTHONUNBUFFERED="1")
    with rabbitmq_bus(ns) as bus:  # deletes what the worker declares
        bus.subscribe("jobs", types=["job.*"], max_deliveries=5)(lambda e: None)
        bus.subscribe("rejects", types=["bad.*"], max_retries=0)(lambda e: None)
        yield env


def handled(env: dict[str, str]) -> list[list[str]]:
    path = Path(env["CHI_TEST_OUT"])
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def dead(env: dict[str, str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in ok(env, "dlq", "list", "rejects", "--json").splitlines()]


def stats(env: dict[str, str]) -> dict[str, dict[str, object]]:
    data = json.loads(ok(env, "stats", "--sub", "jobs", "--sub", "rejects", "--json"))
    assert data["bus"] == "rabbitmq" and data["topics"] == []
    return {s["name"]: s for s in data["subscriptions"]}


def test_publish_tail_dlq_and_stats_on_rabbitmq(env: dict[str, str], tmp_path: Path) -> None:
    worker = WorkerProcess("bridges.rabbit_app", env, tmp_path / "worker.log")
    worker.cmd = [str(CHI), "worker", "bridges.rabbit_app", "--threads", "2"]
    worker.start()
    try:
        wait_until(lambda: "consuming" in worker.output(), DEADLINE_S, "the worker")
        # tail: a queue of its own, from when it started, only the given types
        tail = subprocess.Popen([str(CHI), "tail", "job", "--types", "job.run", "--count", "1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sent: list[str] = []

        def publish_until_tail_is_done() -> bool:
            ok(env, "publish", "job", "job.other", '{"n": 0}')
            sent.append(ok(env, "publish", "job", "job.run", '{"n": 1}').strip())
            return tail.poll() is not None

        wait_until(publish_until_tail_is_done, DEADLINE_S, "tail to print an event", interval=0.1)
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        line = json.loads(out)
        assert (line["type"], line["topic"], line["data"]) == ("job.run", "job", {"n": 1})
        assert line["id"] in sent and line["stream_id"] == line["id"]  # no stream: the event id

        bad = [ok(env, "publish", "bad", "bad.input", json.dumps({"n": n})).strip()
               for n in (6, 7)]
        wait_until(lambda: len(dead(env)) == 2, DEADLINE_S, "two dead letters")
        wait_until(lambda: stats(env)["jobs"]["lag"] == 0, DEADLINE_S, "jobs to drain")
        st = stats(env)
        assert st["rejects"]["dead_letters"] == 2 and st["jobs"]["dead_letters"] == 0
        assert st["jobs"]["consumers"] == 2 and st["rejects"]["consumers"] == 2
        assert st["jobs"]["pending"] is None and st["jobs"]["delayed"] is None  # not over AMQP
        text = ok(env, "stats", "--sub", "rejects")
        assert text.splitlines()[0].split() == ["SUBSCRIPTION", "LAG", "PENDING", "CONS",
                                                "DELAYED", "DLQ", "TOPICS"]
        assert text.splitlines()[1].split()[:6] == ["rejects", "0", "-", "2", "-", "2"]

        shown = json.loads(ok(env, "dlq", "show", "rejects", bad[0], "--json"))
        assert (shown["reason"], shown["error_type"]) == ("retries_exhausted", "ValueError")
        assert shown["event"]["id"] == bad[0] and shown["event"]["data"] == {"n": 6}
        for args in (["show", "rejects", "no-such-id"],
                     ["redrive", "rejects", "--id", bad[0], "--id", "no-such-id"]):
            missing = chi(env, "dlq", *args)
            assert missing.returncode == 1 and "no dead letter 'no-such-id'" in missing.stderr
        assert len(dead(env)) == 2  # nothing moved

        # redrive one: handled again with a fresh budget, then (it fails again) dead again
        assert ok(env, "dlq", "redrive", "rejects", "--id", bad[1]).strip() == \
            "redriven 1 dead letter(s) of 'rejects'"
        wait_until(lambda: [h[1:] for h in handled(env)].count(["rejects", "7", "1"]) == 2,
                   DEADLINE_S, "the redriven event handled")
        wait_until(lambda: len(dead(env)) == 2, DEADLINE_S, "it dead-lettered again")

        # purge: asks first (no: nothing deleted), --before spares newer ones, --yes deletes
        refused = chi(env, "dlq", "purge", "rejects", stdin="n\n")
        assert refused.returncode == 1
        assert "Delete all dead letters of 'rejects' (2 in its queue)?" in refused.stderr
        assert len(dead(env)) == 2
        assert ok(env, "dlq", "purge", "rejects", "--before", "2000-01-01T00:00:00Z", "--yes"
                  ).strip() == "purged 0 dead letter(s) of 'rejects'"
        assert ok(env, "dlq", "purge", "rejects", "--yes").strip() == \
            "purged 2 dead letter(s) of 'rejects'"
        assert dead(env) == [] and stats(env)["rejects"]["dead_letters"] == 0
    finally:
        worker.stop()
    refusals = {
        ("stats",): "needs --sub NAME",
        ("stats", "--sub", "nosuch"): "unknown subscription 'nosuch' on the RabbitMQ bus",
        ("tail", "job", "--from", "2026-01-01T00:00:00Z"):
            "tail --from is not supported on bus.type 'rabbitmq'",
        ("dlq", "list", "rejects", "--after", "1-0"):
            "dlq list --after is not supported on bus.type 'rabbitmq'",
        ("events", "list"): "`chi-redis events list` is not supported on bus.type 'rabbitmq'",
        ("replay", "--topic", "job", "--to", "jobs"):
            "`chi-redis replay` is not supported on bus.type 'rabbitmq'",
        ("subscriptions", "rewind", "jobs", "--to", "2026-01-01T00:00:00Z", "--force"):
            "is not supported on bus.type 'rabbitmq'",
        ("publish", "job", "job.run", "{}", "--idempotency-key", "k"): "idempotency_key",
    }
    for args, message in refusals.items():
        out = chi(env, *args)
        assert out.returncode == 1 and message in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr  # one line, no traceback
