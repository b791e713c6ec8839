"""Outbox relay throughput (outbox row → stream entry) beside a raw relay loop.

``chi.outbox.relay``: :class:`chi_redis.outbox.relay.Relay` draining N rows (``run(once=
True)``, batches of ``--batch``): claim with ``FOR UPDATE SKIP LOCKED``, publish through the
bus's write path with idempotency keys, mark, commit.  ``raw.outbox.skiplocked_xadd``: the
same rows, the same transaction shape, written by hand: psycopg ``SELECT … FOR UPDATE SKIP
LOCKED`` + a redis-py pipeline of one ``XADD`` per row (the entry's seven fields) +
``UPDATE … published_at`` + ``COMMIT``.  Both run on this bench's own redis-server and the
same PostgreSQL table, reset between runs; ``chi.outbox.relay.ratio`` is best ÷ best raw
(target ≥ 0.5).  PostgreSQL: ``--dsn``, else ``CHI_DATABASE_URL``, else the development
server ``postgresql://postgres@127.0.0.1:5432/test``; the bench creates and drops a table of
its own there.  Output lines: ``name value k=v`` (bench/common.py).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import base_args, fresh, log, make_event, measured, redis_port, report, report_value

from chi_redis import Event, EventBus, outbox
from chi_redis.outbox.relay import Relay

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def fill(dsn: str, table: str, n: int) -> None:
    """N outbox rows of the baseline event's data and metadata (reset: nothing else)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"TRUNCATE {table}")
        for lo in range(0, n, 5000):
            events = []
            for i in range(lo, min(lo + 5000, n)):
                e = make_event(i)
                events.append(Event(type=e.type, topic=e.topic, data=e.data,
                                    metadata=e.metadata))
            outbox.add_many(conn, events, table=table)
        conn.commit()


def raw_relay(dsn: str, r: redis.Redis, table: str, batch: int) -> int:
    """The hand-written loop: SKIP LOCKED claim, pipelined XADD, mark, commit."""
    done = 0
    claim = (f"SELECT seq, id, topic, type, ts, version, metadata, enc, data FROM {table}"
             " WHERE published_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED")
    mark = f"UPDATE {table} SET published_at = now() WHERE seq = ANY(%s)"
    with psycopg.connect(dsn) as conn:
        while True:
            with conn.transaction():
                rows = conn.execute(claim, (batch,)).fetchall()
                if not rows:
                    return done
                pipe = r.pipeline(transaction=False)
                for _seq, id_, topic, type_, ts, ver, meta, enc, data in rows:
                    pipe.xadd(f"raw:{{{topic}}}:stream", {"id": id_, "type": type_, "ts": ts,
                              "ver": ver, "meta": meta, "enc": enc, "data": bytes(data)})
                pipe.execute()
                conn.execute(mark, ([row[0] for row in rows],))
            done += len(rows)


def main() -> None:
    p = base_args(__doc__.splitlines()[0], 20_000)
    p.add_argument("--dsn", default=os.environ.get("CHI_DATABASE_URL", DEFAULT_DSN))
    p.add_argument("--batch", type=int, default=500, help="rows per transaction (both)")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("REPEATS", "3")))
    args = p.parse_args()
    table = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.dsn) as conn:
        outbox.init(conn, table)
    try:
        with redis_port(args) as port:
            r = redis.Redis(host=args.host, port=port)
            bus = EventBus(r, namespace="bench")
            best: dict[str, float] = {"chi": 0.0, "raw": 0.0}
            for rnd in range(args.rounds):
                log(f"round {rnd + 1}/{args.rounds}: {args.n} rows")
                fresh(r)
                fill(args.dsn, table, args.n)
                with measured(r) as m:
                    got = raw_relay(args.dsn, r, table, args.batch)
                assert got == args.n, got
                best["raw"] = max(best["raw"], report("raw.outbox.skiplocked_xadd", got, m,
                                                      batch=args.batch))
                fresh(r)
                fill(args.dsn, table, args.n)
                relay = Relay(args.dsn, bus, table=table, batch_size=args.batch)
                with measured(r) as m:
                    got = relay.run(once=True)
                relay.close()
                assert got == args.n and r.xlen(bus.keys.stream("orders")) == args.n
                best["chi"] = max(best["chi"], report("chi.outbox.relay", got, m,
                                                      batch=args.batch))
            report_value("chi.outbox.relay.ratio", best["chi"] / best["raw"], target=">=0.5")
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"DROP FUNCTION IF EXISTS {table}_notify()")


if __name__ == "__main__":
    main()
