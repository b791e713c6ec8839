"""FileEventStore beyond the contract suite: rotation, restarts, one writer, many readers."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chi_redis import Event, ValidationError
from chi_redis.store.files import FileEventStore, StoreLockedError

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def ev(i: int, topic: str = "user") -> Event:
    return Event(type=f"{topic}.changed", data={"i": i, "pad": "x" * 100},
                 timestamp=T0 + timedelta(seconds=i), metadata={"i": i})


def test_rotation_keeps_the_newest_files_and_answers_from_them(tmp_path: Path) -> None:
    events = [ev(i, "user" if i % 2 else "order") for i in range(400)]
    with FileEventStore(tmp_path, max_file_size="4KB", max_files=3) as store:
        for e in events:
            store.store(e)
        files = store.file_numbers()
        assert len(files) == 3
        assert all((tmp_path / f"events-{n:08d}.jsonl").stat().st_size <= 4096 for n in files)
        kept = store.count()
        assert 0 < kept < len(events)
        newest = events[-kept:]  # what survives is a suffix of what was written
        assert store.load(newest[0].id) == newest[0]
        assert store.load(events[0].id) is None
        assert store.load_by_topic("user", limit=1000) == [e for e in newest if e.topic == "user"]
        got = store.load_by_time_range(T0, T0 + timedelta(days=1))
        assert got == newest
        # A dropped event is no longer held, so storing it again writes it again.
        store.store(events[0])
        assert store.load(events[0].id) == events[0]


def test_reopened_store_answers_the_same(tmp_path: Path) -> None:
    events = [ev(i, ["user", "order", "billing"][i % 3]) for i in range(300)]
    with FileEventStore(tmp_path, max_file_size="8KB", max_files=50) as store:
        store.store_many(events)
        store.delete(events[5].id)
        before = {
            "topic": store.load_by_topic("order", offset=3, limit=20),
            "range": store.load_by_time_range(T0 + timedelta(seconds=10), T0 + timedelta(
                seconds=200), types=["user.*"]),
            "page": store.page_by_topic("billing", limit=7),
        }
    with FileEventStore(tmp_path, max_file_size="8KB", max_files=50) as again:
        assert again.load(events[5].id) is None
        assert again.load(events[6].id) == events[6]
        assert again.load_by_topic("order", offset=3, limit=20) == before["topic"]
        assert again.load_by_time_range(T0 + timedelta(seconds=10), T0 + timedelta(
            seconds=200), types=["user.*"]) == before["range"]
        assert again.page_by_topic("billing", limit=7) == before["page"]
        # Positions continue after the highest one on disk; duplicates still write nothing.
        assert again.store(events[7]) == "8"
        n = again.count()
        pos = again.store(ev(1000))
        assert int(pos) > 300 and again.count() == n + 1


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with FileEventStore(tmp_path) as store:
        store.store(ev(1))
        with pytest.raises(StoreLockedError, match="one writer at a time"):
            FileEventStore(tmp_path)
        code = (
            "import sys\nfrom chi_redis.store.files import FileEventStore, StoreLockedError\n"
            "try:\n    FileEventStore(sys.argv[1])\nexcept StoreLockedError:\n    sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
        assert proc.returncode == 3
        reader = FileEventStore(tmp_path, read_only=True)
        assert reader.load_by_topic("user") == store.load_by_topic("user")
        with pytest.raises(ValidationError):
            reader.store(ev(2))
        reader.close()
    with FileEventStore(tmp_path) as after:  # the lock went with the first writer
        assert after.count() == 1


def test_readers_see_new_lines_and_skip_a_partial_last_line(tmp_path: Path) -> None:
    writer = FileEventStore(tmp_path, max_file_size="2KB", max_files=100)
    reader = FileEventStore(tmp_path, read_only=True)
    first = [ev(i) for i in range(5)]
    writer.store_many(first)
    assert reader.load_by_topic("user") == first
    newest = tmp_path / f"events-{writer.file_numbers()[-1]:08d}.jsonl"
    with newest.open("ab") as f:  # a writer caught mid-line
        f.write(b'{"seq":99,"id":"half-writ')
    assert reader.load_by_topic("user") == first
    writer.close()
    reopened = FileEventStore(tmp_path, max_file_size="2KB", max_files=100)  # repairs it
    more = [ev(i) for i in range(5, 40)]
    reopened.store_many(more)
    assert reader.load_by_topic("user", limit=100) == first + more
    assert len(reopened.file_numbers()) > 1
    reopened.close()
    reader.close()


def test_sizes_and_counts_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        FileEventStore(tmp_path, max_files=0)
    with pytest.raises(ValidationError):
        FileEventStore(tmp_path, max_file_size=0)
