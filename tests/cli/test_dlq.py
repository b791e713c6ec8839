"""dlq list / show / redrive / purge, and a poison event's round trip through the CLI."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import redis
from support import Runtime, wait_until

from chi_redis import Event, EventBus
from chi_redis.cli.dlq import ERROR_CHARS
from chi_redis.runtime.deadletters import dead_letter_fields, encode_body

from .conftest import Cli, Sh

pytestmark = pytest.mark.redis  # every test runs against the real server


def _dead_letter(client: redis.Redis, bus: EventBus, sub: str, i: int) -> str:
    """Write one dead letter of an event entry straight into the DLQ stream."""
    fields = {b"id": f"ev-{i}".encode(), b"type": b"user.created", b"ts": b"1700000000000000",
              b"ver": b"1.0", b"meta": b"{}", b"enc": b"js", b"data": b'{"i": %d}' % i}
    entry = dead_letter_fields(
        sub=sub, reason="retries_exhausted", exc=ValueError(f"boom {i}"), kind="event",
        body=encode_body(fields), event_id=f"ev-{i}", type_="user.created", topic="user",
        source_stream=bus.keys.stream("user"), source_id=f"1700000000000-{i}",
    )
    return client.xadd(bus.keys.dlq(sub), entry).decode()


def test_poison_event_is_dead_lettered_listed_redriven_and_handled_once(
    cli: Cli, bus: EventBus, client: redis.Redis, runtime: Runtime
) -> None:
    broken = threading.Event()
    broken.set()
    handled: list[str] = []

    @bus.subscribe("mailer", types=["user.created"], max_retries=0)
    def mailer(event: Event) -> None:
        if broken.is_set():
            raise RuntimeError("smtp refused: password=hunter2")
        handled.append(event.id)

    broker = runtime.broker()
    runtime.worker(broker)
    poison = Event(type="user.created", data={"user_id": "u1"})
    bus.publish(poison)
    wait_until(lambda: client.xlen(bus.keys.dlq("mailer")) == 1, message="the dead letter")

    [letter] = cli.json_lines("dlq", "list", "mailer")
    assert letter["event_id"] == poison.id and letter["type"] == "user.created"
    assert letter["error_type"] == "RuntimeError" and "hunter2" not in letter["error"]
    assert "traceback" not in letter and "body" not in letter
    assert poison.id in cli("dlq", "list", "mailer").stdout

    shown = json.loads(cli("--json", "dlq", "show", "mailer", letter["id"]).stdout)
    assert shown["event"]["data"] == {"user_id": "u1"} and shown["event"]["id"] == poison.id
    assert "RuntimeError" in shown["traceback"] and "hunter2" not in shown["traceback"]
    text = cli("dlq", "show", "mailer", letter["id"]).stdout
    assert "traceback:" in text and poison.id in text

    broken.clear()  # the handler is fixed
    assert "redriven 1" in cli("dlq", "redrive", "mailer", "--all").stdout
    wait_until(lambda: handled == [poison.id], message="the redriven event to be handled")
    time.sleep(0.5)
    assert handled == [poison.id]
    assert client.xlen(bus.keys.dlq("mailer")) == 0
    assert cli.json_lines("dlq", "list", "mailer") == []


def test_redrive_by_id_and_usage(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    ids = [_dead_letter(client, bus, "mailer", i) for i in range(3)]
    assert cli("dlq", "redrive", "mailer", ok=False).exit_code == 2
    assert cli("dlq", "redrive", "mailer", "--all", "--id", ids[0], ok=False).exit_code == 2
    out = json.loads(cli("--json", "dlq", "redrive", "mailer", "--id", ids[1]).stdout)
    assert out == {"subscription": "mailer", "redriven": 1}
    assert [d["id"] for d in cli.json_lines("dlq", "list", "mailer")] == [ids[0], ids[2]]
    assert client.xlen(bus.keys.queue("mailer")) == 1
    missing = cli("dlq", "redrive", "mailer", "--id", ids[1], ok=False)
    assert missing.exit_code == 1 and "no dead letter" in missing.stderr
    # ID is a dead-letter id, or an event's id or stream id: this one is none of them.
    bad = cli("dlq", "show", "mailer", "not-an-id", ok=False)
    assert bad.exit_code == 1 and "no dead letter 'not-an-id' in 'mailer'" in bad.stderr
    assert "neither a dead-letter id nor the id or stream id of an event" in bad.stderr
    # Redrive by the event's id.
    assert "redriven 1" in cli("dlq", "redrive", "mailer", "--id", "ev-2").stdout
    assert [d["id"] for d in cli.json_lines("dlq", "list", "mailer")] == [ids[0]]


def test_purge_asks_first_and_honours_before(cli: Cli, bus: EventBus,
                                             client: redis.Redis) -> None:
    ids = [_dead_letter(client, bus, "mailer", i) for i in range(2)]
    time.sleep(0.01)
    cut = ids[-1].split("-")[0]
    later = _dead_letter(client, bus, "mailer", 9)
    while later.split("-")[0] == cut:  # make sure the last one is in a later millisecond
        client.xdel(bus.keys.dlq("mailer"), later)
        time.sleep(0.002)
        later = _dead_letter(client, bus, "mailer", 9)

    no = cli("dlq", "purge", "mailer", input="n\n", ok=False)
    assert no.exit_code == 1 and "Delete all 3 dead letter(s)" in no.stderr
    assert client.xlen(bus.keys.dlq("mailer")) == 3

    yes = cli("dlq", "purge", "mailer", "--before", later, input="y\n")
    assert "purged 2" in yes.stdout
    assert [d["id"] for d in cli.json_lines("dlq", "list", "mailer")] == [later]
    assert "purged 1" in cli("dlq", "purge", "mailer", "--yes").stdout
    assert client.exists(bus.keys.dlq("mailer")) == 0


def test_unknown_subscription_exits_1(cli: Cli) -> None:
    r = cli("dlq", "list", "nobody", ok=False)
    assert r.exit_code == 1 and "unknown subscription 'nobody'" in r.stderr


def test_dlq_list_as_a_subprocess(sh: Sh, bus: EventBus, client: redis.Redis) -> None:
    dl = _dead_letter(client, bus, "mailer", 1)
    proc = sh("--json", "dlq", "list", "mailer")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == dl


def test_the_ids_chain_from_worker_log_to_list_to_show(
    cli: Cli, bus: EventBus, client: redis.Redis, runtime: Runtime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each command prints the id the next one takes: the worker's log line names the dead
    letter ``dlq show`` takes; ``show`` takes the event id and stream id too; ``list`` and
    ``show`` give the same attempts; ``list`` shows the error whole on one line."""
    cause = "the payment gateway answered 503 Service Unavailable after 30 s; retry later"

    @bus.subscribe("billing", types=["order.created"], max_retries=1, min_backoff_ms=10,
                   max_backoff_ms=20)
    def billing(event: Event) -> None:
        raise RuntimeError(f"charging order {event.data['order']} failed:\n{cause}")

    runtime.worker(runtime.broker())
    event = Event(type="order.created", data={"order": "o-1"})
    sid = bus.publish(event)
    caplog.set_level(logging.WARNING, logger="chi_redis.runtime.deadletters")
    wait_until(lambda: client.xlen(bus.keys.dlq("billing")) == 1, message="the dead letter")
    [dl_id] = [i.decode() for i, _ in client.xrange(bus.keys.dlq("billing"))]
    wait_until(lambda: any("dead-lettered" in r.getMessage() for r in caplog.records),
               message="the worker's log line")
    [line] = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert f"event {event.id} of billing as {dl_id}" in line
    assert f"chi-redis dlq show billing {dl_id}" in line

    shown = json.loads(cli("--json", "dlq", "show", "billing", dl_id).stdout)
    assert shown["id"] == dl_id and shown["event_id"] == event.id
    for ref in (event.id, sid):  # the event's id, and the stream id publish printed
        assert json.loads(cli("--json", "dlq", "show", "billing", ref).stdout) == shown

    text = cli("dlq", "list", "billing").stdout.splitlines()
    assert text[0].split()[:6] == ["DEAD-LETTER", "ID", "TYPE", "EVENT", "ID", "REASON"]
    row = text[1]
    assert row.split()[:5] == [dl_id, "order.created", event.id, "retries_exhausted",
                               str(shown["attempts"])]
    assert shown["attempts"] == 2 and f"attempts: {shown['attempts']}" in cli(
        "dlq", "show", "billing", dl_id).stdout
    # The whole error, on one line: its cause is not cut off.
    assert row.endswith(f"RuntimeError: charging order o-1 failed: {cause}")

    # An event dead-lettered twice (redriven, failed again): its id is ambiguous.
    cli("dlq", "redrive", "billing", "--id", event.id)
    wait_until(lambda: client.xlen(bus.keys.dlq("billing")) == 1
               and client.xrange(bus.keys.dlq("billing"))[0][0].decode() != dl_id,
               message="the second dead letter")
    _dead_letter_again = client.xrange(bus.keys.dlq("billing"))[0][0].decode()
    client.xadd(bus.keys.dlq("billing"), {"event_id": event.id, "src_id": sid, "reason": "x"})
    twice = cli("dlq", "show", "billing", event.id, ok=False)
    assert twice.exit_code == 1 and "dead-lettered 2 times" in twice.stderr
    assert _dead_letter_again in twice.stderr


def test_list_cuts_a_long_error_at_the_end(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    entry = dead_letter_fields(
        sub="mailer", reason="retries_exhausted", exc=ValueError("x" * 300 + " the cause"),
        kind="event", body=b"", event_id="ev-1", type_="user.created", topic="user",
    )
    client.xadd(bus.keys.dlq("mailer"), entry)
    row = cli("dlq", "list", "mailer").stdout.splitlines()[1]
    assert row.endswith("…") and "ValueError: xxxx" in row
    assert len(row.split("  ValueError: ")[1]) == ERROR_CHARS - len("ValueError: ")
    assert "the cause" in cli("--json", "dlq", "list", "mailer").stdout  # JSON: all of it
