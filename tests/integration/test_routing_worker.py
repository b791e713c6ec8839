"""The seed's example config in a real ``dramatiq chi_redis.worker`` process: its three
routing rules become subscriptions once the handler module registered their names."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import REDIS_URL, stays, wait_until
from support.processes import Workers
from support.runtime import wait_groups

from chi_redis import Event, EventBus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_config import SEED

pytestmark = pytest.mark.redis


@pytest.fixture
def workers(tmp_path: Path, ns: str) -> Iterator[Workers]:
    w = Workers(tmp_path, REDIS_URL, ns)
    try:
        yield w
    finally:
        w.stop()


def _seed_for_a_worker(tmp_path: Path) -> Path:
    """The seed's file with what a worker serving other processes needs: a Redis bus (the
    worker's environment gives its URL) and the store that exists."""
    text = SEED.replace('type: "memory" # memory, redis', 'type: "redis" # memory, redis')
    text = text.replace('type: "database"', 'type: "memory"')
    path = tmp_path / "events-config.yaml"
    path.write_text(text)
    return path


def test_the_seeds_rules_route_security_user_and_order_events(
    workers: Workers, real_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    w = workers.start("runtime.proc_routing", CHI_CONFIG=str(_seed_for_a_worker(tmp_path)))
    names = {b"security_handler", b"business_handler", b"log_handler"}
    wait_until(lambda: set(real_client.hkeys(f"{ns}:subs")) >= names, 60,
               f"routing rules registered\n{w.output()[-3000:]}")
    bus = EventBus(real_client, namespace=ns)
    # A worker records a subscription before it creates its groups (at the stream's end):
    # wait for the groups.  The log handler's (every topic) appear once the streams exist,
    # starting at their first entry.
    wait_groups(real_client, bus, {"security_handler": ["security"],
                                   "business_handler": ["order", "user"]})
    events = [Event(type="security.login_failed", data={"user": "u1"}),
              Event(type="user.created", data={"user_id": "u1"}),
              Event(type="order.placed", data={"order_id": "o1"})]
    for e in events:
        bus.publish(e)

    def routed(name: str) -> list[str]:
        return sorted(x.decode() for x in real_client.lrange(f"{ns}:t:routed:{name}", 0, -1))

    wait_until(lambda: len(routed("log_handler")) == 3, 60,
               f"log handler saw all three\n{w.output()[-3000:]}")
    wait_until(lambda: len(routed("business_handler")) == 2, 60, "business handler")
    wait_until(lambda: len(routed("security_handler")) == 1, 60, "security handler")
    assert stays(lambda: routed("log_handler") == ["order.placed", "security.login_failed",
                                                   "user.created"], 1.0)
    assert routed("business_handler") == ["order.placed", "user.created"]
    assert routed("security_handler") == ["security.login_failed"]
    assert "routing rules subscribed: security_handler, business_handler, log_handler" in (
        w.output())


def test_a_rule_naming_an_unknown_handler_stops_the_worker_with_the_known_names(
    workers: Workers, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("events:\n  routing:\n    rules:\n"
                    "      - {handler: securty_handler, filter: {type: all}}\n")
    w = workers.start("runtime.proc_routing", CHI_CONFIG=str(path))
    wait_until(lambda: not w.alive(), 60, f"worker exits\n{w.output()[-3000:]}")
    out = w.output()
    assert "unknown handler 'securty_handler' (known: business_handler, log_handler," \
           " security_handler)" in out
    assert "routing.rules[0].handler" in out
