"""The benchmark suite runs from this checkout, every scenario and every peer: ``bench/run
--smoke`` (tiny N) exits 0 and prints the whole table.

This keeps the suite from rotting; it never looks at a speed (bench/README.md).  The suite
starts a redis-server of its own on a free port and stops it by PID; the outbox and archive
steps use the development PostgreSQL when it answers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _rows() -> list[Any]:
    """The rows of ``bench/table.py``, loaded by path (bench/ is not on sys.path)."""
    spec = importlib.util.spec_from_file_location("chi_bench_table", ROOT / "bench" / "table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return list(module.ROWS)


ROWS = _rows()


def _rabbitmq_answers() -> bool:
    """Whether the RabbitMQ the bench uses (127.0.0.1:5672) accepts a connection."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5672), 2):
        return True
    return False


@pytest.mark.timeout(900)
def test_the_smoke_run_prints_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "results.txt"
    env = {**os.environ, "PY": sys.executable, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(["bash", "bench/run", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=840, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == len(ROWS) + 1, done.stdout  # the header line, then one per row
    for row, line in zip(ROWS, table[1:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row.scenario, line
        # a figure, or "n/a (why)" when this chi-redis or machine cannot measure it
        assert re.match(r"^([\d,.]+ ?(/s|ms|MB|B)( \(at [\d]+/s\))?|n/a \(.+\))$", cells[1]), line
        if row.base:
            assert cells[2].startswith(f"{row.base_label}: ") and "missing" not in cells[2], line
    saved = out.read_text()
    for peer in ("fs.e2e.single", "dramatiq.stub.process.threads8", "taskiq.process"):
        assert re.search(rf"^{re.escape(peer)} \d", saved, re.M), peer
    # The issue #13 steps measured (not n/a): the cluster step started its own 3 masters and
    # ran its worker processes on them; the Kafka step its own tansu; the RabbitMQ step
    # whenever the broker answers (else its rows say why).
    scale = ["chi.cluster.e2e.procs2.threads4", "chi.single.e2e.procs2.threads4",
             "kafka.chi.e2e", "kafka.raw.e2e"]
    if _rabbitmq_answers():
        scale += ["rabbitmq.chi.e2e", "rabbitmq.raw.e2e", "rabbitmq.chi.publish_batch.1000"]
    for name in scale:
        assert re.search(rf"^{re.escape(name)} \d", saved, re.M), name
    assert "redis-server" in saved.splitlines()[1] and table[0] in saved
