"""Archive write throughput into PostgreSQL beside a raw COPY and executemany of the same rows.

``raw.archive.copy``: psycopg ``COPY … FROM STDIN`` of N rows (the store's seven columns, the
baseline event's data and metadata as JSON) in one transaction; ``raw.archive.executemany``:
psycopg ``executemany`` of ``INSERT … ON CONFLICT (id) DO NOTHING`` in batches of
``--batch``, one commit each.  ``chi.archive.store_many``:
:meth:`chi_redis.store.postgres.PostgresEventStore.store_many` of the same events in batches
of ``--batch`` (the archiver's write call, encoding included).  ``chi.archive.worker``: N
events already in a topic, the archiver subscription (:func:`chi_redis.ops.archive.
install_archiver`, as ``chi-redis archive run`` installs it) in a Dramatiq Worker of
``--threads`` threads on this bench's own redis-server, timed until every row is in the table;
``chi.archive.worker_nullstore``: the same into a store that keeps nothing (the Worker's own
ceiling: what the PostgreSQL writes cost is the gap between the two).  ``chi.archive.loop``:
N events already in a topic, the batch archive loop (:class:`chi_redis.ops.archive_loop.
ArchiveLoop` with ``--batch`` per read, what ``chi-redis archive run`` runs) in a thread of
this process, timed until every row is in the table.  A round runs the raw baselines,
``store_many`` and the loop first, next to each other, then the (slow) Worker scenarios.

Every scenario writes into a fresh table of the store's shape (``create_table_sql``: primary
key and both indexes), so the raw loops pay the same index upkeep.  Ratios are the median
over rounds of chi ÷ raw COPY and ÷ raw executemany measured in the same round (adjacent in
time: on a shared machine the best-of figures of different rounds drift apart twofold), with
best ÷ best beside them (target: at least half of raw).  PostgreSQL: ``--dsn``, else
``CHI_DATABASE_URL``, else ``postgresql://postgres@127.0.0.1:5432/test``; the bench's tables
are dropped after.  ``--only`` selects chi-redis scenarios by name (the raw baselines run in
every round).  Output lines: ``name value k=v`` (bench/common.py).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    base_args,
    fresh,
    log,
    make_event,
    measured,
    redis_port,
    report,
    report_value,
    wanted,
)

from chi_redis import Event, EventBus
from chi_redis.store.postgres import PostgresEventStore, create_table_sql

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_JSON = msgspec.json.Encoder()
_COLS = "id, type, topic, data, metadata, timestamp, version"


def events_of(n: int) -> list[Event]:
    """N events of the baseline event's data and metadata (distinct ids)."""
    out = []
    for i in range(n):
        b = make_event(i)
        out.append(Event(type=b.type, topic=b.topic, data=b.data, metadata=b.metadata))
    return out


def rows_of(events: list[Event]) -> list[tuple[Any, ...]]:
    """The rows a hand-written loop writes (JSON by msgspec, as the store writes them)."""
    return [(e.id, e.type, e.topic, _JSON.encode(e.data).decode(),
             _JSON.encode(e.metadata).decode(), e.timestamp, e.version) for e in events]


def reset(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(create_table_sql(table))  # type: ignore[arg-type]


def raw_copy(dsn: str, table: str, events: list[Event]) -> int:
    with psycopg.connect(dsn) as conn:
        with conn.cursor().copy(f"COPY {table} ({_COLS}) FROM STDIN") as copy:
            for row in rows_of(events):
                copy.write_row(row)
        conn.commit()
    return len(events)


def raw_executemany(dsn: str, table: str, events: list[Event], batch: int) -> int:
    sql = (f"INSERT INTO {table} ({_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
           " ON CONFLICT (id) DO NOTHING")
    with psycopg.connect(dsn) as conn:
        for lo in range(0, len(events), batch):
            with conn.cursor() as cur:
                cur.executemany(sql, rows_of(events[lo : lo + batch]))
            conn.commit()
    return len(events)


def chi_store_many(dsn: str, table: str, events: list[Event], batch: int) -> int:
    with PostgresEventStore(dsn, table) as store:
        for lo in range(0, len(events), batch):
            store.store_many(events[lo : lo + batch])
        return store.count()


class NullStore:
    """A store that keeps nothing: the archiver's ceiling without PostgreSQL."""

    def __init__(self) -> None:
        self.n = 0

    def store(self, event: Event) -> str:
        self.n += 1
        return ""

    def store_many(self, events: list[Event]) -> int:
        self.n += len(events)
        return len(events)

    def count(self) -> int:
        return self.n

    def close(self) -> None:
        pass


def chi_worker(dsn: str | None, table: str, bus: EventBus, n: int, batch: int, threads: int,
               r: redis.Redis) -> tuple[int, Any]:
    """The archiver in a Worker: N events already published, timed until all are rows
    (``dsn`` None: into a :class:`NullStore`)."""
    import dramatiq

    from chi_redis.ops.archive import install_archiver
    from chi_redis.runtime.broker import StreamsBroker
    from chi_redis.runtime.encoder import MsgpackEncoder

    store: Any = PostgresEventStore(dsn, table) if dsn else NullStore()
    install_archiver(bus, store, batch_size=batch)
    broker = StreamsBroker(bus)
    dramatiq.set_broker(broker)
    dramatiq.set_encoder(MsgpackEncoder())
    broker.emit_after("process_boot")
    counter: Any = PostgresEventStore(dsn, table) if dsn else store
    worker = dramatiq.Worker(broker, worker_threads=threads)
    with measured(r) as m:
        worker.start()
        deadline = time.monotonic() + 600
        while counter.count() < n and time.monotonic() < deadline:
            time.sleep(0.02)
    got = counter.count()
    worker.stop(timeout=30_000)
    broker.close()
    store.close()
    if counter is not store:
        counter.close()
    return got, m


def chi_loop(dsn: str, table: str, bus: EventBus, n: int, batch: int,
             r: redis.Redis) -> tuple[int, Any]:
    """The batch archive loop in a thread: N events already published, timed until every
    one is a row (the loop's own count of stored events; the table is counted after)."""
    import threading

    from chi_redis.ops.archive_loop import ArchiveLoop

    store = PostgresEventStore(dsn, table)
    loop = ArchiveLoop(bus, store, batch_size=batch, block_ms=100)
    thread = threading.Thread(target=loop.run, daemon=True)
    with measured(r) as m:
        thread.start()
        deadline = time.monotonic() + 600
        while loop.stats.stored < n and time.monotonic() < deadline:
            time.sleep(0.005)
    loop.stop()
    thread.join(timeout=60)
    got = store.count()
    store.close()
    return got, m


def main() -> None:
    p = base_args(__doc__.splitlines()[0], 20_000)
    p.add_argument("--dsn", default=os.environ.get("CHI_DATABASE_URL", DEFAULT_DSN))
    p.add_argument("--batch", type=int, default=500, help="rows per batch (all but COPY)")
    p.add_argument("--threads", type=int, default=8, help="worker threads (chi.archive.worker)")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("REPEATS", "3")))
    args = p.parse_args()
    table = f"bench_archive_{uuid.uuid4().hex[:8]}"
    events = events_of(args.n)
    rates: dict[str, list[float]] = {}

    def keep(name: str, rate: float) -> None:
        rates.setdefault(name, []).append(rate)

    try:
        with redis_port(args) as port:
            r = redis.Redis(host=args.host, port=port)
            for rnd in range(args.rounds):
                log(f"round {rnd + 1}/{args.rounds}: {args.n} rows, started"
                    f" {datetime.now(UTC):%H:%M:%S}")
                for name, run in (
                    ("raw.archive.copy", lambda: raw_copy(args.dsn, table, events)),
                    ("raw.archive.executemany",
                     lambda: raw_executemany(args.dsn, table, events, args.batch)),
                    ("chi.archive.store_many",
                     lambda: chi_store_many(args.dsn, table, events, args.batch)),
                ):
                    if name.startswith("chi.") and not wanted(args, name):
                        continue
                    reset(args.dsn, table)
                    with measured(r) as m:
                        got = run()
                    assert got == args.n, (name, got)
                    keep(name, report(name, got, m, batch=args.batch))
                # The loop next to the raw baselines (adjacent in time), the slow Worker after.
                if wanted(args, "chi.archive.loop"):
                    reset(args.dsn, table)
                    fresh(r)
                    bus = EventBus(r, namespace="bench")
                    for lo in range(0, args.n, 1000):
                        bus.publish_batch(events[lo : lo + 1000])
                    got, m = chi_loop(args.dsn, table, bus, args.n, args.batch, r)
                    assert got == args.n, got
                    keep("chi.archive.loop", report("chi.archive.loop", got, m, batch=args.batch))
                for name, dsn in (("chi.archive.worker", args.dsn),
                                  ("chi.archive.worker_nullstore", None)):
                    if not wanted(args, name):
                        continue
                    reset(args.dsn, table)
                    fresh(r)
                    bus = EventBus(r, namespace="bench")
                    for lo in range(0, args.n, 1000):
                        bus.publish_batch(events[lo : lo + 1000])
                    got, m = chi_worker(dsn, table, bus, args.n, args.batch, args.threads, r)
                    assert got == args.n, got
                    keep(name, report(name, got, m, threads=args.threads, batch=args.batch))
        for chi in ("chi.archive.store_many", "chi.archive.worker", "chi.archive.loop"):
            if chi not in rates:
                continue
            for raw in ("copy", "executemany"):
                per_round = [c / b for c, b in
                             zip(rates[chi], rates[f"raw.archive.{raw}"], strict=True)]
                report_value(f"{chi}.ratio_{raw}", statistics.median(per_round),
                             best=f"{max(rates[chi]) / max(rates[f'raw.archive.{raw}']):.3f}",
                             target=">=0.5")
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


if __name__ == "__main__":
    main()
