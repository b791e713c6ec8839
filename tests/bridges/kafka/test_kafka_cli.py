"""``chi-redis publish | tail | dlq list/show/redrive/purge | stats`` on ``bus.type: kafka``,
each run as a real ``chi-redis`` process (from a config file, and once from the CHI_*
environment only) against the tansu broker, with the bus's worker consuming in this
process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.kafka import TansuBroker
from support.processes import CHI, chi, clean_env, ok
from support.waiting import wait_until

from chi_redis import Event
from chi_redis.bridges.kafka import KafkaEventBus

from .conftest import SESSION_MS

pytestmark = pytest.mark.kafka
DEADLINE_S = 60.0


def dead(env: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ok(env, "dlq", "list", "fails", "--json").splitlines()]


def stats(env: dict[str, str]) -> dict[str, Any]:
    data = json.loads(ok(env, "stats", "--json"))
    assert data["bus"] == "kafka"
    return data


@pytest.fixture
def env(tmp_path: Path, kafka_broker: TansuBroker, kns: str) -> dict[str, str]:
    """A config file naming the Kafka bus: one partition per topic (one order to reason
    about), the test session timeout."""
    path = tmp_path / "events.yaml"
    path.write_text(f"events:\n  namespace: {kns}\n  bus:\n    type: kafka\n    kafka:\n"
                    f"      brokers: ['{kafka_broker.address}']\n      partitions: 1\n"
                    f"      session_timeout_ms: {SESSION_MS}\n")
    return clean_env(CHI_CONFIG=str(path))


def test_publish_dlq_and_stats_on_kafka(env: dict[str, str], kbus: KafkaEventBus) -> None:
    kbus.partitions = 1
    tries: list[tuple[str, int]] = []
    seen: list[str] = []

    def fails(event: Event) -> None:
        tries.append((event.id, event.data["n"]))
        raise ValueError("refused by the handler")

    kbus.subscribe("fails", types=["parcel.*"], start="earliest", max_retries=0)(fails)
    kbus.subscribe("other", types=["parcel.*"], start="earliest")(lambda e: seen.append(e.id))
    worker = kbus.worker()
    worker.start()
    ids = [json.loads(ok(env, "publish", "parcel", "parcel.sent", json.dumps({"n": n}),
                         "--json"))["id"] for n in (1, 2)]
    wait_until(lambda: len(kbus.dead_letters("fails")) == 2 and len(seen) == 2, DEADLINE_S,
               "two dead letters")
    listed = dead(env)
    assert [d["event_id"] for d in listed] == ids
    assert {(d["reason"], d["error_type"]) for d in listed} == {("retries_exhausted", "ValueError")}
    text = ok(env, "dlq", "list", "fails")
    assert text.splitlines()[0].split()[:3] == ["DEAD-LETTER", "ID", "TYPE"] and ids[1] in text

    shown = json.loads(ok(env, "dlq", "show", "fails", ids[0], "--json"))
    assert shown["id"] == listed[0]["id"] and shown["reason"] == "retries_exhausted"
    assert shown["event"]["id"] == ids[0] and shown["event"]["data"] == {"n": 1}
    assert shown["event"]["topic"] == "parcel"

    # redrive one: only "fails" runs it again (fresh budget: one more try); "other" does not
    assert ok(env, "dlq", "redrive", "fails", "--id", listed[1]["id"]).strip() == \
        "redriven 1 dead letter(s) of 'fails'"
    wait_until(lambda: tries.count((ids[1], 2)) == 2, DEADLINE_S, "the redriven record")
    sentinel = json.loads(ok(env, "publish", "parcel", "parcel.sent", '{"n": 3}', "--json"))
    wait_until(lambda: sentinel["id"] in seen, DEADLINE_S, "the sentinel after the redrive")
    assert seen == [*ids, sentinel["id"]]  # the redriven record was not for "other"
    wait_until(lambda: len(dead(env)) == 3, DEADLINE_S, "redriven record dead again, sentinel")
    assert [d["event_id"] for d in dead(env)].count(ids[1]) == 1  # the redriven one is gone

    refused = chi(env, "dlq", "purge", "fails", stdin="n\n")
    assert refused.returncode == 1 and "Purge the 3 dead letter(s) of 'fails'" in refused.stderr
    assert len(dead(env)) == 3
    assert ok(env, "dlq", "purge", "fails", "--before", "2000-01-01T00:00:00Z", "--yes"
              ).strip() == "purged 0 dead letter(s) of 'fails'"
    assert ok(env, "dlq", "purge", "fails", "--yes").strip() == "purged 3 dead letter(s) of 'fails'"
    assert dead(env) == []
    assert chi(env, "dlq", "list", "fails").stderr.strip() == "no dead letters in 'fails'"

    worker.stop(timeout_s=30)
    # nobody consumes these: lag 2.  One batch of two records: tansu's high watermark is
    # that batch's base offset + 1 (5), the end stats must find is 6
    kbus.publish_batch([Event(type="parcel.sent", topic="parcel", data={"n": n}) for n in (4, 5)])
    st = stats(env)
    assert [(t["topic"], t["length"], t["groups"]) for t in st["topics"]] == [("parcel", 6, 2)]
    subs = {s["name"]: s for s in st["subscriptions"]}
    assert sorted(subs) == ["fails", "other"]
    assert (subs["fails"]["lag"], subs["other"]["lag"]) == (2, 2)
    assert subs["fails"]["dead_letters"] == 0 and subs["other"]["dead_letters"] == 0
    assert subs["other"]["partitions"] == [
        {"topic": "parcel", "partition": 0, "committed": 4, "end": 6, "lag": 2}]
    assert subs["other"]["pending"] is None and subs["other"]["delayed"] is None
    text = ok(env, "stats", "--sub", "other")
    rows = [line.split() for line in text.splitlines() if line]
    assert rows[0] == ["TOPIC", "LENGTH"] and rows[1] == ["parcel", "6"]
    assert rows[3][:3] == ["other", "2", "-"] and rows[3][-1] == "parcel"


def test_tail_from_the_environment_and_what_kafka_refuses(
        kafka_broker: TansuBroker, kns: str, kbus: KafkaEventBus) -> None:
    env = clean_env(CHI_BUS_TYPE="kafka", CHI_KAFKA_BROKERS=f"{kafka_broker.address}",
                    CHI_NAMESPACE=kns)
    tail = subprocess.Popen([str(CHI), "tail", "parcel", "--types", "parcel.sent", "--count",
                             "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    sent: list[str] = []

    def publish_until_tail_is_done() -> bool:  # the tail shows only what comes after it
        ok(env, "publish", "parcel", "parcel.skipped", "0")
        sent.append(ok(env, "publish", "parcel", "parcel.sent", "2", "--json"))
        return tail.poll() is not None

    try:
        wait_until(publish_until_tail_is_done, DEADLINE_S, "tail to print an event",
                   interval=0.1)
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate(timeout=30)
    assert tail.returncode == 0, err
    line = json.loads(out)
    assert line["type"] == "parcel.sent" and line["data"] == 2
    assert line["id"] in {json.loads(s)["id"] for s in sent}
    assert line["stream_id"] in {json.loads(s)["stream_id"] for s in sent}  # PARTITION:OFFSET
    refusals = {
        ("tail", "parcel", "--from", "2026-01-01T00:00:00Z"):
            "tail --from is not supported on bus.type 'kafka'",
        ("dlq", "list", "s", "--after", "0:1"):
            "dlq list --after is not supported on bus.type 'kafka'",
        ("dlq", "show", "s", "0:0"): "no dead letter '0:0' in subscription 's' on the Kafka bus",
        ("dlq", "redrive", "s", "--id", "0:0"): "no dead letter '0:0' in subscription 's'",
        ("events", "list"): "`chi-redis events list` is not supported on bus.type 'kafka'",
        ("replay", "--topic", "parcel", "--to", "s"):
            "`chi-redis replay` is not supported on bus.type 'kafka'",
        ("subscriptions", "rewind", "s", "--to", "2026-01-01T00:00:00Z", "--force"):
            "is not supported on bus.type 'kafka'",
        ("publish", "parcel", "parcel.sent", "1", "--idempotency-key", "k"): "cannot deduplicate",
    }
    for args, message in refusals.items():
        result = chi(env, *args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
