"""The runtime counters and histograms of a real ``dramatiq chi_redis.worker`` process,
scraped from Dramatiq's Prometheus port (multiprocess directory) after a known scenario,
with ``CHI_LOG_FORMAT=json`` log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, wait_until

from chi_redis import Event, EventBus

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.redis

CONFIG = """\
events:
  worker:
    lease_ms: 1000
    reclaim_interval_ms: 200
"""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def worker(real_client: redis.Redis, ns: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    config = tmp_path / "events.yaml"
    config.write_text(CONFIG)
    port = free_port()
    env = {
        **os.environ, "CHI_CONFIG": str(config), "CHI_REDIS_URL": "redis://127.0.0.1:6379/0",
        "CHI_NAMESPACE": ns, "CHI_METRICS_PORT": str(port), "CHI_LOG_FORMAT": "json",
        "dramatiq_prom_port": str(port), "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_db": str(tmp_path / "prom"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "chi_redis.worker", "proc_telemetry",
             "--processes", "1", "--threads", "2"],
            env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield port, log_path
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_a_worker_exports_published_handled_duration_reclaimed_and_dead_lettered(
    real_client: redis.Redis, ns: str, worker: tuple[int, Path]
) -> None:
    port, log_path = worker
    bus = EventBus(real_client, namespace=ns)
    stream = bus.keys.stream("tm")
    # Given a consumer of tm-ok that read two entries and died (the group exists first:
    # the worker's "start new" registration keeps it as it is)
    real_client.xgroup_create(stream, "tm-ok", id="$", mkstream=True)
    ghosts = [Event(type="tm.ok", data={"ghost": i}) for i in range(2)]
    bus.publish_batch(ghosts)
    read = real_client.xreadgroup("tm-ok", "dead-consumer", {stream: ">"}, count=10)
    assert len(read[0][1]) == 2
    wait_until(lambda: real_client.hlen(f"{ns}:subs") == 2, 60, "registration")
    wait_until(lambda: scrape(port), 60, "the metrics page")

    # When the worker handles 3 ok events, 2 failing ones and 4 no subscription takes
    events = ([Event(type="tm.ok", data={"i": i}) for i in range(3)]
              + [Event(type="tm.fail", data={"i": i}) for i in range(2)]
              + [Event(type="tm.other", data={"i": i}) for i in range(4)])
    bus.publish_batch(events)

    # Then its counters say so, by subscription and outcome
    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        s = scrape(port)
        done = (value(s, "chi_events_handled_total", subscription="tm-ok", outcome="ok") == 5
                and value(s, "chi_events_handled_total", subscription="tm-fail",
                          outcome="dead_lettered") == 2
                and value(s, "chi_events_handled_total", subscription="tm-fail",
                          outcome="filtered") == 7
                and value(s, "chi_events_handled_total", subscription="tm-ok",
                          outcome="filtered") == 6)
        return s if done else None

    s = wait_until(settled, 60, "the scenario's counters")
    handled = "chi_events_handled_total"
    assert value(s, handled, subscription="tm-fail", outcome="retried") == 2
    assert value(s, handled, subscription="tm-fail", outcome="ok") == 0
    assert value(s, "chi_dead_lettered_total", subscription="tm-fail",
                 reason="retries_exhausted") == 2
    assert value(s, "chi_reclaimed_total", subscription="tm-ok") == 2
    assert value(s, "chi_handler_duration_seconds_count", subscription="tm-ok") == 5
    assert value(s, "chi_handler_duration_seconds_count", subscription="tm-fail") == 4
    assert value(s, "chi_handler_duration_seconds_bucket", subscription="tm-ok",
                 le="+Inf") == 5
    # published in the worker: the tm-ok handler's audit events (the test's own publishes
    # are counted in the test process, not here)
    assert value(s, "chi_events_published_total", topic="audit") == 5
    assert value(s, "chi_events_published_total", topic="tm") == 0

    # And its log lines are JSON, with the context fields and no secrets
    def dead_letter_lines() -> list[dict[str, object]]:
        out = []
        for line in log_path.read_text(errors="replace").splitlines():
            start = line.find("{")
            if start >= 0 and '"dead-lettered' in line:
                out.append(json.loads(line[start:]))
        return out

    lines = wait_until(lambda: len(x := dead_letter_lines()) == 2 and x, 60, "log lines")
    assert {(x["subscription"], x["topic"], x["type"]) for x in lines} == {
        ("tm-fail", "tm", "tm.fail")}
    assert {x["event_id"] for x in lines} == {e.id for e in events[3:5]}
    log = log_path.read_text(errors="replace")
    assert any('"reclaimed 2 entries' in line for line in log.splitlines()), log[-3000:]
    ours = [line for line in log.splitlines() if '"logger": "chi_redis' in line]
    assert ours and "hunter2" not in "".join(ours)


def test_metrics_disabled_records_nothing(real_client: redis.Redis, ns: str,
                                          tmp_path: Path) -> None:
    code = (
        "import sys, os\n"
        "from chi_redis.observe import metrics\n"
        "import chi_redis.worker as w\n"
        "from chi_redis import Event\n"
        "w.bus.publish(Event(type='off.thing', data=1))\n"
        "print(metrics.enabled(), 'prometheus_client' in sys.modules)\n"
    )
    config = tmp_path / "events.yaml"
    config.write_text("events:\n  monitoring:\n    metrics_enabled: false\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHI_NAMESPACE": ns,
           "CHI_CONFIG": str(config), "CHI_REDIS_URL": "redis://127.0.0.1:6379/0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]  # nothing recorded: never even imported
