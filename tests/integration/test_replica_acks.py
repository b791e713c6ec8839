"""``acks="replicas"`` on a single node with a replica (docs/design.md §3.4): publishing
returns once the replica has the events (WAIT on the connection that wrote), and a
replica that does not confirm in time gives NotReplicatedError saying the events WERE
written on the master, with the outcome of each event of a batch."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.servers import RedisServer, RedisServers
from support.waiting import wait_until

from chi_redis import (
    AsyncEventBus,
    BufferedPublisher,
    ConfigError,
    Event,
    EventBus,
    NotReplicatedError,
    PublishError,
)
from chi_redis.cli.main import cli as chi_cli
from chi_redis.config import bus_from_config, load_config

pytestmark = pytest.mark.redis


def _pair(redis_servers: RedisServers) -> tuple[RedisServer, RedisServer]:
    master = redis_servers.start()
    replica = redis_servers.start("--replicaof", "127.0.0.1", str(master.port))

    def linked() -> bool:
        with contextlib.closing(replica.client()) as c:
            return c.info("replication").get("master_link_status") == "up"

    wait_until(linked, 30, "the replica in sync with its master", interval=0.05)
    return master, replica


def _on_replica(replica: RedisServer, bus: EventBus, topic: str) -> int:
    with contextlib.closing(replica.client()) as c:
        return int(c.xlen(bus.keys.stream(topic)))


def test_replicas_ack_then_a_paused_replica_gives_not_replicated(
    redis_servers: RedisServers, tmp_path: Path
) -> None:
    master, replica = _pair(redis_servers)
    cfg = tmp_path / "chi.yaml"
    cfg.write_text(f"events:\n  bus:\n    acks: replicas\n    min_replicas: 1\n"
                   f"    ack_timeout_ms: 300\n    redis:\n      url: {master.url}\n")
    short = bus_from_config(load_config(path=cfg, env={}), namespace="acks")
    # Where the replica must confirm: a timeout no loaded machine reaches.
    bus = EventBus(short.client, namespace="acks", acks="replicas", ack_timeout_ms=10_000)
    try:
        assert short.acks is not None and short.acks.timeout_ms == 300
        sid = bus.publish(Event(type="ack.made", topic="ack", data={"n": 0}))
        # WAIT returned: the replica holds the entry as the publish returns (no waiting).
        with contextlib.closing(replica.client()) as c:
            assert c.xrange(bus.keys.stream("ack"))[-1][0].decode() == sid
        ids = bus.publish_batch(
            [Event(type="ack.made", topic=f"ack{i % 3}", data={"n": i}) for i in range(50)],
            chunk_size=7)
        assert len(ids) == 50
        assert sum(_on_replica(replica, bus, f"ack{i}") for i in range(3)) == 50

        # The replica stops applying (its process paused): writes stay on the master only.
        replica.proc.send_signal(signal.SIGSTOP)  # the process this test started
        try:
            event = Event(type="ack.made", topic="ack", data={"n": "lone"})
            with pytest.raises(NotReplicatedError) as one:
                short.publish(event)
            err = one.value
            assert "written on the master" in str(err)
            assert "confirmed by only 0 of the 1 required replicas within 300 ms" in str(err)
            assert err.unconfirmed == [0] and err.failed == [] and err.replicas == {0: 0}
            assert short.store.load(event.id) is not None  # it IS written on the master
            # Per call: acks="master" does not wait (the replica is still paused).
            bus.publish(Event(type="ack.made", topic="ack", data={}), acks="master")
            batch = [Event(type="ack.made", topic="ack", data={"n": i}) for i in range(30)]
            with pytest.raises(NotReplicatedError) as many:
                short.publish_batch(batch, chunk_size=10)
            assert isinstance(many.value, PublishError)
            # One round trip (3 chunks of 10): all 30 events written, none confirmed.
            assert many.value.unconfirmed == list(range(30))
            assert sorted(many.value.written) == list(range(30))
            assert many.value.failed == []
            # The CLI publishes with the config's acks: exit 1, the event said written.
            cli = CliRunner().invoke(chi_cli, ["--config", str(cfg), "--namespace", "acks",
                                               "publish", "ack", "ack.cli", "{}"])
            assert cli.exit_code == 1 and "written on the master" in cli.output, cli.output
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        # Published again once the replica is back: nothing written twice, confirmed now.
        assert bus.publish(event) == err.written[0]
        assert bus.publish_batch(batch) == [many.value.written[i] for i in range(30)]
        wait_until(lambda: _on_replica(replica, bus, "ack") == 1 + 1 + 1 + 30 + 1, 30,
                   "the replica caught up")
    finally:
        short.close()


def test_bad_acks_settings_are_refused(redis_servers: RedisServers) -> None:
    master = redis_servers.start()
    for bad in ({"acks": "all"}, {"min_replicas": 0}, {"ack_timeout_ms": 0},
                {"ack_timeout_ms": 600_000}):
        with pytest.raises((ConfigError, ValueError)):
            EventBus.from_url(master.url, **bad)
    bus = EventBus.from_url(master.url, namespace="acks")
    try:
        with pytest.raises(ValueError, match="acks must be"):
            bus.publish(Event(type="ack.made", topic="ack", data={}), acks="some")  # type: ignore[arg-type]
        # No replica at all: the write is on the master, and the error says so.
        with pytest.raises(NotReplicatedError, match=r"written on the master 127\.0\.0\.1"):
            EventBus(bus.client, namespace="acks", acks="replicas", ack_timeout_ms=50).publish(
                Event(type="ack.made", topic="ack", data={}))
    finally:
        bus.close()


def test_asyncio_bus_waits_for_replicas_too(redis_servers: RedisServers) -> None:
    master, replica = _pair(redis_servers)

    async def main() -> None:
        bus = AsyncEventBus.from_url(master.url, namespace="aacks", acks="replicas",
                                     ack_timeout_ms=10_000)
        short = AsyncEventBus(bus.client, namespace="aacks", acks="replicas",
                              ack_timeout_ms=200)
        try:
            sid = await bus.publish(Event(type="ack.made", topic="aack", data={}))
            with contextlib.closing(replica.client()) as c:
                assert c.xrange("aacks:{aack}:stream")[-1][0].decode() == sid
            assert len(await bus.publish_batch(
                [Event(type="ack.made", topic="aack", data={"n": i}) for i in range(20)],
                chunk_size=6)) == 20
            with contextlib.closing(replica.client()) as c:
                assert c.xlen("aacks:{aack}:stream") == 21
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(NotReplicatedError, match="confirmed by only 0 of the 1"):
                    await short.publish(Event(type="ack.made", topic="aack", data={}))
                batch = [Event(type="ack.made", topic="aack", data={"n": i}) for i in range(5)]
                with pytest.raises(NotReplicatedError) as many:
                    await short.publish_batch(batch, chunk_size=2)
                assert many.value.unconfirmed == [0, 1, 2, 3, 4]
                await bus.publish(Event(type="ack.made", topic="aack", data={}), acks="master")
                # The background publisher hands written-but-unconfirmed events to on_error
                # with the NotReplicatedError, apart from the failed ones.
                seen: list[tuple[list[Event], BaseException]] = []
                buffered = [Event(type="ack.buf", topic="aack", data={"n": i}) for i in range(4)]
                async with BufferedPublisher(short, on_error=lambda ev, exc: seen.append((ev, exc)),
                                             batch_size=10, flush_interval_ms=50) as pub:
                    for event in buffered:
                        await pub.publish(event)
                assert pub.unconfirmed_count == 4 and pub.failed_count == 0
                assert [e.id for ev, _ in seen for e in ev] == [e.id for e in buffered]
                assert all(isinstance(exc, NotReplicatedError) for _, exc in seen)
            finally:
                replica.proc.send_signal(signal.SIGCONT)
        finally:
            await bus.close()

    asyncio.run(main())
