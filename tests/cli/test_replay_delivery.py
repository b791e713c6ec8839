"""The delivery of ``replay --to SUB``: the script call that writes a batch of messages and
the checkpoint together, and the thread switch interval while a replay delivers."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import redis

from chi_redis import EventBus
from chi_redis.backend.scripts import bulk, script
from chi_redis.ops.replay import QueueTarget, ReplayOptions, replay

from .conftest import publish_n
from .test_replay import queued_indexes, register

pytestmark = pytest.mark.redis  # every test runs against the real server


def test_a_delivery_writes_its_messages_and_checkpoint_together(
    bus: EventBus, client: redis.Redis
) -> None:
    queue, ckpt = bus.keys.queue("audit"), bus.keys.checkpoint("framed")
    s = script("replay_queue")
    client.script_flush()  # the first call meets NOSCRIPT: loaded, sent again, run once
    framed = bulk([b"abc", b"", b"d\r\ne" * 100])
    assert s.run_framed(client, [queue, ckpt], ["1", "pos", "1-1"], framed, 3) == 3
    assert [f[b"m"] for _, f in client.xrange(queue)] == [b"abc", b"", b"d\r\ne" * 100]
    assert client.hgetall(ckpt) == {b"pos": b"1-1", b"delivered": b"3"}
    # without checkpoint fields the hash is left alone (and the connection is reusable)
    assert s.run_framed(client, [queue, ckpt], ["0"], bulk([b"x"]), 1) == 1
    assert client.xlen(queue) == 4
    assert client.hgetall(ckpt) == {b"pos": b"1-1", b"delivered": b"3"}


def test_a_delivery_the_server_refuses_writes_nothing(
    bus: EventBus, client: redis.Redis
) -> None:
    queue, ckpt = bus.keys.queue("audit"), bus.keys.checkpoint("refused")
    client.set(queue, b"not a stream")
    s = script("replay_queue")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        s.run_framed(client, [queue, ckpt], ["1", "pos", "1-1"], bulk([b"a", b"b"]), 2)
    assert client.exists(ckpt) == 0
    assert client.get(queue) == b"not a stream"
    client.delete(queue)
    assert s.run_framed(client, [queue, ckpt], ["1", "pos", "1-1"], bulk([b"a"]), 1) == 1


@pytest.mark.parametrize("workers", [1, 4])
def test_a_replay_delivers_with_a_short_switch_interval_and_restores_it(
    bus: EventBus, client: redis.Redis, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    register(bus, "audit")
    publish_n(bus, 30)
    seen: list[float] = []
    original = QueueTarget.send

    def send(self: QueueTarget, *args: Any) -> int:
        seen.append(sys.getswitchinterval())
        return original(self, *args)

    monkeypatch.setattr(QueueTarget, "send", send)
    before = sys.getswitchinterval()
    report = replay(bus, QueueTarget(bus, "audit"), topics=["order"],
                    options=ReplayOptions(batch_size=10, workers=workers))
    assert report.delivered == 30 and sorted(queued_indexes(client, bus, "audit")) == list(
        range(30))
    assert seen == [0.001] * 3
    assert sys.getswitchinterval() == before
    seen.clear()  # None leaves it alone
    replay(bus, QueueTarget(bus, "audit"), topics=["order"],
           options=ReplayOptions(batch_size=10, workers=workers, switch_interval=None))
    assert seen == [before] * 3


def test_a_switch_interval_must_be_positive() -> None:
    from chi_redis.errors import ValidationError

    with pytest.raises(ValidationError):
        ReplayOptions(switch_interval=0).validate()
