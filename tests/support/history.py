"""One checker for every reliability case: what was published against what was handled.

Modelled on Jepsen's ``total-queue`` checker.  The test logs each publish attempt of an event
id (``invoke``) and how it ended: ``ok`` (the publish returned an entry id), ``fail`` (it
raised and certainly wrote nothing) or ``info`` (it raised and the outcome is unknown, e.g. a
timeout after the request was sent).  Handlers, in whatever process they run, log each
``start`` and ``commit`` of an event to an append-only file of the same folder
(:func:`record_start` / :func:`record_commit`: one ``write`` of one short line with
``O_APPEND``, so lines of several processes never interleave, and a line written before a
``kill -9`` is kept: it is in the kernel's page cache).  :meth:`History.check` then counts:

- **lost**: published ``ok``, never committed. Must be 0.
- **unexpected**: committed, never published (not even attempted). Must be 0.
- **duplicated**: commits beyond the first of an event, summed over events.
- **recovered**: published ``fail`` or ``info``, yet committed.

A handler finds the folder in the ``CHI_TEST_HISTORY`` environment variable.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV = "CHI_TEST_HISTORY"


@dataclass
class Verdict:
    """What :meth:`History.check` found."""

    attempted: int
    ok: int
    committed: int
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicated: int = 0
    duplicated_ids: list[str] = field(default_factory=list)
    recovered: int = 0

    @property
    def ok_frac(self) -> float:
        return self.ok / self.attempted if self.attempted else 0.0

    def figures(self) -> dict[str, Any]:
        """The counts, for the case's JSON figures."""
        return {"attempted": self.attempted, "ok": self.ok, "committed": self.committed,
                "lost": len(self.lost), "unexpected": len(self.unexpected),
                "duplicated": self.duplicated, "recovered": self.recovered,
                "ok_frac": round(self.ok_frac, 4)}

    def assert_nothing_lost(self, *, max_duplicated: int | None = 0) -> None:
        """lost = 0, unexpected = 0 and at most ``max_duplicated`` duplicates (None: any)."""
        assert not self.lost, f"{len(self.lost)} events lost, e.g. {self.lost[:5]}"
        assert not self.unexpected, (
            f"{len(self.unexpected)} unexpected events, e.g. {self.unexpected[:5]}")
        if max_duplicated is not None:
            assert self.duplicated <= max_duplicated, (
                f"{self.duplicated} duplicates (bound {max_duplicated}), "
                f"e.g. {self.duplicated_ids[:5]}")


class History:
    """The publish log (this process) and the handlers' logs (any process) of one case."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._attempts: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        """The environment entry that points worker processes at this history."""
        return {ENV: str(self.folder)}

    def invoke(self, event_id: str) -> None:
        with self._lock:
            self._attempts.setdefault(event_id, "invoke")

    def ok(self, event_id: str) -> None:
        self._end(event_id, "ok")

    def fail(self, event_id: str) -> None:
        self._end(event_id, "fail")

    def info(self, event_id: str) -> None:
        self._end(event_id, "info")

    def _end(self, event_id: str, outcome: str) -> None:
        with self._lock:
            before = self._attempts.get(event_id)
            if before is None:
                raise AssertionError(f"{outcome} for {event_id} without an invoke")
            # A retried publish that once succeeded stays ok.
            if before != "ok":
                self._attempts[event_id] = outcome

    def outcomes(self) -> Counter[str]:
        with self._lock:
            return Counter(self._attempts.values())

    def ok_ids(self) -> set[str]:
        with self._lock:
            return {i for i, o in self._attempts.items() if o == "ok"}

    def commits(self) -> Counter[str]:
        """Commits per event id, read from every handler log of the folder."""
        return self._read("commit")

    def starts(self) -> Counter[str]:
        """Handler starts per event id (a start without a commit: the handler died or failed)."""
        return self._read("start")

    def _read(self, kind: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for path in sorted(self.folder.glob("handler-*.log")):
            for line in path.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 2 and parts[0] == kind:
                    counts[parts[1]] += 1
        return counts

    def committed_all_ok(self) -> bool:
        """Whether every ``ok`` publish has a commit (a condition to wait on)."""
        done = self.commits()
        return all(i in done for i in self.ok_ids())

    def check(self) -> Verdict:
        with self._lock:
            attempts = dict(self._attempts)
        commits = self.commits()
        ok = {i for i, o in attempts.items() if o == "ok"}
        dup_ids = sorted(i for i, n in commits.items() if n > 1)
        return Verdict(
            attempted=len(attempts),
            ok=len(ok),
            committed=len(commits),
            lost=sorted(ok - commits.keys()),
            unexpected=sorted(commits.keys() - attempts.keys()),
            duplicated=sum(commits[i] - 1 for i in dup_ids),
            duplicated_ids=dup_ids,
            recovered=sum(1 for i, o in attempts.items() if o in ("fail", "info") and i in commits),
        )


def _append(kind: str, event_id: str, extra: str) -> None:
    folder = os.environ.get(ENV)
    if not folder:
        raise RuntimeError(f"{ENV} is not set: the handler has no history to write to")
    path = os.path.join(folder, f"handler-{os.getpid()}.log")
    line = f"{kind}\t{event_id}\t{extra}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def record_start(event_id: str, extra: str = "") -> None:
    """Log, from a handler, that it starts on ``event_id``."""
    _append("start", event_id, extra)


def record_commit(event_id: str, extra: str = "") -> None:
    """Log, from a handler, that its effect for ``event_id`` is done."""
    _append("commit", event_id, extra)
