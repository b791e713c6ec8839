"""The delivery of ``replay --to SUB``: the script call that writes a batch of messages and
the checkpoint together."""

from __future__ import annotations

import pytest
import redis

from chi_redis import EventBus
from chi_redis.backend.scripts import bulk, script

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

