"""F18: producers whose clocks are 300 s ahead and 300 s behind the server's.

``faketime`` is not installed here, so each producer sets the event time explicitly (the
``timestamp`` its skewed clock would give: ``now ± 300 s``), which is all a skewed clock
changes in what a producer sends; redis-server's own clock cannot be skewed (libfaketime
hangs it), and stream ids are monotonic per stream by Redis's own rule.
Expected (docs/design.md §3.3): queries by event time return exactly the events whose time
is in range (a skewed producer's events land where their timestamps say); queries by
ingest time (stream ids) follow the server's clock; every time-index member resolves to a
stream entry; ``replay --since`` starts at the stream id ``<ms>-0``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import redis
from click.testing import CliRunner
from support.figures import record
from support.servers import REDIS_URL

from chi_redis import Event, EventBus
from chi_redis.cli.main import cli as chi_cli
from chi_redis.ops.timeparse import parse_time

pytestmark = pytest.mark.redis
SKEW = timedelta(seconds=300)


def chi(ns: str, *args: str) -> list[str]:
    """``chi-redis`` in-process; its stdout lines (exit 0 asserted)."""
    runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None})
    result = runner.invoke(chi_cli, ["--redis-url", REDIS_URL, "--namespace", ns, *args],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def server_now(client: redis.Redis) -> datetime:
    sec, usec = client.time()
    return datetime.fromtimestamp(sec + usec / 1e6, UTC)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_f18_skewed_producers_event_time_and_ingest_time_queries(
        real_client: redis.Redis, ns: str) -> None:
    bus = EventBus(real_client, namespace=ns)
    skews = {"ahead": SKEW, "behind": -SKEW, "on-time": timedelta(0)}
    ingest_from = server_now(real_client)
    by_producer: dict[str, set[str]] = {p: set() for p in skews}
    sids: dict[str, str] = {}
    for i in range(60):
        producer = list(skews)[i % 3]
        # The producer's clock: the real time plus its skew.
        e = Event(type="ledger.posted", data={"i": i},
                  timestamp=datetime.now(UTC) + skews[producer])
        sids[e.id] = bus.publish(e)
        by_producer[producer].add(e.id)
    ingest_to = server_now(real_client)

    # By event time: exactly each producer's events, where its clock put them.
    margin = timedelta(seconds=60)
    for producer, skew in skews.items():
        lo, hi = ingest_from + skew - margin, ingest_to + skew + margin
        got = {e.id for e in bus.store.load_by_time_range(lo, hi, topic="ledger")}
        assert got == by_producer[producer], producer
        printed = chi(ns, "replay", "--print", "--topic", "ledger", "--by", "event-time",
                      "--since", iso(lo), "--until", iso(hi))
        assert {json.loads(x)["id"] for x in printed} == by_producer[producer], producer

    # By ingest time (stream ids, the server's clock): all 60, skew or not.
    printed = chi(ns, "replay", "--print", "--topic", "ledger", "--since", iso(ingest_from),
                  "--until", iso(ingest_to + timedelta(milliseconds=1)))
    assert [json.loads(x)["stream_id"] for x in printed] == list(sids.values())

    # Index and stream agree: the skewed (late) events, and only they, are indexed, and
    # every member resolves to its stream entry.
    stream, index = bus.keys.stream("ledger"), bus.keys.index("ledger")
    members = [m.decode() for m in real_client.zrange(index, 0, -1)]
    skewed = by_producer["ahead"] | by_producer["behind"]
    assert sorted(members) == sorted(sids[i] for i in skewed)
    dangling = [m for m in members if not real_client.xrange(stream, m, m)]
    assert dangling == []

    # replay --since TIME reads from the stream id <ms>-0 of that time.
    middle = list(sids.values())[30]
    ms = int(middle.split("-")[0])
    since = iso(datetime.fromtimestamp(ms / 1000, UTC))
    assert parse_time(since).lower_id() == (ms, 0)
    printed = chi(ns, "replay", "--print", "--topic", "ledger", "--since", since)
    expected = [s.decode() for s, _f in real_client.xrange(stream, f"{ms}-0", "+")]
    assert [json.loads(x)["stream_id"] for x in printed] == expected
    record("F18-clock-skew", producers=len(skews), events=len(sids), skew_s=SKEW.seconds,
           faketime=False, indexed=len(members), dangling_index_members=len(dangling),
           per_producer={p: len(v) for p, v in by_producer.items()})
