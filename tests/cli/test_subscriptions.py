"""subscriptions list / rewind / prune."""

from __future__ import annotations

import json
import time

import msgspec
import pytest
import redis
from support import FAST

from chi_redis import EventBus
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker

from .conftest import Cli, Sh, publish_n

pytestmark = pytest.mark.redis  # every test runs against the real server


def _register(bus: EventBus, *names: str, types: tuple[str, ...] = ("order.*",)) -> None:
    for name in names:
        bus.subscribe(name, types=list(types))(lambda e: None)
    StreamsBroker(bus, options=BrokerOptions(**FAST))


def _read_all(client: redis.Redis, bus: EventBus, sub: str, topic: str = "order") -> list[str]:
    """Read and ack everything the group has not read yet; returns the stream ids."""
    stream = bus.keys.stream(topic)
    got = client.xreadgroup(sub, "test", {stream: ">"}, count=100_000)
    ids = [sid for _, entries in got for sid, _ in entries]
    if ids:
        client.xack(stream, sub, *ids)
    return [i.decode() for i in ids]


def test_list_shows_registry_topics_and_lag(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    _register(bus, "audit", "billing")
    publish_n(bus, 7)
    _read_all(client, bus, "billing")
    rows = {r["name"]: r for r in cli.json_lines("subscriptions", "list")}
    assert set(rows) == {"audit", "billing"}
    assert rows["audit"]["registered"] and rows["audit"]["types"] == ["order.*"]
    assert rows["audit"]["topics"] == ["order"]
    assert (rows["audit"]["lag"], rows["billing"]["lag"]) == (7, 0)
    text = cli("subscriptions", "list").stdout.splitlines()
    header = text[0].split()
    assert header == ["NAME", "LAST", "SEEN", "LAG", "PENDING", "DLQ", "TYPES", "TOPICS"]
    cells = {line.split()[0]: line.split() for line in text[1:]}
    assert set(cells) == {"audit", "billing"}  # no footnote: every lag is known
    # Columns as in the header (LAST SEEN is one cell: an ISO time).
    assert cells["audit"][1:6] == [rows["audit"]["last_seen"], "7", "0", "0", "order.*"]
    assert cells["billing"][2] == "0"


def test_list_explains_an_unknown_lag(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    _register(bus, "audit")
    sids = publish_n(bus, 5)
    client.xreadgroup("audit", "test", {bus.keys.stream("order"): ">"}, count=2)
    client.xdel(bus.keys.stream("order"), sids[3])  # deleted after the group's position
    [row] = cli.json_lines("subscriptions", "list")
    assert row["lag"] is None
    text = cli("subscriptions", "list").stdout.splitlines()
    assert text[1].split()[2] == "?"
    assert text[-1].startswith("lag ?: unknown") and "trimmed or deleted" in text[-1]
    assert "lag ?" not in cli("--json", "subscriptions", "list").stdout


def test_rewind_moves_every_group_back_to_a_position(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    _register(bus, "audit", types=("order.*", "user.*"))
    sids = publish_n(bus, 10)
    users = publish_n(bus, 3, "user.created")
    assert len(_read_all(client, bus, "audit")) == 10
    _read_all(client, bus, "audit", "user")

    refused = cli("subscriptions", "rewind", "audit", "--to", sids[4], ok=False)
    assert refused.exit_code == 1 and "re-delivers entries it already handled (6 on topic"\
        " order" in refused.stderr and "--force" in refused.stderr
    assert _read_all(client, bus, "audit") == []  # no group moved
    out = json.loads(cli("--json", "subscriptions", "rewind", "audit", "--to", sids[4],
                         "--force").stdout)
    assert set(out["topics"]) == {"order", "user"}
    assert _read_all(client, bus, "audit") == sids[4:]
    assert _read_all(client, bus, "audit", "user") == [u for u in users if u >= sids[4]]

    # By time, and only one topic.
    ms = int(sids[0].split("-")[0])
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"
    out = cli("subscriptions", "rewind", "audit", "--to", iso, "--topic", "order",
              "--force").stdout
    assert _read_all(client, bus, "audit") == sids
    # Said for people: the time and the first stream id read, not MS-18446744073709551615.
    assert out.strip() == (f"rewound 'audit' on topic order: the next read starts at"
                           f" {iso[:19]}Z (stream id {ms}-0)")
    assert "18446744073709551615" not in out
    assert _read_all(client, bus, "audit", "user") == []


def test_rewind_unknown_subscription_exits_1_a_bad_time_2(cli: Cli, bus: EventBus) -> None:
    _register(bus, "audit")
    r = cli("subscriptions", "rewind", "nobody", "--to", "-1h", ok=False)
    assert r.exit_code == 1 and "unknown subscription 'nobody'" in r.stderr
    r = cli("subscriptions", "rewind", "audit", "--to", "whenever", ok=False)
    assert r.exit_code == 2 and "invalid --to" in r.stderr  # a bad option value
    r = cli("subscriptions", "rewind", "audit", ok=False)
    assert r.exit_code == 2


def test_prune_removes_stale_and_orphan_groups_after_asking(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    _register(bus, "alive", "stale", types=("order.*", "user.*"))
    publish_n(bus, 1, "user.created")
    old = int(time.time() * 1000) - 10 * 86_400_000
    client.hset(bus.keys.subs(), "stale", msgspec.json.encode({"types": [], "last_seen_ms": old}))
    client.xgroup_create(bus.keys.stream("order"), "ghost", id="0")  # no registry entry

    no = cli("subscriptions", "prune", input="n\n", ok=False)
    assert no.exit_code == 1
    assert "stale: last seen" in no.stderr and "ghost: no registry entry" in no.stderr
    assert "alive" not in no.stderr
    assert client.hexists(bus.keys.subs(), "stale")

    out = json.loads(cli("--json", "subscriptions", "prune", "--yes").stdout)
    assert sorted(out["pruned"]) == ["ghost", "stale"]
    for topic in ("order", "user"):
        names = {g["name"] for g in client.xinfo_groups(bus.keys.stream(topic))}
        assert names == {b"alive"}
    assert set(client.hkeys(bus.keys.subs())) == {b"alive"}
    assert "nothing to prune" in cli("subscriptions", "prune", "--yes").stdout
    # --days 0: even a subscription seen a moment ago is stale.
    assert "alive" in cli("subscriptions", "prune", "--days", "0", "--yes").stdout


def test_subscriptions_list_as_a_subprocess(sh: Sh, bus: EventBus) -> None:
    _register(bus, "audit")
    proc = sh("--json", "subscriptions", "list")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == "audit"


def test_stats_explains_an_unknown_lag_too(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    _register(bus, "audit")
    sids = publish_n(bus, 5)
    client.xreadgroup("audit", "test", {bus.keys.stream("order"): ">"}, count=2)
    text = cli("stats").stdout.splitlines()
    assert not any(line.startswith("lag ?") for line in text)  # every lag known: no note
    client.xdel(bus.keys.stream("order"), sids[3])
    text = cli("stats").stdout.splitlines()
    assert text[-1].startswith("lag ?: unknown") and "trimmed or deleted" in text[-1]
    assert "lag ?" not in cli("--json", "stats").stdout
