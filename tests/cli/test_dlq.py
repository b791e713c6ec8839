"""dlq list / show / redrive / purge, and a poison event's round trip through the CLI."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from support import Runtime, wait_until

from chi_redis import Event, EventBus
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
    bad = cli("dlq", "show", "mailer", "not-an-id", ok=False)
    assert bad.exit_code == 1 and "invalid dead-letter id" in bad.stderr


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
