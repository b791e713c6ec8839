"""The consumer's read ahead: once a read of a fast queue returned half its window, the next
read is sent at once and taken when entries are needed again.  Every entry is delivered
once and acked; entries a read ahead took are handed back when the consumer closes.  Run on
fakeredis and on the real server."""

from __future__ import annotations

from typing import Any

from support import Runtime, wait_until

from chi_redis import Event
from chi_redis.runtime.leases import ABANDONED

N = 600


def fast_consumer(rt: Runtime) -> tuple[Any, Any]:
    @rt.bus.subscribe("ahead", types=["cart.created"])
    def ahead(event: Event) -> None:
        pass

    broker = rt.broker(block_ms=100)
    broker.states["ahead"].observe_run(1e-6)  # handlers measured fast: the widest window
    rt.bus.publish_batch([Event(type="cart.created", data={"n": i}) for i in range(N)])
    return broker, broker.consume("ahead", prefetch=4, timeout=100)


def test_every_entry_delivered_once_and_acked(rt: Runtime) -> None:
    broker, consumer = fast_consumer(rt)
    window = consumer._window()
    assert window == broker.options.max_prefetch
    first = wait_until(lambda: next(consumer), message="the first entry")
    assert consumer.ahead, "a read that returned half the window sends the next one"
    seen = {first.entry_id}
    consumer.ack(first)
    sent_ahead = 1
    while len(seen) < N:
        message = wait_until(lambda: next(consumer), message=f"entry {len(seen) + 1}")
        assert message.entry_id not in seen
        assert len(broker.states["ahead"].inflight) <= window
        seen.add(message.entry_id)
        consumer.ack(message)
        sent_ahead += bool(consumer.ahead)
    consumer.close()
    assert sent_ahead > 1
    stream = rt.bus.keys.stream("cart")
    wait_until(lambda: rt.client.xpending(stream, "ahead")["pending"] == 0,
               message="every entry acked")


def test_close_hands_back_what_a_read_ahead_took(rt: Runtime) -> None:
    _, consumer = fast_consumer(rt)
    first = wait_until(lambda: next(consumer), message="the first entry")
    assert consumer.ahead
    consumer.close()  # the first entry stays in flight (a worker would still run it)
    stream = rt.bus.keys.stream("cart")
    owners = {c["name"]: c["pending"]
              for c in rt.client.xpending(stream, "ahead")["consumers"]}
    owners = {(k.decode() if isinstance(k, bytes) else k): v for k, v in owners.items()}
    assert owners.get(consumer.name) == 1
    assert owners.get(ABANDONED) == 2 * (consumer._window() // 2) - 1
    consumer.ack(first)
