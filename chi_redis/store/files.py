"""An EventStore in JSON-lines files: one directory, rotated by size, oldest files dropped.

Layout: ``<directory>/events-00000001.jsonl``, ``events-00000002.jsonl``, … — one JSON object
per line, appended by the one writer (an exclusive ``flock`` on ``<directory>/.lock``; a
second writer gets :class:`StoreLockedError`).  A line is an event::

    {"seq":7,"id":"…","type":"user.created","topic":"user","ts":1709283600000000,
     "ver":"1.0","meta":{…},"data":{…}}

(``ts``: event time in µs since the epoch, UTC; ``seq``: the store's position id) or a
tombstone ``{"seq":8,"id":"…","deleted":true}``: deletes append a tombstone rather than
rewrite a file, so files are only ever appended to and readers never see a file change under
them.  A file is closed when the next line would take it past ``max_file_size`` and a new one
begun; with more than ``max_files`` files the oldest is deleted, with its events.

The in-memory index (per event: id, topic, type, time, file and offset — not the payload) is
rebuilt by scanning the files on open.  Readers (``read_only=True``, any number, any process)
take no lock; before each query they read what was appended since, and ignore a last line
that is not complete yet.  The writer truncates such a line (a crash mid-write) on open.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import msgspec

from ..errors import ChiError, ValidationError
from ..events.codec import Codec
from ..events.event import Event
from ..events.names import validate_name
from .query import check_page, check_range, type_matcher

__all__ = ["FileEventStore", "StoreLockedError"]

_NAME = re.compile(r"events-(\d{8})\.jsonl")
_DEFAULT_MAX = 100 << 20


class StoreLockedError(ChiError):
    """Another process is writing to this file store's directory."""


class _Head(msgspec.Struct):
    """What the index needs of a line (the payload is skipped while scanning)."""

    seq: int
    id: str
    type: str = ""
    topic: str = ""
    ts: int = 0
    deleted: bool = False


class _Line(msgspec.Struct, omit_defaults=True):
    seq: int
    id: str
    type: str = ""
    topic: str = ""
    ts: int = 0
    ver: str = "1.0"
    meta: msgspec.Raw = msgspec.Raw(b"{}")
    data: msgspec.Raw = msgspec.Raw(b"null")
    deleted: bool = False


class _Rec(NamedTuple):
    seq: int
    id: str
    topic: str
    type: str
    ts: int
    file: int
    offset: int
    size: int


_HEAD = msgspec.json.Decoder(_Head)
_LINE = msgspec.json.Decoder(_Line)
_ENC = msgspec.json.Encoder()


class FileEventStore:
    """EventStore over JSON-lines files in ``directory``; same contract as
    :class:`~chi_redis.store.EventStore`.

    ``max_file_size``: bytes, or a size such as ``"100MB"``; ``max_files``: files kept.
    Thread-safe.  Call :meth:`close` (or use ``with``) to release the writer's lock.
    """

    def __init__(self, directory: str | os.PathLike[str], *,
                 max_file_size: int | str = _DEFAULT_MAX, max_files: int = 10,
                 read_only: bool = False, codec: Codec | None = None) -> None:
        if isinstance(max_file_size, str):
            from ..config.checks import parse_size

            max_file_size = parse_size(max_file_size)
        if not isinstance(max_file_size, int) or max_file_size < 1:
            raise ValidationError("max_file_size must be positive", field="max_file_size")
        if not isinstance(max_files, int) or max_files < 1:
            raise ValidationError("max_files must be at least 1", field="max_files")
        self.directory = Path(directory)
        self.max_file_size, self.max_files, self.read_only = max_file_size, max_files, read_only
        self._codec = codec or Codec("json")
        self._lock = threading.RLock()
        self._by_id: dict[str, _Rec] = {}
        self._topics: dict[str, dict[int, _Rec]] = {}  # topic -> seq -> record, seq order
        self._files: dict[int, list[str]] = {}  # file number -> ids stored in it
        self._fds: dict[int, int] = {}  # file number -> read fd
        self._scanned: dict[int, int] = {}  # file number -> bytes indexed
        self._seq = 0
        self._lock_fd: int | None = None
        self._out: int | None = None  # append fd of the newest file
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        self._refresh(repair=not read_only)

    def __repr__(self) -> str:
        return f"FileEventStore({str(self.directory)!r})"

    def __enter__(self) -> FileEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the files and release the writer's lock."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            if self._out is not None:
                os.close(self._out)
                self._out = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None

    # files ------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"another process is writing to the file store in {self.directory}: one"
                " writer at a time (open it with read_only=True to read)") from None
        self._lock_fd = fd

    def _path(self, no: int) -> Path:
        return self.directory / f"events-{no:08d}.jsonl"

    def file_numbers(self) -> list[int]:
        """The numbers of the files the directory holds now, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _NAME.fullmatch(n)))

    def _refresh(self, repair: bool = False) -> None:
        """Index what was appended since the last look; forget files that were dropped."""
        present = self.file_numbers()
        for no in [n for n in self._files if n not in present]:
            self._forget(no)
        for no in present:
            if no not in self._fds:
                try:
                    self._fds[no] = os.open(self._path(no), os.O_RDONLY)
                except FileNotFoundError:  # dropped by the writer meanwhile
                    continue
                self._files[no] = []
                self._scanned[no] = 0
            self._scan(no, repair and no == present[-1])

    def _scan(self, no: int, repair: bool) -> None:
        fd, start = self._fds[no], self._scanned[no]
        size = os.fstat(fd).st_size
        if size <= start:
            return
        chunk = os.pread(fd, size - start, start)
        end = chunk.rfind(b"\n") + 1  # a last line without its newline is not written yet
        if repair and end < len(chunk):
            os.truncate(self._path(no), start + end)
        pos = 0
        while pos < end:
            nl = chunk.index(b"\n", pos)
            head = _HEAD.decode(chunk[pos:nl])
            self._apply(head, no, start + pos, nl + 1 - pos)
            pos = nl + 1
        self._scanned[no] = start + end

    def _apply(self, head: _Head, no: int, offset: int, size: int) -> None:
        self._seq = max(self._seq, head.seq)
        old = self._by_id.pop(head.id, None)
        if old is not None:
            self._topics[old.topic].pop(old.seq, None)
        if head.deleted:
            return
        rec = _Rec(head.seq, head.id, head.topic, head.type, head.ts, no, offset, size)
        self._by_id[head.id] = rec
        self._topics.setdefault(head.topic, {})[head.seq] = rec
        self._files[no].append(head.id)

    def _forget(self, no: int) -> None:
        for event_id in self._files.pop(no, []):
            rec = self._by_id.get(event_id)
            if rec is not None and rec.file == no:
                del self._by_id[event_id]
                self._topics[rec.topic].pop(rec.seq, None)
        fd = self._fds.pop(no, None)
        if fd is not None:
            os.close(fd)
        self._scanned.pop(no, None)

    def _append(self, lines: list[bytes]) -> None:
        """Append lines to the newest file, rotating before a line that would overflow it
        (one write per file touched)."""
        buf: list[bytes] = []
        no = max(self._files) if self._files else 0
        used = self._scanned.get(no, 0)
        for line in lines:
            if no == 0 or (used and used + len(line) > self.max_file_size):
                self._flush(no, buf)
                no, used, buf = self._rotate(no + 1), 0, []
            buf.append(line)
            used += len(line)
        self._flush(no, buf)

    def _flush(self, no: int, buf: list[bytes]) -> None:
        if not buf:
            return
        assert self._out is not None
        data = b"".join(buf)
        while data:  # a regular file takes it in one write; loop for the odd short write
            data = data[os.write(self._out, data):]
        self._scan(no, False)

    def _rotate(self, no: int) -> int:
        if self._out is not None:
            os.close(self._out)
        self._out = os.open(self._path(no), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fds[no] = os.open(self._path(no), os.O_RDONLY)
        self._files[no], self._scanned[no] = [], 0
        for old in sorted(self._files)[: max(len(self._files) - self.max_files, 0)]:
            self._forget(old)
            self._path(old).unlink(missing_ok=True)
        return no

    def _ensure_out(self) -> None:
        if self.read_only:
            raise ValidationError("this file store was opened read_only", field="read_only")
        if self._out is None and self._files:
            self._out = os.open(self._path(max(self._files)), os.O_WRONLY | os.O_APPEND)

    def _read(self, rec: _Rec) -> Event:
        fd = self._fds[rec.file]
        line = _LINE.decode(os.pread(fd, rec.size, rec.offset))
        fields = {b"id": line.id.encode(), b"type": line.type.encode(),
                  b"ts": str(line.ts).encode(), b"ver": line.ver.encode(),
                  b"meta": bytes(line.meta), b"enc": b"js", b"data": bytes(line.data)}
        return self._codec.decode(fields, topic=line.topic, stream=str(self._path(rec.file)),
                                  entry_id=str(rec.seq))

    def _line(self, event: Event, seq: int) -> bytes:
        _, _, ts, ver, meta, data = self._codec.encode_parts(event)
        return _ENC.encode(_Line(seq, event.id, event.type, event.topic, ts, ver,
                                 msgspec.Raw(meta), msgspec.Raw(data))) + b"\n"

    def _reader(self) -> None:
        if self.read_only:
            self._refresh()

    # EventStore -------------------------------------------------------------------------
    def store(self, event: Event) -> str:
        """Store ``event`` (an id the files still hold writes nothing); returns its seq."""
        with self._lock:
            known = self._by_id.get(event.id)
            if known is not None:
                return str(known.seq)
            self.store_many([event])
            return str(self._by_id[event.id].seq)

    def store_many(self, events: Iterable[Event]) -> int:
        """Append a batch (ids already held are skipped); returns how many were new."""
        with self._lock:
            self._ensure_out()
            lines: list[bytes] = []
            seen: set[str] = set()
            for e in events:
                if e.id in self._by_id or e.id in seen:
                    continue
                seen.add(e.id)
                lines.append(self._line(e, self._seq + len(lines) + 1))
            self._append(lines)
            return len(lines)

    def load(self, event_id: str) -> Event | None:
        with self._lock:
            self._reader()
            rec = self._by_id.get(event_id)
            return self._read(rec) if rec is not None else None

    def load_by_topic(self, topic: str, offset: int = 0, limit: int = 100) -> list[Event]:
        check_page(topic, offset, limit)
        with self._lock:
            self._reader()
            recs = list(self._topics.get(topic, {}).values())[offset : offset + limit]
            return [self._read(r) for r in recs]

    def page_by_topic(
        self, topic: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[Event], str | None]:
        check_page(topic, 0, limit)
        try:
            start = int(after) if after is not None else 0
        except ValueError:
            raise ValidationError(f"invalid cursor {after!r}", field="after") from None
        with self._lock:
            self._reader()
            recs = [r for s, r in self._topics.get(topic, {}).items() if s > start][:limit]
            events = [self._read(r) for r in recs]
        return events, (str(recs[-1].seq) if recs else after)

    def load_by_time_range(
        self,
        start: datetime,
        end: datetime,
        *,
        topic: str | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        lo, hi = check_range(start, end, limit)
        if topic is not None:
            validate_name(topic, "topic")
        match = type_matcher(types)
        with self._lock:
            self._reader()
            recs = [
                r for r in self._by_id.values()
                if lo <= r.ts <= hi and (topic is None or r.topic == topic)
                and (match is None or match(r.type))
            ]
            recs.sort(key=lambda r: (r.ts, r.id))
            if limit is not None:
                recs = recs[:limit]
            return [self._read(r) for r in recs]

    def time_pages(self, lo_us: int, hi_us: int, *, topic: str | None = None,
                   page: int = 5000) -> Iterator[list[Event]]:
        """Events with event time in ``[lo_us, hi_us]`` (µs), by (timestamp, id), in pages
        (payloads read page by page; the archive replay's reader)."""
        with self._lock:
            self._reader()
            recs = sorted((r for r in self._by_id.values()
                           if lo_us <= r.ts <= hi_us and (topic is None or r.topic == topic)),
                          key=lambda r: (r.ts, r.id))
        for i in range(0, len(recs), page):
            with self._lock:
                # a record dropped since (rotation, tombstone) is skipped, not an error
                out = [self._read(r) for r in recs[i : i + page] if self._by_id.get(r.id) == r]
            yield out

    def count_time_range(self, lo_us: int, hi_us: int, *, topic: str | None = None) -> int:
        """How many events have event time in ``[lo_us, hi_us]`` (µs)."""
        with self._lock:
            self._reader()
            return sum(1 for r in self._by_id.values()
                       if lo_us <= r.ts <= hi_us and (topic is None or r.topic == topic))

    def delete(self, event_id: str) -> bool:
        """Append a tombstone for ``event_id``; True if the files held it."""
        with self._lock:
            self._ensure_out()
            if event_id not in self._by_id:
                return False
            self._seq += 1
            self._append([_ENC.encode(_Line(self._seq, event_id, deleted=True)) + b"\n"])
            return True

    def count(self) -> int:
        """How many events the files hold."""
        with self._lock:
            self._reader()
            return len(self._by_id)

