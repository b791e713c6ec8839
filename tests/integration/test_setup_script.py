"""``./scripts/setup`` is quiet and idempotent: a second run returns in well under 3 s.

Runs the real script on this checkout's own ``.venv``: the first run may install (when the
stamp is missing or stale), the second must find the stamp current and do nothing.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run() -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(["bash", "scripts/setup"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    return proc, time.monotonic() - started


def test_a_second_run_is_instant_and_silent() -> None:
    first, _ = _run()
    assert first.returncode == 0, first.stdout + first.stderr
    # Quiet even when it installs: a line before and one after, pip's output in the log.
    assert len((first.stdout + first.stderr).splitlines()) <= 2, first.stdout + first.stderr
    second, took = _run()
    assert second.returncode == 0, second.stderr
    assert second.stdout == second.stderr == ""
    assert took < 3.0, took
    # The stamp is the hash of what the install depends on.
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()
                          + (ROOT / "scripts" / "setup").read_bytes()).hexdigest()
    assert (ROOT / ".venv" / ".chi-setup").read_text().strip() == want


def test_ci_installs_from_scratch() -> None:
    # scripts/test forces the install under CI (.ci/run sets CI=true), whatever the stamp.
    text = (ROOT / "scripts" / "test").read_text()
    assert 'if [ "${CI:-}" = true ]; then\n  CHI_SETUP_FORCE=1 bash scripts/setup' in text
    assert '"${CHI_SETUP_FORCE:-0}" != 1' in (ROOT / "scripts" / "setup").read_text()
