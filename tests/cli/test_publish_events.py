"""publish, events get / list, tail."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from support import wait_until

from chi_redis import Event, EventBus

from .conftest import Cli, Sh, publish_n

pytestmark = pytest.mark.redis  # every test runs against the real server


def test_publish_prints_the_stream_id_and_stores_the_event(cli: Cli, bus: EventBus) -> None:
    sid = cli("publish", "user", "user.created", '{"user_id": "u1"}', "--meta", "src=cli",
              "--meta", "region=eu").stdout.strip()
    entries = bus.client.xrange(bus.keys.stream("user"))
    assert [e[0].decode() for e in entries] == [sid]
    event = bus.store.load(entries[0][1][b"id"].decode())
    assert event is not None and event.data == {"user_id": "u1"}
    assert event.metadata == {"src": "cli", "region": "eu"}


def test_publish_with_an_idempotency_key_writes_once(cli: Cli, bus: EventBus) -> None:
    a = cli("publish", "order", "order.paid", "{}", "--idempotency-key", "k1").stdout
    b = cli("publish", "order", "order.paid", "{}", "--idempotency-key", "k1").stdout
    assert a == b
    assert bus.client.xlen(bus.keys.stream("order")) == 1


def test_publish_reads_data_from_stdin_and_rejects_bad_json(cli: Cli, bus: EventBus) -> None:
    cli("publish", "user", "user.created", "-", input='{"x": [1, 2]}')
    assert bus.store.load_by_topic("user")[0].data == {"x": [1, 2]}
    # Bad values on the command line are usage errors (exit 2), and nothing is published.
    bad = cli("publish", "user", "user.created", "{nope", ok=False)
    assert bad.exit_code == 2 and "not valid JSON" in bad.stderr
    bad = cli("publish", "user", "user.created", "{}", "--meta", "novalue", ok=False)
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.stderr
    bad = cli("publish", "User Topic", "user.created", "{}", ok=False)
    assert bad.exit_code == 2 and "invalid topic" in bad.stderr
    bad = cli("publish", "user", ok=False)
    assert bad.exit_code == 2
    bad = cli("publish", "user", "user.created", ok=False)  # no data: refused, not null
    assert bad.exit_code == 2 and "DATA_JSON" in bad.stderr
    assert len(bus.store.load_by_topic("user")) == 1
    # An event without data when asked for: JSON null.
    sid = cli("publish", "user", "user.deleted", "null").stdout.strip()
    assert [e.data for e in bus.store.load_by_topic("user")] == [{"x": [1, 2]}, None]
    assert bus.client.xrange(bus.keys.stream("user"), sid, sid)


def test_events_get_prints_the_envelope(cli: Cli, bus: EventBus) -> None:
    event = Event(type="user.created", data={"n": 1}, metadata={"k": "v"})
    sid = bus.publish(event)
    got = json.loads(cli("--json", "events", "get", event.id).stdout)
    assert got["id"] == event.id and got["stream_id"] == sid and got["topic"] == "user"
    assert got["data"] == {"n": 1} and got["metadata"] == {"k": "v"}
    assert got["version"] == "1.0" and got["timestamp"].endswith("Z")
    text = cli("events", "get", event.id).stdout
    assert json.loads(text) == got  # text mode: the same envelope, indented
    missing = cli("events", "get", "no-such-event", ok=False)
    assert missing.exit_code == 1 and "no event" in missing.stderr


def test_events_list_filters_by_topic_type_range_limit_and_offset(
    cli: Cli, bus: EventBus
) -> None:
    ids = publish_n(bus, 10, "order.created")
    bus.publish_batch([Event(type="order.paid", data={}), Event(type="user.created", data={})])
    everything = cli.json_lines("events", "list", "--limit", "0")
    assert len(everything) == 12
    assert [e["stream_id"] for e in everything] == sorted(
        (e["stream_id"] for e in everything), key=lambda s: tuple(map(int, s.split("-"))))
    orders = cli.json_lines("events", "list", "--topic", "order", "--types", "order.created")
    assert [e["stream_id"] for e in orders] == ids
    page = cli.json_lines("events", "list", "--topic", "order", "--limit", "3", "--offset", "2")
    assert [e["data"]["i"] for e in page] == [2, 3, 4]
    ranged = cli.json_lines("events", "list", "--topic", "order", "--since", ids[3],
                            "--until", ids[5])
    assert [e["stream_id"] for e in ranged] == ids[3:6]
    text = cli("events", "list", "--topic", "user").stdout.splitlines()
    assert len(text) == 2 and "user.created" in text[1]
    # Text mode has a header naming the columns; --json has none.
    assert text[0].split() == ["STREAM", "ID", "TIME", "TOPIC", "TYPE", "EVENT", "ID"]
    row = text[1].split()
    assert row[2:4] == ["user", "user.created"] and len(row) == 5
    assert all(line.startswith("{") for line in cli("--json", "events", "list").stdout.split())
    empty = cli("events", "list", "--topic", "nothing-here")
    assert empty.stdout == "" and "no events in this range" in empty.stderr


def test_events_get_takes_the_stream_id_publish_printed(cli: Cli, bus: EventBus) -> None:
    sid = cli("publish", "user", "user.created", '{"n": 1}').stdout.strip()
    got = json.loads(cli("--json", "events", "get", sid).stdout)
    assert got["stream_id"] == sid and got["data"] == {"n": 1}
    assert json.loads(cli("--json", "events", "get", got["id"]).stdout) == got
    # A stream id is unique within a topic only: in two topics, --topic chooses.
    client = bus.client
    client.xadd(bus.keys.stream("order"), {"id": "x", "type": "order.x"}, id=sid)
    client.sadd(bus.keys.topics(), "order")
    both = cli("events", "get", sid, ok=False)
    assert both.exit_code == 2 and "order, user" in both.stderr and "--topic" in both.stderr
    assert json.loads(cli("--json", "events", "get", sid, "--topic", "user").stdout) == got
    nowhere = cli("events", "get", "1-1", ok=False)
    assert nowhere.exit_code == 1 and "no event '1-1'" in nowhere.stderr


def test_events_list_by_event_time_uses_the_time_index(cli: Cli, bus: EventBus) -> None:
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    # Published now, but back-dated: only the event time puts them in the range.
    bus.publish_batch([
        Event(type="order.created", data={"i": i}, timestamp=base + timedelta(minutes=i))
        for i in range(10)
    ])
    got = cli.json_lines("events", "list", "--by", "event-time", "--since",
                         "2024-05-01T12:03:00Z", "--until", "2024-05-01T12:05:00")
    assert [e["data"]["i"] for e in got] == [3, 4, 5]
    assert cli.json_lines("events", "list", "--since", "2024-05-01T12:03:00Z",
                          "--until", "2024-05-01T12:05:00") == []  # appended today


def test_tail_from_a_position_stops_after_count(cli: Cli, bus: EventBus) -> None:
    ids = publish_n(bus, 5)
    lines = cli.json_lines("tail", "order", "--from", ids[1], "--count", "3")
    assert [e["stream_id"] for e in lines] == ids[1:4]


def test_tail_follows_new_events_of_several_topics_with_a_type_filter(
    cli: Cli, bus: EventBus
) -> None:
    publish_n(bus, 3)  # older: not shown

    def later() -> None:
        # Publish once tail is blocked in XREAD (its start position is fixed by then).
        wait_until(lambda: any(c.get("cmd") == "xread" and "b" in c.get("flags", "")
                               for c in bus.client.client_list()), message="tail to block")
        bus.publish(Event(type="user.deleted", data={}))
        bus.publish(Event(type="user.created", data={"u": 1}))
        bus.publish(Event(type="order.created", data={"i": 99}))

    t = threading.Thread(target=later)
    t.start()
    lines = cli.json_lines("tail", "user", "order", "--types", "*.created", "--count", "2")
    t.join()
    # Across topics, entries of the same millisecond have no defined order.
    assert sorted((e["type"], e["data"]) for e in lines) == [
        ("order.created", {"i": 99}), ("user.created", {"u": 1})]


def test_publish_list_and_tail_as_subprocesses(sh: Sh, bus: EventBus) -> None:
    proc = sh("publish", "user", "user.created", '{"a": 1}')
    assert proc.returncode == 0, proc.stderr
    sid = proc.stdout.strip()
    listed = sh("--json", "events", "list", "--topic", "user")
    assert listed.returncode == 0 and json.loads(listed.stdout)["stream_id"] == sid
    tailed = sh("tail", "user", "--from", sid, "--count", "1")
    assert tailed.returncode == 0 and json.loads(tailed.stdout)["data"] == {"a": 1}
