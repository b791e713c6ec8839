"""Logs (chi_redis.observe.logs): one ``chi_redis.*`` logger tree, JSON lines with the
context fields, secrets redacted, dead-letter and reclaim storms rate-limited."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import fakeredis
import pytest
from support import Recorder, wait_until

from chi_redis import Event, EventBus
from chi_redis.embedded import InProcessWorker
from chi_redis.observe.logs import JsonFormatter, RateLimiter, install_json_logs, use_json_logs
from chi_redis.runtime import deadletters
from chi_redis.runtime.broker import BrokerOptions

ROOT = Path(__file__).resolve().parents[2]


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def captured() -> io.StringIO:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("chi_redis")
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(old)


def test_every_module_logs_below_chi_redis() -> None:
    bad = []
    for path in (ROOT / "chi_redis").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"logging\.getLogger\(([^)]*)\)", text):
            arg = m.group(1).strip()
            literal = arg[:1] in ("'", '"')  # a name computed from a list is checked there
            if literal and not arg.strip("\"'").startswith("chi_redis"):
                bad.append(f"{path.relative_to(ROOT)}: getLogger({arg})")
        if re.search(r"\blogging\.(debug|info|warning|error|exception|critical)\(", text):
            bad.append(f"{path.relative_to(ROOT)}: logs to the root logger")
    assert bad == []


def test_a_json_line_carries_the_context_fields_and_no_secrets() -> None:
    record = logging.LogRecord("chi_redis.x", logging.WARNING, __file__, 1,
                               "connect to redis://u:s3cret@h:6379 failed, token=abc123", (),
                               None)
    record.__dict__.update(subscription="billing", topic="invoice", event_id="e1",
                           type="invoice.issued")
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "chi_redis.x"
    assert (line["subscription"], line["topic"], line["event_id"], line["type"]) == (
        "billing", "invoice", "e1", "invoice.issued")
    assert "s3cret" not in line["message"] and "abc123" not in line["message"]


def test_use_json_logs_reads_chi_log_format() -> None:
    assert use_json_logs({"CHI_LOG_FORMAT": "json"}) and use_json_logs({"CHI_LOG_FORMAT": "JSON"})
    assert not use_json_logs({}) and not use_json_logs({"CHI_LOG_FORMAT": "text"})
    logger = logging.getLogger("chi_redis.tests.install")
    logger.propagate = False
    try:
        install_json_logs(logger)
        (handler,) = logger.handlers
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        logger.handlers.clear()
        logger.propagate = True


def test_a_failing_handler_logs_its_dead_letter_as_one_redacted_json_line(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A limiter of its own: the process-wide one may still be spent by an earlier test's
    # dead-letter storm (its window is 10 s).
    monkeypatch.setattr(deadletters, "DEAD_LETTER_LOG",
                        RateLimiter(logging.getLogger(deadletters.__name__), "dead letters"))
    bus = EventBus.embedded(namespace="logged")
    try:
        @bus.subscribe("billing", types=["invoice.*"], max_retries=0)
        def bill(event: Event) -> None:
            raise RuntimeError("cannot connect: password=hunter2")

        event = Event(type="invoice.issued", data={"card": "4111-secret-payload"})
        with InProcessWorker(bus, options=BrokerOptions(reclaim_interval_ms=200)) as worker:
            bus.publish(event)
            wait_until(lambda: bus.dead_letters("billing"), 60, "the dead letter")
            worker.drain(60)
    finally:
        bus.close()
    lines = json_lines(captured)
    dead = [x for x in lines if "dead-lettered" in str(x["message"])]
    assert len(dead) == 1, lines
    (line,) = dead
    assert (line["subscription"], line["topic"], line["event_id"], line["type"]) == (
        "billing", "invoice", event.id, "invoice.issued")
    assert line["reason"] == "retries_exhausted"
    text = captured.getvalue()
    assert "hunter2" not in text and "4111-secret-payload" not in text


def test_a_dead_letter_storm_logs_a_bounded_number_of_lines_and_a_summary(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = 1.0
    limiter = RateLimiter(logging.getLogger(deadletters.__name__), "dead letters", burst=20,
                          window_s=window)
    monkeypatch.setattr(deadletters, "DEAD_LETTER_LOG", limiter)
    client = fakeredis.FakeRedis(version=(7, 0))
    bus = EventBus(client, namespace="storm")
    bus.subscribe("fragile", types=["job.*"], max_retries=0)(lambda e: 1 / 0)
    with InProcessWorker(bus, options=BrokerOptions(reclaim_interval_ms=100)) as worker:
        started = time.monotonic()
        bus.publish_batch([Event(type="job.ran", data={"i": i}) for i in range(1000)])
        wait_until(lambda: client.xlen(bus.keys.dlq("fragile")) == 1000, 120, "1000 dead letters")
        windows = (time.monotonic() - started) / window + 1
        # Every dead letter is either logged or counted in a "… N more" summary, logged by
        # the first line after its window or by the consumer's maintenance once it ended.
        wait_until(lambda: accounted(captured) == 1000, 60, "every dead letter accounted")
        worker.drain(60)
    lines = [x for x in json_lines(captured) if x["logger"] == deadletters.__name__]
    one_by_one = [x for x in lines if "dead-lettered" in str(x["message"])]
    summaries = [x for x in lines if "more dead letters" in str(x["message"])]
    assert 20 <= len(one_by_one) <= 20 * windows, (len(one_by_one), windows)
    assert len(one_by_one) < 500  # bounded: far from one line per dead letter
    assert summaries


def accounted(captured: io.StringIO) -> int:
    lines = [x for x in json_lines(captured) if x["logger"] == deadletters.__name__]
    return sum(int(str(x["count"])) if "more dead letters" in str(x["message"]) else
               "dead-lettered" in str(x["message"]) for x in lines)


def test_the_rate_limiter_lets_a_burst_through_then_summarises() -> None:
    logger = logging.getLogger("chi_redis.tests.limiter")
    seen = Recorder()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.add(record.getMessage())

    logger.addHandler(Keep())
    try:
        limiter = RateLimiter(logger, "things", burst=3, window_s=60)
        assert [limiter.allow() for _ in range(10)] == [True] * 3 + [False] * 7
        limiter.flush()  # the window has not ended: nothing yet
        assert seen.items() == []
        limiter.flush(force=True)
        assert seen.items() == ["… 7 more things (not logged one by one)"]
    finally:
        logger.handlers.clear()


def test_the_cli_writes_json_lines_when_asked() -> None:
    env = {**os.environ, "CHI_LOG_FORMAT": "json", "CHI_LOG_LEVEL": "INFO",
           "CHI_REDIS_URL": "redis://127.0.0.1:1/0"}
    code = ("import logging, sys; sys.argv = ['chi-redis', '--help'];"
            "from chi_redis.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "logging.getLogger('chi_redis.cli').warning('hello', extra={'topic': 't'})")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    (line,) = [json.loads(x) for x in out.stderr.splitlines() if x.startswith("{")]
    assert (line["message"], line["topic"], line["logger"]) == ("hello", "t", "chi_redis.cli")
