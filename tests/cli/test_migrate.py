"""``chi-redis migrate``: the earlier layout's one id hash moves into one hash per topic."""

from __future__ import annotations

import json

import pytest
import redis

from chi_redis import Event, EventBus

from .conftest import Cli

pytestmark = pytest.mark.redis  # every test runs against the real server


def test_migrate_moves_the_old_id_hash_so_load_finds_old_events_again(
    cli: Cli, bus: EventBus, client: redis.Redis
) -> None:
    events = [Event(type="order.placed", data={"n": i}) for i in range(5)] + [
        Event(type="user.signed_up", data={"n": 9})]
    bus.publish_batch(events)
    k = bus.keys
    # The earlier layout: one hash of every topic's ids (and none per topic).
    old = {}
    for e in events:
        old.update(client.hgetall(k.ids(e.topic)))
    client.delete(k.ids("order"), k.ids("user"))
    client.hset(k.legacy_ids(), mapping={**old, b"bad-entry": b"no-space"})
    assert bus.store.load(events[0].id) is None  # what an upgrade without migrating sees

    out = json.loads(cli("--json", "migrate").output)
    assert out == {"moved": 6, "topics": ["order", "user"], "unreadable": 1}
    assert [bus.store.load(e.id) for e in events] == events
    assert client.hgetall(k.legacy_ids()) == {b"bad-entry": b"no-space"}  # left, reported
    again = cli("migrate").output
    assert "moved 0 event ids" in again and "1 unreadable" in again
    client.delete(k.legacy_ids())
    assert "nothing to migrate" in cli("migrate").output
