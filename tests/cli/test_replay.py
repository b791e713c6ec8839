"""replay: exactly the range, only to the chosen target, resumable without repeats or gaps."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
import redis
from support import FAST, REDIS_URL, Runtime, wait_until
from support.processes import ROOT, clean_env

from chi_redis import Event, EventBus
from chi_redis.errors import RedisUnavailableError
from chi_redis.ops.replay import QueueTarget
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker
from chi_redis.runtime.encoder import decode_message, encode_message
from chi_redis.runtime.subscriptions import Delivery

from .conftest import CHI, Cli, Sh, publish_n

pytestmark = pytest.mark.redis  # every test runs against the real server


class Seen:
    """Thread-safe record of what handlers received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[int, bool]] = []

    def add(self, event: Event, delivery: Delivery) -> None:
        with self.lock:
            self.items.append((event.data["i"], delivery.replay))

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)


def register(bus: EventBus, *names: str, types: tuple[str, ...] = ("order.*",)) -> dict[str, Seen]:
    """Subscriptions on ``bus`` recording what they get; registered and grouped in Redis."""
    seen = {}
    for name in names:
        rec = seen[name] = Seen()
        bus.subscribe(name, types=list(types))(lambda e, d, rec=rec: rec.add(e, d))
    return seen


def queued(client: redis.Redis, bus: EventBus, sub: str) -> list[Any]:
    """The messages in ``sub``'s private stream, decoded."""
    return [decode_message(f[b"m"]) for _, f in client.xrange(bus.keys.queue(sub))]


def queued_indexes(client: redis.Redis, bus: EventBus, sub: str) -> list[int]:
    import msgspec

    return [msgspec.msgpack.decode(m.args[1]["data"])["i"] for m in queued(client, bus, sub)]


# the range, the target, nothing else -------------------------------------------------------------
def test_replay_to_one_subscription_delivers_exactly_the_range_in_order_once(
    cli: Cli, bus: EventBus, client: redis.Redis, runtime: Runtime
) -> None:
    sids = publish_n(bus, 50)
    # Subscriptions appear after the events (start="new"): only a replay reaches them.
    seen = register(bus, "audit", "billing")
    broker = runtime.broker()

    result = cli("replay", "--to", "audit", "--topic", "order", "--since", sids[10],
                 "--until", sids[29], "--batch-size", "7")
    assert "replayed 20 events to subscription 'audit'" in result.stdout

    msgs = queued(client, bus, "audit")
    assert [m.options["src_id"] for m in msgs] == sids[10:30]
    assert all(m.options["replay"] is True for m in msgs)
    assert all(m.actor_name == m.queue_name == "audit" for m in msgs)
    assert [m.message_id for m in msgs] == [
        f"audit:{client.xrange(bus.keys.stream('order'), s, s)[0][1][b'id'].decode()}"
        for s in sids[10:30]
    ]
    assert queued(client, bus, "billing") == []

    runtime.worker(broker)
    wait_until(lambda: len(seen["audit"]) >= 20, message="audit to handle the replay")
    broker.join("audit", timeout=30_000)
    time.sleep(0.3)
    assert sorted(seen["audit"].items) == [(i, True) for i in range(10, 30)]
    assert len(seen["billing"]) == 0
    assert client.xlen(bus.keys.queue("audit")) == 0  # acked and deleted


def test_replay_by_append_time_range(cli: Cli, bus: EventBus, client: redis.Redis) -> None:
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    sids = publish_n(bus, 5)
    ms = int(sids[2].split("-")[0])
    since = datetime.fromtimestamp(ms / 1000, UTC).isoformat()
    cli("replay", "--to", "audit", "--since", since)  # topics: the subscription's own
    assert queued_indexes(client, bus, "audit") == [
        i for i, s in enumerate(sids) if int(s.split("-")[0]) >= ms
    ]


def test_replay_to_a_subscription_keeps_to_its_types(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    register(bus, "payments", types=("order.paid",))
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    bus.publish_batch([Event(type="order.created" if i % 2 else "order.paid", data={"i": i})
                       for i in range(10)])
    out = cli("replay", "--to", "payments", "--topic", "order").stdout
    assert queued_indexes(client, bus, "payments") == [0, 2, 4, 6, 8]
    assert "skipped 5 of other types" in out


def test_replay_to_an_unknown_subscription_exits_1(cli: Cli, bus: EventBus) -> None:
    publish_n(bus, 3)
    r = cli("replay", "--to", "nobody", "--topic", "order", ok=False)
    assert r.exit_code == 1 and "unknown subscription 'nobody'" in r.stderr


# the messages ------------------------------------------------------------------------------------
def _expected(bus: EventBus, sub: str, stream_key: str, sid: bytes, fields: dict[bytes, bytes],
              ts: int) -> bytes:
    topic = stream_key.split("{", 1)[1].split("}", 1)[0]
    return encode_message(dramatiq.Message(
        queue_name=sub, actor_name=sub, args=(topic, {k.decode(): v for k, v in fields.items()}),
        kwargs={}, options={"src": stream_key, "src_id": sid.decode(), "replay": True},
        message_id=f"{sub}:{fields[b'id'].decode()}", message_timestamp=ts,
    ))


@pytest.mark.parametrize("topics", [["order"], ["order", "user"]])
def test_replayed_messages_are_exactly_what_encode_message_gives(
    cli: Cli, bus: EventBus, client: redis.Redis, topics: list[str]
) -> None:
    register(bus, "audit", types=("order.*", "user.*"))
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    bus.publish_batch([
        Event(type="order.created", data={"i": 0}),
        Event(type="order.created", data={"i": 1, "blob": "x" * 70_000}, metadata={"k": "v"}),
        Event(type="user.created", data={"i": 2, "text": "y" * 300}),
    ])
    cli("replay", "--to", "audit", *[a for t in topics for a in ("--topic", t)])
    raw = client.xrange(bus.keys.queue("audit"))
    assert len(raw) == (2 if topics == ["order"] else 3)
    for _, f in raw:
        msg = decode_message(f[b"m"])
        stream_key, sid = msg.options["src"], msg.options["src_id"]
        [(_, fields)] = client.xrange(stream_key, sid, sid)
        assert f[b"m"] == _expected(bus, "audit", stream_key, sid.encode(), fields,
                                    msg.message_timestamp)



@pytest.mark.parametrize("sub", ["audit", "a" * 128])
def test_messages_with_long_or_non_ascii_ids_are_what_encode_message_gives(
    bus: EventBus, client: redis.Redis, sub: str
) -> None:
    # message ids over 255 bytes and non-ASCII event ids leave the template's fast path
    ids = ["plain-1", "évènement-2", "z" * 128]
    sids = bus.publish_batch([Event(type="order.created", data={"i": i}, id=event_id)
                              for i, event_id in enumerate(ids)])
    target = QueueTarget(bus, sub)
    stream = bus.keys.stream("order")
    for sid in sids:
        [(raw_sid, fields)] = client.xrange(stream, sid, sid)
        item = ("order", raw_sid, {k.decode(): v for k, v in fields.items()}, 0)
        assert target.message(item, 1234) == _expected(bus, sub, stream, raw_sid, fields, 1234)


# resumable ---------------------------------------------------------------------------------------
def _fail_after(monkeypatch: pytest.MonkeyPatch, method: str, calls: int) -> None:
    """Make QueueTarget.<method> fail from its ``calls``+1-th call on."""
    original = getattr(QueueTarget, method)
    count = [0]
    lock = threading.Lock()

    def failing(self: QueueTarget, *args: Any) -> Any:
        with lock:
            count[0] += 1
            n = count[0]
        if n > calls:
            raise RedisUnavailableError("connection lost (injected)")
        return original(self, *args)

    monkeypatch.setattr(QueueTarget, method, failing)


@pytest.mark.parametrize(("topics", "workers"), [(1, "1"), (2, "1"), (1, "4"), (2, "4")])
def test_interrupted_replay_resumes_without_repeating_or_skipping(
    cli: Cli, bus: EventBus, client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    topics: int, workers: str
) -> None:
    register(bus, "audit", types=("order.*", "user.*"))
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    publish_n(bus, 200)
    publish_n(bus, 3, "user.created")
    names = ["--topic", "order"] + (["--topic", "user"] if topics == 2 else [])
    args = ("replay", "--to", "audit", *names, "--batch-size", "10", "--checkpoint", "fix-1",
            "--workers", workers)
    expected = Counter(range(200)) + Counter(range(3) if topics == 2 else [])

    with monkeypatch.context() as m:
        _fail_after(m, "send", 5)
        r = cli(*args, ok=False)
    assert r.exit_code == 1
    assert "replay stopped after" in r.stderr and "resume" in r.stderr
    first = queued_indexes(client, bus, "audit")
    assert 0 < len(first) < 200

    total = sum(expected.values())
    out = cli(*args).stdout
    assert "(resumed)" in out and f"{total} delivered in total" in out
    got = queued_indexes(client, bus, "audit")
    assert Counter(got) == expected  # every event exactly once in total
    if topics == 1 and workers == "1":
        assert got == list(range(200))  # and in order
    assert client.hget(bus.keys.checkpoint("fix-1"), "state") == b"complete"
    assert int(client.hget(bus.keys.checkpoint("fix-1"), "delivered") or 0) == total

    again = cli(*args).stdout
    assert "is complete" in again
    assert len(queued(client, bus, "audit")) == total


def test_a_failed_delivery_stops_the_batches_queued_behind_it(
    cli: Cli, bus: EventBus, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the 6th delivery fails: the 7th, already prepared and queued behind it, must not
    # go out, or the checkpoint would move past events that were never delivered.
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    publish_n(bus, 200)
    args = ("replay", "--to", "audit", "--topic", "order", "--batch-size", "10",
            "--checkpoint", "fail-once")
    original = QueueTarget.send
    count = [0]

    def failing_once(self: QueueTarget, *a: Any) -> Any:
        count[0] += 1
        if count[0] == 6:
            time.sleep(0.5)  # the next batch is queued behind this one meanwhile
            raise RedisUnavailableError("connection lost (injected)")
        return original(self, *a)

    with monkeypatch.context() as m:
        m.setattr(QueueTarget, "send", failing_once)
        r = cli(*args, ok=False)
    assert r.exit_code == 1
    assert queued_indexes(client, bus, "audit") == list(range(50))
    assert int(client.hget(bus.keys.checkpoint("fail-once"), "delivered") or 0) == 50
    cli(*args)
    assert queued_indexes(client, bus, "audit") == list(range(200))


def test_killed_replay_subprocess_resumes_exactly_once(
    bus: EventBus, client: redis.Redis, ns: str
) -> None:
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    n = 20_000
    for start in range(0, n, 5000):
        bus.publish_batch([Event(type="order.created", data={"i": i})
                           for i in range(start, start + 5000)])
    argv = [str(CHI), "--redis-url", REDIS_URL, "--namespace", ns, "replay", "--to", "audit",
            "--topic", "order", "--checkpoint", "kill-1", "--batch-size", "200",
            "--rate", "8000/s"]
    proc = subprocess.Popen(argv, env=clean_env(), cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: client.xlen(bus.keys.queue("audit")) >= 2000, timeout=60,
                   message="the replay to get going")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    partial = client.xlen(bus.keys.queue("audit"))
    assert partial < n, "the replay finished before it was killed"

    done = subprocess.run(argv[:-2], env=clean_env(), cwd=str(ROOT), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = queued_indexes(client, bus, "audit")
    assert len(got) == n and got == list(range(n))


def test_checkpoint_of_another_replay_is_refused(cli: Cli, bus: EventBus) -> None:
    publish_n(bus, 3)
    cli("replay", "--print", "--topic", "order", "--checkpoint", "c1")
    r = cli("replay", "--republish", "--topic", "order", "--checkpoint", "c1", ok=False)
    assert r.exit_code == 1 and "belongs to another replay" in r.stderr


# republish / print / dry run -------------------------------------------------------------------
def test_republish_appends_marked_copies_with_new_ids(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    originals = [Event(type="order.created", data={"i": i}, metadata={"k": "v"})
                 for i in range(5)]
    bus.publish_batch(originals)
    out = cli("replay", "--republish", "--topic", "order").stdout
    assert "replayed 5 events to their topics" in out
    events = bus.store.load_by_topic("order", limit=100)
    assert len(events) == 10
    copies = events[5:]
    assert [c.metadata["chi_replay_of"] for c in copies] == [o.id for o in originals]
    assert all(c.metadata["chi_replay"] is True and c.metadata["k"] == "v" for c in copies)
    assert {c.id for c in copies}.isdisjoint({o.id for o in originals})
    assert [c.data for c in copies] == [o.data for o in originals]
    assert [c.timestamp for c in copies] == [o.timestamp for o in originals]
    # Copies keep their event time (whether through the stream or the late index, by how
    # long after the originals they were appended: docs/design.md §3.3).
    lo, hi = originals[0].timestamp, originals[-1].timestamp
    found = bus.store.load_by_time_range(lo, hi, topic="order")
    assert sorted(e.id for e in found) == sorted([o.id for o in originals] + [c.id for c in copies])
    assert all(bus.store.load(c.id) is not None for c in copies)


def test_print_writes_json_lines_and_dry_run_counts(cli: Cli, bus: EventBus) -> None:
    bus.publish_batch([Event(type="order.created", data={"i": 0}),
                       Event(type="order.paid", data={"i": 1}),
                       Event(type="user.created", data={"i": 2})])
    r = cli("replay", "--print", "--types", "*.created")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(e["topic"], e["type"]) for e in lines] == [("order", "order.created"),
                                                        ("user", "user.created")]
    assert "replayed 2 events to stdout" in r.stderr
    dry = json.loads(cli("--json", "replay", "--dry-run", "--topic", "order").stdout)
    assert dry["dry_run"] and dry["delivered"] == 2 and dry["per_topic"] == {"order": 2}


def test_replay_by_event_time(cli: Cli, bus: EventBus) -> None:
    base = datetime(2024, 5, 1, tzinfo=UTC)
    bus.publish_batch([
        Event(type="order.created", data={"i": i}, timestamp=base + timedelta(hours=9 - i))
        for i in range(10)
    ])  # appended in reverse event-time order
    r = cli("replay", "--print", "--by", "event-time", "--since", "2024-05-01T02:00:00Z",
            "--until", "2024-05-01T05:00:00Z")
    assert [json.loads(x)["data"]["i"] for x in r.stdout.splitlines()] == [7, 6, 5, 4]


def test_replay_of_a_range_trimmed_by_retention_reports_the_gap(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    sids = publish_n(bus, 100)
    cli("retention", "apply", "--topic", "order", "--max-len", "60")
    r = cli("replay", "--print", "--topic", "order", "--since", sids[10])
    assert [json.loads(x)["stream_id"] for x in r.stdout.splitlines()] == sids[40:]
    assert f"entries from {sids[10]} were trimmed; first available entry is {sids[40]}" \
        in r.stderr
    report = json.loads(cli("--json", "replay", "--dry-run", "--topic", "order",
                            "--since", sids[10]).stdout)
    assert report["gaps"][0]["first_available"] == sids[40] and report["gaps"][0]["exact"]
    # No gap when the range starts after the trimmed part.
    clean = json.loads(cli("--json", "replay", "--dry-run", "--topic", "order",
                           "--since", sids[50]).stdout)
    assert clean["gaps"] == [] and clean["delivered"] == 50
    assert json.loads(cli("--json", "replay", "--dry-run", "--topic", "order", "--since",
                          sids[39]).stdout)["gaps"][0]["requested"] == sids[39]


def test_replay_of_a_range_trimmed_by_someone_else_warns_it_may_be_incomplete(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    sids = publish_n(bus, 100)
    client.xtrim(bus.keys.stream("order"), minid=sids[40], approximate=False)
    r = cli("replay", "--print", "--topic", "order", "--since", sids[10])
    assert len(r.stdout.splitlines()) == 60
    assert "40 older entries were trimmed or deleted" in r.stderr
    assert f"first available entry is {sids[40]}" in r.stderr


def test_rate_limit_slows_the_replay(cli: Cli, bus: EventBus) -> None:
    publish_n(bus, 300)
    t0 = time.monotonic()
    report = json.loads(cli("--json", "replay", "--print", "--topic", "order", "--rate",
                            "1000/s", "--batch-size", "50").stderr)
    assert report["delivered"] == 300
    assert time.monotonic() - t0 >= 0.2


def test_replay_as_a_subprocess(sh: Sh, bus: EventBus, client: redis.Redis) -> None:
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    sids = publish_n(bus, 30)
    proc = sh("replay", "--to", "audit", "--topic", "order", "--since", sids[5],
              "--until", sids[14], "--checkpoint", "sub-1")
    assert proc.returncode == 0, proc.stderr
    assert "replayed 10 events" in proc.stdout
    assert queued_indexes(client, bus, "audit") == list(range(5, 15))


def test_replay_to_a_subscription_filters_types_and_skips_archived_entries(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    bus.publish_batch([Event(type="order.created", data={"i": 0}),
                       Event(type="order.paid", data={"i": 1}),
                       Event(type="order.created", data={"i": 2})])
    bus.store.store(Event(type="order.created", data={"i": 3}))  # archived: not delivered
    report = json.loads(cli("--json", "replay", "--to", "audit", "--topic", "order",
                            "--types", "*.created").stdout)
    assert queued_indexes(client, bus, "audit") == [0, 2]
    assert (report["skipped_types"], report["skipped_archived"]) == (1, 1)


def test_progress_bar_only_on_a_terminal_and_never_over_printed_events(
    cli: Cli, bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chi_redis.cli import replay as cli_module

    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    publish_n(bus, 50)
    assert "replaying" not in cli("replay", "--to", "audit", "--topic", "order").output
    monkeypatch.setattr(cli_module, "stdout_is_tty", lambda: True)
    out = cli("replay", "--to", "audit", "--topic", "order", "--by", "event-time").stdout
    assert "replaying" in out and "replayed 50 events" in out
    printed = cli("replay", "--print", "--topic", "order").stdout
    assert "replaying" not in printed and len(printed.splitlines()) == 50


def test_dry_run_whose_types_match_nothing_in_a_page_counts_zero(cli: Cli, bus: EventBus) -> None:
    # One topic, every event of the page filtered out by --types: counted as none (this
    # used to raise IndexError in the per-topic count).
    bus.publish_batch([Event(type="order.placed", data={"i": i}) for i in range(3)])
    report = json.loads(cli("--json", "replay", "--dry-run", "--topic", "order", "--types",
                            "order.none").stdout)
    assert report["delivered"] == 0, report
