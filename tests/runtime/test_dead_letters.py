"""Dead letters: garbage written straight into a topic stream (F4), and the DLQ round trip
(dead-lettered, listed, redriven once after the handler is fixed).  In-process workers, on
fakeredis and on the real server."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import pytest
from support import Recorder, Runtime, dlq_len, drained, stays, wait_until

from chi_redis import Event
from chi_redis.runtime.subscriptions import Delivery


def test_garbage_entries_are_dead_lettered_and_the_worker_keeps_going(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    handled = Recorder()

    @rt.bus.subscribe("robust", types=["cart.created"], max_retries=3, min_backoff_ms=10,
                      max_backoff_ms=20)
    def robust(event: Event) -> None:
        handled.add(event.data["n"])

    broker = rt.broker()
    rt.worker(broker)
    rt.publish(Event(type="cart.created", data={"n": 1}))
    wait_until(lambda: handled.items() == [1], message="first good event")
    stream = rt.bus.keys.stream("cart")
    valid: dict[Any, Any] = {"id": "e-bad", "type": "cart.created", "ts": "1700000000000000",
                             "ver": "1.0", "meta": "{}", "enc": "mp"}
    bad = [
        rt.client.xadd(stream, {"foo": "bar"}),  # none of the envelope fields
        rt.client.xadd(stream, {**valid, "data": b"\xc1\xc1 not msgpack"}),
        rt.client.xadd(stream, {**valid, "data": b"\x91" * 100_000 + b"\xc0"}),  # too deep
        rt.client.xadd(stream, {**valid, "enc": "js", "data": b"[" * 100_000 + b"]" * 100_000}),
        rt.client.xadd(stream, {**valid, "data": b"\xc6\xff\xff\xff\xff"}),  # bin32: 4 GB
        rt.client.xadd(stream, {**valid, "data": b"\xdd\xff\xff\xff\xff\x01"}),  # 4G items
        rt.client.xadd(stream, {**valid, "ts": "yesterday", "data": b"\x80"}),
        rt.client.xadd(stream, {**valid, "meta": b"\xff{", "data": b"\x80"}),
    ]
    rt.publish(Event(type="cart.created", data={"n": 2}))
    wait_until(lambda: dlq_len(rt.client, rt.bus, "robust") == len(bad), message="dead letters")
    wait_until(lambda: sorted(handled.items()) == [1, 2], message="the next good event")
    broker.join("robust", timeout=30_000)
    assert drained(rt.client, rt.bus, "robust", ["cart"])
    letters = rt.bus.dead_letters("robust")
    assert sorted(dl.source_id for dl in letters) == sorted(
        b.decode() if isinstance(b, bytes) else b for b in bad)
    assert sum("nested too deeply" in dl.error for dl in letters) == 2, letters
    reasons = dict(zip([b.decode() if isinstance(b, bytes) else b for b in bad],
                       ["missing_field", "decode", "too_deep", "too_deep", "decode", "decode",
                        "decode", "decode"], strict=True))
    for dl in letters:
        assert dl.reason == reasons[dl.source_id], dl
        assert dl.error_type == "DecodeError", dl
        assert dl.deliveries == 1 and dl.attempts == 1, dl  # not retried
        assert dl.source_stream == stream and dl.body, dl
    assert {dl.event_id for dl in letters} == {"", "e-bad"}
    # the consumer thread never crashed (no restart), nothing was retried
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert not [r for r in caplog.records if "Retrying message" in r.getMessage()]


def test_dead_letter_round_trip_redrive_once(rt: Runtime) -> None:
    fixed = f"{rt.ns}:fixed"
    runs = Recorder()
    failures = Recorder()

    @rt.bus.subscribe("fixme", types=["cart.created"], max_retries=1, min_backoff_ms=10,
                      max_backoff_ms=20)
    def fixme(event: Event, delivery: Delivery) -> None:
        if not rt.client.exists(fixed):
            failures.add(event.id)
            raise RuntimeError("payment service down")
        runs.add((event.id, delivery.stream, delivery.entry_id))

    broker = rt.broker()
    rt.worker(broker)
    event = Event(type="cart.created", data={"n": 1})
    (sid,) = rt.publish(event)
    wait_until(lambda: dlq_len(rt.client, rt.bus, "fixme") == 1, message="dead letter")
    broker.join("fixme", timeout=30_000)
    (dl,) = rt.bus.dead_letters("fixme")
    assert dl.event_id == event.id and dl.reason == "retries_exhausted"
    assert len(failures) == 2

    rt.client.set(fixed, 1)
    assert rt.bus.redrive("fixme") == 1
    wait_until(lambda: len(runs) == 1, message="the redriven event ran")
    assert rt.bus.redrive("fixme") == 0  # already moved: nothing to redrive twice
    broker.join("fixme", timeout=30_000)
    assert stays(lambda: len(runs) == 1, 0.5)
    # the handler saw the original provenance
    assert runs.items() == [(event.id, rt.bus.keys.stream("cart"), sid)]
    assert rt.bus.dead_letters("fixme") == []
    assert drained(rt.client, rt.bus, "fixme", ["cart"])


def test_task_dead_letter_redrive(rt: Runtime) -> None:
    broker = rt.broker()
    fixed = f"{rt.ns}:fixed"
    runs = Recorder()

    @dramatiq.actor(max_retries=0)
    def charge(order: str) -> None:
        if not rt.client.exists(fixed):
            raise RuntimeError("down")
        runs.add(order)

    rt.worker(broker)
    charge.send("o-1")
    wait_until(lambda: dlq_len(rt.client, rt.bus, "default") == 1, message="dead letter")
    (dl,) = rt.bus.dead_letters("default")
    assert dl.kind == "task" and dl.type == "charge"
    rt.client.set(fixed, 1)
    assert rt.bus.redrive("default", [dl.id]) == 1
    wait_until(lambda: runs.items() == ["o-1"], message="redriven task ran")
    broker.join("default", timeout=30_000)
    assert stays(lambda: runs.items() == ["o-1"], 0.3)


def test_dead_letter_logs_name_the_entry_not_the_payload(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    @rt.bus.subscribe("quiet", types=["cart.created"], max_retries=0)
    def quiet(event: Event) -> None:
        raise ValueError("nope")

    broker = rt.broker()
    rt.worker(broker)
    caplog.set_level(logging.INFO)
    rt.publish(Event(type="cart.created", data={"card": "4111-1111-1111-1111"}))
    wait_until(lambda: dlq_len(rt.client, rt.bus, "quiet") == 1, message="dead letter")
    broker.join("quiet", timeout=30_000)
    assert "4111-1111" not in caplog.text
