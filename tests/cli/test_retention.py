"""retention apply / run: bounded memory, never an event a group still needs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from support import REDIS_URL, wait_until
from support.processes import ROOT, clean_env

from chi_redis import Event, EventBus

from .conftest import CHI, Cli, Sh, publish_n

pytestmark = pytest.mark.redis  # every test runs against the real server


def _catch_up(client: redis.Redis, stream: str, group: str) -> int:
    n = 0
    while True:
        got = client.xreadgroup(group, "c1", {stream: ">"}, count=5000)
        ids = [sid for _, entries in got for sid, _ in entries]
        if not ids:
            return n
        client.xack(stream, group, *ids)
        n += len(ids)


def test_lagging_subscription_holds_back_the_trim_until_it_catches_up(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    stream = bus.keys.stream("order")
    ids = []
    # Back-dated events: each is also in the time index (docs/design.md §3.3).
    when = datetime.now(UTC) - timedelta(hours=1)
    for start in range(0, 10_000, 2500):
        events = [Event(type="order.created", data={"i": i}, timestamp=when)
                  for i in range(start, start + 2500)]
        bus.publish_batch(events)
        ids += [e.id for e in events]
    client.xgroup_create(stream, "lagging", id="0")  # exists, nobody reading
    assert client.zcard(bus.keys.index("order")) == 10_000

    [held] = cli.json_lines("retention", "apply", "--max-len", "100")
    assert held["trimmed"] == 0 and held["held_back"] == 9_900
    assert held["held_by"] == "lagging" and held["group_lag"] == 10_000
    assert client.xlen(stream) == 10_000
    text = cli("retention", "apply", "--max-len", "100").stdout
    assert "held back 9900: group 'lagging'" in text

    assert _catch_up(client, stream, "lagging") == 10_000
    [done] = cli.json_lines("retention", "apply", "--max-len", "100")
    assert done["trimmed"] == 9_900 and done["held_back"] == 0 and done["length"] == 100
    # Index and id lookup follow the stream.
    assert client.zcard(bus.keys.index("order")) == 100
    assert client.hlen(bus.keys.ids("order")) == 100
    assert bus.store.load(ids[0]) is None and bus.store.load(ids[-1]) is not None
    assert [e.id for e in bus.store.load_by_topic("order", limit=1000)] == ids[-100:]
    # XINFO says what was trimmed (for replay's gap report) and lag stays exact.
    info = client.xinfo_stream(stream)
    assert info["max-deleted-entry-id"] < info["first-entry"][0]
    assert client.xinfo_groups(stream)[0]["lag"] == 0


def test_pending_entries_are_never_trimmed(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    stream = bus.keys.stream("order")
    sids = publish_n(bus, 1000)
    client.xgroup_create(stream, "slow", id="0")
    client.xgroup_create(stream, "fast", id="$")
    got = client.xreadgroup("slow", "c1", {stream: ">"}, count=100)
    read = [sid for _, entries in got for sid, _ in entries]
    client.xack(stream, "slow", *read[:60])  # 40 stay pending
    [r] = cli.json_lines("retention", "apply", "--topic", "order", "--max-len", "10")
    assert r["trimmed"] == 60 and r["held_by"] == "slow" and r["held_at"] == sids[60]
    assert r["group_pending"] == 40
    assert client.xrange(stream, count=1)[0][0].decode() == sids[60]
    pending = client.xpending_range(stream, "slow", min="-", max="+", count=100)
    assert len(pending) == 40
    assert all(client.xrange(stream, p["message_id"], p["message_id"]) for p in pending)


def test_max_age_trims_what_is_older(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    publish_n(bus, 20)
    time.sleep(1.2)
    fresh = publish_n(bus, 5)
    [r] = cli.json_lines("retention", "apply", "--max-age", "1s")
    assert r["trimmed"] == 20 and r["length"] == 5
    assert [s.decode() for s, _ in client.xrange(bus.keys.stream("order"))] == fresh
    bad = cli("retention", "apply", "--max-age", "soonish", ok=False)
    assert bad.exit_code == 2 and "invalid --max-age" in bad.stderr  # a bad option value


def test_no_policy_trims_nothing(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    publish_n(bus, 5)
    r = cli("retention", "apply")
    assert "no retention policy" in r.stderr
    assert client.xlen(bus.keys.stream("order")) == 5


def _config(tmp_path: Path, ns: str) -> Path:
    config = tmp_path / "chi.yaml"
    config.write_text(
        f"namespace: {ns}\nredis:\n  url: {REDIS_URL}\n"
        "retention:\n  interval_s: 0.2\n  default:\n    max_len: 1000\n"
        "  topics:\n    order:\n      max_len: 5\n"
    )
    return config


def test_retention_run_applies_per_topic_policies_from_config(
    cli: Cli, bus: EventBus, client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    publish_n(bus, 20)
    publish_n(bus, 20, "user.created")
    r = cli("--config", str(_config(tmp_path, ns)), "retention", "run", "--once", base=False)
    assert "topic order: trimmed 15" in r.stdout
    assert client.xlen(bus.keys.stream("order")) == 5
    assert client.xlen(bus.keys.stream("user")) == 20


def test_retention_run_as_a_process_stops_on_sigterm(
    bus: EventBus, client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [str(CHI), "retention", "run"], cwd=str(ROOT), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env=clean_env(CHI_CONFIG=str(_config(tmp_path, ns))),
    )
    try:
        publish_n(bus, 30)
        wait_until(lambda: client.xlen(bus.keys.stream("order")) == 5, timeout=20,
                   message="the retention process to trim")
        publish_n(bus, 10)  # it keeps going
        wait_until(lambda: client.xlen(bus.keys.stream("order")) == 5, timeout=20,
                   message="a second pass")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "topic order: trimmed" in out


def test_retention_apply_as_a_subprocess(sh: Sh, bus: EventBus, client: redis.Redis) -> None:
    publish_n(bus, 30)
    proc = sh("--json", "retention", "apply", "--max-len", "10")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["trimmed"] == 20
    assert client.xlen(bus.keys.stream("order")) == 10
