"""The example application (handlers/) in a real `dramatiq chi_redis.worker` process, with
Dramatiq's Prometheus middleware exporting metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis
from support import free_port, wait_until

from chi_redis import Event, EventBus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.redis


@pytest.fixture
def worker(real_client: redis.Redis, ns: str, tmp_path: Path) -> Iterator[int]:
    """The Procfile's worker command (1 process here) with metrics on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "CHI_REDIS_URL": "redis://127.0.0.1:6379/0",
        "CHI_NAMESPACE": ns,
        "CHI_METRICS_PORT": str(port),
        "dramatiq_prom_port": str(port),
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_db": str(tmp_path / "prom"),
        "PYTHONPATH": str(ROOT),
    }
    log_path = tmp_path / "worker.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "chi_redis.worker", "handlers.worker",
         "--processes", "1", "--threads", "4"],
        env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log_file.close()
        log = log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


def _registered(client: redis.Redis, ns: str) -> bool:
    subs = client.hkeys(f"{ns}:subs")
    return len(subs) == 5


def test_example_handlers_run_in_a_real_worker_and_export_metrics(
    worker: int, real_client: redis.Redis, ns: str
) -> None:
    # Given the example worker has registered its five subscriptions
    wait_until(lambda: _registered(real_client, ns), timeout=60, message="registration")
    # (the payload classes are not imported here: registering them would change how every
    # other test in this process decodes user.created; a Struct encodes as this same map)
    bus = EventBus(real_client, namespace=ns)
    mail_key, audit_key = f"{ns}:app:mail", f"{ns}:app:audit"

    def recorded(key: str) -> list[dict[str, str]]:
        return [msgspec.json.decode(x) for x in real_client.lrange(key, 0, -1)]

    # When the seed's events are published
    user = Event(type="user.created", data={"user_id": "u1", "email": "u1@example.com",
                                            "name": "Ada"})
    order = Event(type="order.created", data={"order_id": "o1", "user_id": "u1",
                                              "amount_cents": 1250})
    alert = Event(type="security.login_failed", data={"user_id": "u1", "ip": "10.0.0.1"})
    bus.publish_batch([user, order, alert])
    bus.publish(user)  # the same event again: written once (same id)

    # Then every handler saw exactly its events
    wait_until(lambda: len(recorded(audit_key)) >= 4, timeout=60, message="audit entries")
    wait_until(lambda: recorded(mail_key), timeout=60, message="welcome mail")
    mails = recorded(mail_key)
    assert [(m["to"], m["event_id"]) for m in mails] == [("u1@example.com", user.id)]
    by = sorted((e["by"], e["type"]) for e in recorded(audit_key))
    assert by == [
        ("created-audit", "order.created"),
        ("created-audit", "user.created"),
        ("security-alerts", "security.login_failed"),
        ("user-audit", "user.created"),
    ] or (len(by) == 5 and ("security-alerts", "security.login_failed") in by)
    wait_until(
        lambda: real_client.hget(f"{ns}:app:orders", "u1") == b"1250",
        timeout=60, message="order bookkeeping",
    )

    # And Dramatiq's Prometheus middleware exports per-subscription counters
    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    text = wait_until(
        lambda: (t := scrape()) and 'actor_name="welcome-email"' in t and t,
        timeout=60, message="metrics page",
    )
    counters = [
        line for line in text.splitlines()
        if line.startswith("dramatiq_messages_total{") and 'actor_name="welcome-email"' in line
    ]
    assert counters and float(counters[0].rsplit(" ", 1)[1]) >= 1.0


def test_importing_the_worker_module_leaves_prometheus_client_unimported(
    real_client: redis.Redis, ns: str
) -> None:
    # prometheus_client picks its value store at import; Dramatiq's middleware switches it to
    # the multiprocess directory only after boot, so an early import hides every counter.
    code = "import sys, handlers.worker; print('prometheus_client' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHI_NAMESPACE": ns}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=True,
    )
    assert out.stdout.strip() == "False"
