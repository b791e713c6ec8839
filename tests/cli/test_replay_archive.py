"""replay --source archive: a range Redis retention already trimmed, delivered from a
PostgreSQL or a file archive to stdout, one subscription or the topic, resumable."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from support import FAST, Runtime, in_process_runtime, wait_until
from support.postgres import require_postgres, unique_table

from chi_redis import Event, EventBus
from chi_redis.errors import RedisUnavailableError
from chi_redis.ops.archive import install_archiver
from chi_redis.ops.replay import QueueTarget
from chi_redis.ops.retention import Policy, trim_topic
from chi_redis.runtime.broker import BrokerOptions, StreamsBroker
from chi_redis.store import EventStore

from .conftest import Cli, Sh
from .test_replay import queued_indexes, register

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

T0 = datetime(2024, 7, 1, tzinfo=UTC)
N = 100


@dataclass
class Archive:
    """Events published, archived by the archiver, then trimmed from Redis."""

    kind: str
    config: Path
    events: list[Event]
    open: Any  # () -> a store on the archive (the caller closes it)

    def args(self, *more: str) -> list[str]:
        """``--config <file> replay --source archive <more>`` over events[10:60]."""
        return ["--config", str(self.config), "replay", "--source", "archive", "--topic",
                "order", "--by", "event-time", "--since", self.iso(10), "--until",
                self.iso(59), *more]

    def iso(self, i: int) -> str:
        return self.events[i].timestamp.isoformat()


def _config(tmp_path: Path, kind: str, table: str) -> Path:
    store = (f"    type: database\n    database: {{dsn: '{require_postgres()}',"
             f" table_name: {table}}}\n" if kind == "database" else
             f"    type: file\n    file: {{directory: '{tmp_path / 'archive'}',"
             " max_file_size: 64KB, max_files: 50}\n")
    path = tmp_path / "chi.yaml"
    path.write_text(f"events:\n  store:\n    enabled: true\n{store}")
    return path


@pytest.fixture(params=["database", "file"])
def archive(request: pytest.FixtureRequest, tmp_path: Path, bus: EventBus,
            client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Archive]:
    from chi_redis.store.files import FileEventStore
    from chi_redis.store.postgres import PostgresEventStore

    kind: str = request.param
    table = unique_table("replay_arc")
    config = _config(tmp_path, kind, table)

    def open_store(read_only: bool = True) -> EventStore:
        if kind == "database":
            pg = PostgresEventStore(require_postgres(), table)
            pg.init()
            return pg
        return FileEventStore(tmp_path / "archive", max_file_size="64KB", max_files=50,
                              read_only=read_only)

    events = [Event(type="order.placed", data={"i": i}, timestamp=T0 + timedelta(seconds=i))
              for i in range(N)]
    bus.publish_batch(events)
    writer: Any = open_store(read_only=False)
    archiver_bus = EventBus(client, namespace=bus.namespace)
    with in_process_runtime(archiver_bus, monkeypatch) as rt:
        install_archiver(archiver_bus, writer, batch_size=30)
        rt.worker(rt.broker(archiver_bus))
        wait_until(lambda: writer.count() >= N, timeout=60, message="the archiver")
    writer.close()
    trim_topic(bus, "order", Policy(max_len=0))
    assert client.xlen(bus.keys.stream("order")) == 0  # Redis no longer holds them
    try:
        yield Archive(kind, config, events, open_store)
    finally:
        if kind == "database":
            with PostgresEventStore(require_postgres(), table) as pg:
                pg.drop()


def _ids(events: list[Event]) -> list[str]:
    return [e.id for e in events]


def test_print_from_the_archive(cli: Cli, archive: Archive) -> None:
    r = cli(*archive.args("--print", "--batch-size", "7"))
    printed = [json.loads(line) for line in r.stdout.splitlines()]
    assert [p["id"] for p in printed] == _ids(archive.events[10:60])
    assert printed[0]["data"] == {"i": 10} and printed[0]["topic"] == "order"
    assert "replayed 50 events to stdout" in r.stderr  # the summary stays off stdout


def test_to_one_subscription_handled_once_by_a_worker(
    cli: Cli, bus: EventBus, client: redis.Redis, runtime: Runtime, archive: Archive
) -> None:
    seen = register(bus, "audit", "billing")
    broker = runtime.broker()
    r = cli(*archive.args("--to", "audit", "--batch-size", "9"))
    assert "replayed 50 events to subscription 'audit'" in r.stdout
    assert queued_indexes(client, bus, "audit") == list(range(10, 60))
    runtime.worker(broker)
    wait_until(lambda: len(seen["audit"]) >= 50, timeout=60, message="audit to handle it")
    broker.join("audit", timeout=30_000)
    assert sorted(seen["audit"].items) == [(i, True) for i in range(10, 60)]
    assert len(seen["billing"]) == 0
    wait_until(lambda: client.xlen(bus.keys.queue("audit")) == 0, message="acked")


def test_republish_from_the_archive(cli: Cli, bus: EventBus, client: redis.Redis,
                                    archive: Archive) -> None:
    out = cli(*archive.args("--republish")).stdout
    assert "replayed 50 events to their topics" in out
    got = bus.store.load_by_topic("order", limit=100)
    assert [e.data["i"] for e in got] == list(range(10, 60))
    assert all(e.metadata.get("chi_replay") for e in got)
    assert [e.metadata["chi_replay_of"] for e in got] == _ids(archive.events[10:60])
    assert all(e.id not in set(_ids(archive.events)) for e in got)  # new events


def _fail_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    original = QueueTarget.send
    count = [0]
    lock = threading.Lock()

    def failing(self: QueueTarget, *args: Any) -> Any:
        with lock:
            count[0] += 1
            n = count[0]
        if n > calls:
            raise RedisUnavailableError("connection lost (injected)")
        return original(self, *args)

    monkeypatch.setattr(QueueTarget, "send", failing)


@pytest.mark.parametrize("workers", ["1", "4"])
def test_checkpoint_resumes_after_the_last_delivered_event(
    cli: Cli, bus: EventBus, client: redis.Redis, archive: Archive,
    monkeypatch: pytest.MonkeyPatch, workers: str,
) -> None:
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    args = archive.args("--to", "audit", "--batch-size", "4", "--checkpoint", "arc-1",
                        "--workers", workers)
    with monkeypatch.context() as m:
        _fail_after(m, 3)
        r = cli(*args, ok=False)
    assert r.exit_code == 1 and "resume" in r.stderr
    first = queued_indexes(client, bus, "audit")
    assert 0 < len(first) < 50
    out = cli(*args).stdout
    assert "(resumed)" in out and "50 delivered in total" in out
    got = queued_indexes(client, bus, "audit")
    assert Counter(got) == Counter(range(10, 60))  # each exactly once across both runs
    if workers == "1":
        assert got == list(range(10, 60))
    assert "is complete" in cli(*args).stdout
    assert len(queued_indexes(client, bus, "audit")) == 50
    # the checkpoint belongs to this replay: a stream replay may not reuse it
    r = cli("replay", "--to", "audit", "--topic", "order", "--checkpoint", "arc-1", ok=False)
    assert r.exit_code == 1 and "belongs to another replay" in r.stderr


def test_rate_limits_the_archive_replay(cli: Cli, archive: Archive) -> None:
    start = time.monotonic()
    r = cli(*archive.args("--print", "--rate", "200/s", "--batch-size", "5"))
    assert time.monotonic() - start >= 0.2  # 50 events at 200/s: at least 0.25 s
    assert len(r.stdout.splitlines()) == 50


def test_progress_bar_on_a_terminal(cli: Cli, bus: EventBus, archive: Archive,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from chi_redis.cli import replay as cli_module
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    assert "replaying" not in cli(*archive.args("--to", "audit")).output
    monkeypatch.setattr(cli_module, "stdout_is_tty", lambda: True)
    out = cli(*archive.args("--dry-run")).stdout
    assert "replaying" in out and "would replay 50 events" in out


def test_archive_is_read_by_event_time_only(cli: Cli, archive: Archive) -> None:
    args = archive.args("--print")
    args[args.index("event-time")] = "append"
    r = cli(*args, ok=False)
    assert r.exit_code == 2 and "reads by event time" in r.stderr


def test_archive_replay_as_a_subprocess(sh: Sh, bus: EventBus, client: redis.Redis,
                                        archive: Archive) -> None:
    register(bus, "audit")
    StreamsBroker(bus, options=BrokerOptions(**FAST))
    proc = sh(*archive.args("--to", "audit", "--checkpoint", "arc-sh"))
    assert proc.returncode == 0, proc.stderr
    assert "replayed 50 events to subscription 'audit'" in proc.stdout
    assert queued_indexes(client, bus, "audit") == list(range(10, 60))
    printed = sh(*archive.args("--print"))
    assert [json.loads(x)["id"] for x in printed.stdout.splitlines()] == _ids(
        archive.events[10:60])


def test_python_api_republish_from_the_archive(bus: EventBus, archive: Archive) -> None:
    from chi_redis.ops.archive_replay import replay_archive
    from chi_redis.ops.replay import ReplayOptions
    from chi_redis.ops.targets import RepublishTarget
    from chi_redis.ops.timeparse import TimePoint

    store: Any = archive.open()
    try:
        report = replay_archive(
            store, RepublishTarget(bus), bus.codec, topics=["order"],
            since=TimePoint(archive.events[20].timestamp_us),
            until=TimePoint(archive.events[29].timestamp_us),
            options=ReplayOptions(batch_size=3, checkpoint="api-1"),
        )
        assert (report.delivered, report.total_delivered) == (10, 10)
        again = replay_archive(store, RepublishTarget(bus), bus.codec, topics=["order"],
                               since=TimePoint(archive.events[20].timestamp_us),
                               until=TimePoint(archive.events[29].timestamp_us),
                               options=ReplayOptions(batch_size=3, checkpoint="api-1"))
        assert again.already_complete
    finally:
        store.close()
    got = bus.store.load_by_topic("order", limit=100)
    assert [e.data["i"] for e in got] == list(range(20, 30))
    assert [e.metadata["chi_replay_of"] for e in got] == _ids(archive.events[20:30])

