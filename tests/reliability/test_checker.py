"""The checker sees what it must: lost, unexpected, duplicated and recovered events, from
handler logs written by other processes, including one killed right after its write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.figures import record
from support.history import History, Verdict, record_commit, record_start
from support.processes import ROOT, TESTS


def test_clean_history_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = History(tmp_path)
    monkeypatch.setenv("CHI_TEST_HISTORY", str(tmp_path))
    for i in range(5):
        history.invoke(f"e{i}")
        history.ok(f"e{i}")
        record_start(f"e{i}")
        record_commit(f"e{i}", "1-0")
    verdict = history.check()
    verdict.assert_nothing_lost()
    assert verdict.figures() == {"attempted": 5, "ok": 5, "committed": 5, "lost": 0,
                                 "unexpected": 0, "duplicated": 0, "recovered": 0,
                                 "ok_frac": 1.0}
    assert history.committed_all_ok()


def test_lost_unexpected_duplicated_and_recovered_are_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = History(tmp_path)
    monkeypatch.setenv("CHI_TEST_HISTORY", str(tmp_path))
    for name in ("ok1", "lost", "dup", "timeout", "refused"):
        history.invoke(name)
    history.ok("ok1")
    history.ok("lost")
    history.ok("dup")
    history.info("timeout")
    history.fail("refused")
    for name in ("ok1", "dup", "dup", "dup", "timeout", "ghost"):
        record_commit(name)
    verdict = history.check()
    assert verdict.lost == ["lost"]
    assert verdict.unexpected == ["ghost"]
    assert verdict.duplicated == 2 and verdict.duplicated_ids == ["dup"]
    assert verdict.recovered == 1
    assert not history.committed_all_ok()
    with pytest.raises(AssertionError, match="1 events lost"):
        verdict.assert_nothing_lost()
    with pytest.raises(AssertionError, match="2 duplicates"):
        Verdict(attempted=1, ok=1, committed=1, duplicated=2,
                duplicated_ids=["dup"]).assert_nothing_lost()


def test_an_ok_publish_stays_ok_when_a_retry_times_out(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.invoke("e")
    history.ok("e")
    history.info("e")
    assert history.ok_ids() == {"e"}
    with pytest.raises(AssertionError, match="without an invoke"):
        history.ok("never-invoked")


def test_a_line_written_before_kill_9_is_kept(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from support.history import record_commit\n"
        "for i in range(200):\n"
        "    record_commit(f'k{i}', 'x' * 50)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "CHI_TEST_HISTORY": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    history = History(tmp_path)
    assert history.commits() == {f"k{i}": 1 for i in range(200)}


def test_recorded_figures_reach_the_report_table(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHI_RELIABILITY_ARTIFACTS", str(tmp_path))
    history = History(tmp_path / "history")
    history.invoke("e1")
    history.ok("e1")
    path = record("f0_example", **history.check().figures(), redeliver_s=1.23456,
                  dead_letters={"decode_error": 2})
    assert json.loads(path.read_text())["lost"] == 1
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "reliability-report")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[0].startswith("| case | lost | unexpected |")
    row = next(line for line in out.splitlines() if line.startswith("| f0_example"))
    assert row.startswith("| f0_example | 1 | 0 | 0 | 0 |")
    assert "dead_letters decode_error 2" in row and "redeliver_s 1.23" in row


def test_report_without_figures_says_so(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reliability-report"),
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no figures" in proc.stderr
