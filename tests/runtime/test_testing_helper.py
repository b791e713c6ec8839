"""``chi_redis.testing``: running a bus's subscriptions in-process and draining them.

The example app's tests (handlers/tests, run by tests/integration/test_example_app_tests.py)
use the module form, ``running("handlers.worker")``; the module form is also checked here
in fresh interpreters, since it imports ``chi_redis.worker`` (once per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import Recorder

from chi_redis import ChiError, Event, EventBus
from chi_redis.backend.memory import is_embedded
from chi_redis.runtime.subscriptions import Delivery
from chi_redis.testing import DrainTimeout, running

DEADLINE_S = 60.0


def test_drain_waits_for_events_that_handlers_publish() -> None:
    bus = EventBus.embedded()
    invoices = Recorder()

    @bus.subscribe("billing", types=["order.placed"])
    def bill(event: Event) -> None:
        time.sleep(0.05)
        bus.publish(Event(type="invoice.due", data=event.data))

    @bus.subscribe("mailer", types=["invoice.*"])
    def mail(event: Event) -> None:
        invoices.add(event.data["n"])

    with running(bus) as t:
        t.publish_batch([Event(type="order.placed", data={"n": i}) for i in range(5)])
        t.drain(DEADLINE_S, raise_errors=True)
        assert sorted(invoices.items()) == list(range(5))
        assert t.failures == []


def test_failures_are_recorded_and_raised_once_when_asked() -> None:
    bus = EventBus.embedded()

    @bus.subscribe("flaky", types=["job.run"], max_retries=2, min_backoff_ms=10)
    def flaky(event: Event, delivery: Delivery) -> None:
        if delivery.attempt == 1:
            raise RuntimeError(f"first try of {event.data['n']}")

    with running(bus) as t:
        event = Event(type="job.run", data={"n": 1})
        t.publish(event)
        t.drain(DEADLINE_S)  # the retry succeeded: nothing raised, nothing dead-lettered
        (failure,) = t.failures
        assert (failure.subscription, failure.event_id, failure.attempt) == (
            "flaky", event.id, 1)
        assert isinstance(failure.exception, RuntimeError)
        assert t.dead_letters("flaky") == []
        with pytest.raises(RuntimeError, match="first try of 1"):
            t.drain(DEADLINE_S, raise_errors=True)
        t.drain(DEADLINE_S, raise_errors=True)  # raised once already


def test_raise_errors_does_not_wait_for_the_retries() -> None:
    bus = EventBus.embedded()

    @bus.subscribe("broken", types=["job.run"], max_retries=5, min_backoff_ms=30_000)
    def broken(event: Event) -> None:
        raise KeyError("missing")

    with running(bus) as t:
        t.publish(Event(type="job.run", data={}))
        started = time.monotonic()
        with pytest.raises(KeyError, match="missing"):
            t.drain(DEADLINE_S, raise_errors=True)
        assert time.monotonic() - started < 20  # long before the 30 s backoff
        with pytest.raises(DrainTimeout, match="broken"):
            t.drain(0.2)  # the retry still waits in the delayed set


def test_running_without_a_target_gives_a_new_embedded_bus() -> None:
    got = Recorder()
    with running() as t:
        assert is_embedded(t.bus.client)
        t.bus.subscribe("late", types=["user.*"])(lambda e: got.add(e.data))
        t.publish(Event(type="user.seen", data=1))
        t.drain(DEADLINE_S, raise_errors=True)
        assert t.store.load_by_topic("user")[0].data == 1
    assert got.items() == [1]


def test_running_a_bus_keeps_what_it_holds() -> None:
    bus = EventBus.embedded()
    before = bus.publish(Event(type="user.seen", data=0))
    bus.subscribe("seen", types=["user.*"])(lambda e: None)
    with running(bus) as t:
        t.drain(DEADLINE_S)
        assert [e.data for e in t.store.load_by_topic("user")] == [0] and before


def _fresh(code: str, tmp_path: Path, **env: str) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHI_")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                          env={**base, "PYTHONPATH": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


APP = '''
from chi_redis.worker import bus

@bus.subscribe("echo", types=["ping.*"])
def echo(event):
    bus.client.rpush("echoed", event.data)
'''


def test_running_a_handler_module_puts_chi_redis_worker_on_an_embedded_bus(
        tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(APP)
    got = _fresh("""
        import json, os
        from chi_redis import Event
        from chi_redis.testing import running

        runs = []
        for n in (1, 2):
            with running("my_handlers") as t:
                t.publish(Event(type="ping.sent", data=n))
                t.drain(60, raise_errors=True)
                runs.append([int(x) for x in t.bus.client.lrange("echoed", 0, -1)])
        import chi_redis.worker
        print(json.dumps({"runs": runs, "url": chi_redis.worker.bus.url,
                          "env": os.environ.get("CHI_BUS_TYPE")}))
    """, tmp_path)
    # each run starts from an empty bus; the environment is left as it was
    assert got == {"runs": [[1], [2]], "url": "redis://embedded/0", "env": None}


def test_running_a_handler_module_refuses_a_worker_bus_on_redis(tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(APP)
    got = _fresh("""
        import json
        import chi_redis.worker  # imported first, without CHI_BUS_TYPE=memory: a Redis bus
        from chi_redis import ChiError
        from chi_redis.testing import running

        try:
            with running("my_handlers"):
                pass
        except ChiError as exc:
            print(json.dumps({"error": str(exc)}))
    """, tmp_path)
    assert "set CHI_BUS_TYPE=memory before it is imported" in str(got["error"])
    assert issubclass(DrainTimeout, ChiError)


def test_chi_bus_type_memory_gives_chi_redis_worker_an_embedded_bus(tmp_path: Path) -> None:
    code = """
        import json
        try:
            import chi_redis.worker as w
            print(json.dumps({"url": w.bus.url, "ns": w.bus.namespace}))
        except Exception as exc:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    """
    assert _fresh(code, tmp_path, CHI_BUS_TYPE="memory", CHI_NAMESPACE="app") == {
        "url": "redis://embedded/0", "ns": "app"}
    error = str(_fresh(code, tmp_path, CHI_BUS_TYPE="kafka")["error"])
    assert error.startswith("ConfigError: ") and "kafka needs at least one broker" in error
