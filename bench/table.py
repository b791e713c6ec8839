"""The table ``bench/run`` prints: every scenario beside its baseline, the ratio, the target.

A :class:`Row` names two result lines of the run (``name value ...``, see
``bench/common.py``): chi-redis's figure and its baseline's.  The ratio is chi-redis ÷
baseline for every kind of figure (events/s: higher is better; ms, bytes, MB: lower is
better), and the target is a bound on it (``>=0.8``), or on the figure itself for a row
without a baseline.  Targets are the issues' (docs/benchmarks.md); a missed target never
fails the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ROWS", "Row", "met", "missing", "render"]


@dataclass(frozen=True)
class Row:
    scenario: str
    chi: str
    base: str | None = None
    base_label: str = ""
    target: str = ""  # ">=X" / "<=X" on the ratio, or on the figure when absolute
    absolute: bool = False
    step: str = ""  # the bench that prints ``chi`` (for --only)


def _rows() -> list[Row]:
    pub, e2e, lat = "publish", "e2e", "latency"
    xadd, pipe1k = "chi.baseline.xadd.single", "chi.baseline.xadd.pipe1000"
    raw_e2e, stub = "chi.baseline.raw_xreadgroup_e2e", "dramatiq.stub.process.threads8"
    rows = [
        Row("publish one at a time", "chi.publish.single", xadd, "raw XADD", ">=0.8", step=pub),
        Row("publish one at a time", "chi.publish.single", "fs.publish.single",
            "FastStream publish", step=pub),
        Row("publish_batch, 100 per call", "chi.publish_batch.100",
            "chi.baseline.xadd.pipe100", "raw pipeline 100", ">=0.6", step=pub),
        Row("publish_batch, 1000 per call", "chi.publish_batch.1000", pipe1k,
            "raw pipeline 1000", ">=0.6", step=pub),
        Row("AsyncEventBus.publish_batch, 1000", "chi.async.publish_batch.1000", pipe1k,
            "raw pipeline 1000", step=pub),
        Row("BufferedPublisher", "chi.buffered", pipe1k, "raw pipeline 1000", step=pub),
        Row("e2e no-op, 1 proc x 4 threads", "chi.e2e.procs1.threads4", raw_e2e,
            "raw XREADGROUP+XACK loop", step=e2e),
        Row("e2e no-op, 2 procs x 4 threads", "chi.e2e.procs2.threads4", stub,
            "Dramatiq StubBroker, 1 proc", ">=1.6", step=e2e),
        Row("e2e no-op, 2 procs x 4 threads", "chi.e2e.procs2.threads4",
            "dramatiq.process.threads8", "stock Dramatiq RedisBroker", step=e2e),
        Row("e2e no-op, 2 procs x 4 threads", "chi.e2e.procs2.threads4", "fs.e2e.single",
            "FastStream e2e single", step=e2e),
        Row("e2e no-op, 2 procs x 4 threads", "chi.e2e.procs2.threads4", "taskiq.process",
            "taskiq-redis", step=e2e),
        Row("e2e no-op, 2 procs x 4 threads", "chi.e2e.procs2.threads4", raw_e2e,
            "raw XREADGROUP+XACK loop", step=e2e),
        Row("e2e no-op, 2 procs x 4: events per worker CPU-second",
            "chi.e2e.procs2.threads4.per_cpu_s", f"{stub}.per_cpu_s",
            "StubBroker process, per CPU-second", step=e2e),
        Row("consume only, 2 procs x 4 threads", "chi.consume.procs2.threads4", stub,
            "Dramatiq StubBroker, 1 proc", step=e2e),
        Row("e2e 1 ms handler, 1 proc x 4 threads", "chi.e2e.sleep1ms.procs1.threads4",
            "dramatiq.stub.sleep1ms.threads4", "StubBroker, 4 threads, 1 ms", step=e2e),
        Row("e2e 1 ms handler, 2 procs x 4 threads", "chi.e2e.sleep1ms.procs2.threads4",
            "dramatiq.stub.sleep1ms.threads4", "StubBroker, 4 threads, 1 ms", step=e2e),
        Row("e2e batch (100), 1 proc x 4 threads", "chi.e2e.batch.procs1.threads4",
            "fs.e2e.batch", "FastStream e2e batch", step=e2e),
        Row("e2e batch (100), 2 procs x 4 threads", "chi.e2e.batch.procs2.threads4",
            "fs.e2e.batch", "FastStream e2e batch", ">=4", step=e2e),
        Row("e2e batch (100), 2 procs x 4 threads", "chi.e2e.batch.procs2.threads4", raw_e2e,
            "raw XREADGROUP+XACK loop", ">=0.6", step=e2e),
        Row("fan-out to 4 subscriptions (deliveries/s)", "chi.e2e.fanout4.procs2.threads4",
            "chi.baseline.raw_fanout4", "raw, 4 groups", step=e2e),
        Row("glob matching 1 event in 8", "chi.e2e.glob1of8.procs2.threads4",
            "chi.baseline.raw_glob1of8", "raw read + match", step=e2e),
        Row("partitioned topic (8), 2 procs x 4, no-op", "chi.e2e.part8.procs2.threads4",
            "chi.e2e.keyed.procs2.threads4", "the same events unpartitioned",
            step="partitions"),
        Row("partitioned topic (8), 2 procs x 4, 1 ms",
            "chi.e2e.part8.sleep1ms.procs2.threads4",
            "chi.e2e.keyed.sleep1ms.procs2.threads4", "the same events unpartitioned",
            step="partitions"),
    ]
    for rate in (1000, 5000):
        fs, raw, chi = f"fs.latency.{rate}", f"raw.latency.{rate}", f"chi.latency.{rate}"
        rows += [
            Row(f"latency p50 at {rate}/s", f"{chi}.p50_ms", f"{fs}.p50_ms", "FastStream",
                "<=1", step=lat),
            Row(f"latency p99 at {rate}/s", f"{chi}.p99_ms", f"{fs}.p99_ms", "FastStream",
                "<=0.5", step=lat),
            Row(f"latency max at {rate}/s", f"{chi}.max_ms", f"{fs}.max_ms", "FastStream",
                step=lat),
            Row(f"latency p50 at {rate}/s", f"{chi}.p50_ms", f"{raw}.p50_ms", "raw redis-py",
                step=lat),
            Row(f"latency p99 at {rate}/s", f"{chi}.p99_ms", f"{raw}.p99_ms", "raw redis-py",
                step=lat),
            Row(f"latency p50 at {rate}/s", f"{chi}.p50_ms", f"handoff.latency.{rate}.p50_ms",
                "chi-redis, inline runs off", step=lat),
            Row(f"latency p99 at {rate}/s", f"{chi}.p99_ms", f"handoff.latency.{rate}.p99_ms",
                "chi-redis, inline runs off", step=lat),
        ]
    xrange = "raw.xrange.page1000"
    rows += [
        Row("replay --print", "chi.replay.print", xrange, "raw XRANGE loop", ">=0.5",
            step="replay"),
        Row("replay --to SUB", "chi.replay.to_sub", xrange, "raw XRANGE loop", ">=0.5",
            step="replay"),
        Row("replay --to SUB --workers 4", "chi.replay.to_sub.workers4", xrange,
            "raw XRANGE loop", step="replay"),
        Row("time-range query, 10k events (ms)", "chi.query.range10k_ms",
            "chi.baseline.xrange10k_ms", "raw XRANGE", "<=1.5", step="query"),
        Row("Redis memory per event (bytes)", "chi.mem.bytes_per_event",
            "chi.baseline.mem.xadd_bytes_per_event", "raw XADD", "<=1.3", step=pub),
        Row("`chi-redis stats` as a process (ms)", "startup.cli_stats_ms",
            "startup.python_ms", "python -c pass", "<=250", absolute=True, step="startup"),
        Row("worker RSS after N events vs warm-up (MB)", "chi.rss.final_mb",
            "chi.rss.warmup_mb", "RSS at 10 %", "<=1.1", step="rss"),
        Row("outbox relay", "chi.outbox.relay", "raw.outbox.skiplocked_xadd",
            "raw SKIP LOCKED + XADD", ">=0.5", step="outbox"),
        Row("archive loop into PostgreSQL", "chi.archive.loop", "raw.archive.executemany",
            "raw executemany", ">=0.5", step="archive"),
        Row("archive store_many", "chi.archive.store_many", "raw.archive.copy", "raw COPY",
            ">=0.5", step="archive"),
        Row("publish one at a time, acks=replicas, master + 1 replica",
            "chi.acks.node.single.replicas", "chi.acks.node.single", "default acks",
            step="acks"),
        Row("publish one at a time, acks=replicas, 3-master cluster",
            "chi.acks.cluster.single.replicas", "chi.acks.cluster.single", "default acks",
            step="acks"),
        Row("publish_batch 100, acks=replicas, 3-master cluster",
            "chi.acks.cluster.batch100.replicas", "chi.acks.cluster.batch100", "default acks",
            step="acks"),
    ]
    return rows + _scale_rows()


def _scale_rows() -> list[Row]:
    """Issue #13: the 3-master cluster beside the single node (``bench_cluster.py``), the
    RabbitMQ bus beside raw pika (``bench_rabbitmq.py``), the Kafka bus beside raw
    confluent-kafka on tansu (``bench_kafka.py``); no targets, the issue sets none."""
    rows = []
    for what, name in (("publish one at a time", "publish.single"),
                       ("publish_batch, 1000 of one topic", "publish_batch.1000"),
                       ("publish_batch, 1000, topics alternating", "publish_batch.mixed"),
                       ("e2e no-op, 3 topics, 2 procs x 4 threads", "e2e.procs2.threads4")):
        rows.append(Row(f"cluster (3 masters): {what}", f"chi.cluster.{name}",
                        f"chi.single.{name}", "single node", step="cluster"))
    rows.append(Row("cluster (3 masters): raw XADD one at a time", "raw.cluster.xadd.single",
                    "raw.single.xadd.single", "single node", step="cluster"))
    rabbit = "rabbitmq"
    rows += [
        Row("RabbitMQ bus: publish one at a time (confirmed)", "rabbitmq.chi.publish.single",
            "rabbitmq.raw.publish.single", "raw pika", step=rabbit),
        Row("RabbitMQ bus: publish_batch 1000", "rabbitmq.chi.publish_batch.1000",
            "rabbitmq.raw.publish.batch1000", "raw pika, confirm each", step=rabbit),
        Row("RabbitMQ bus: publish_batch 1000", "rabbitmq.chi.publish_batch.1000",
            "rabbitmq.raw.publish.tx1000", "raw pika, one tx_commit", step=rabbit),
        Row("RabbitMQ bus: consume, 1 consumer", "rabbitmq.chi.consume",
            "rabbitmq.raw.consume", "raw pika", step=rabbit),
        Row("RabbitMQ bus: e2e, publish + 1 consumer", "rabbitmq.chi.e2e",
            "rabbitmq.raw.e2e", "raw pika", step=rabbit),
    ]
    for what, name in (("publish one at a time (acks=all)", "publish.one"),
                       ("publish_batch 1000", "publish.batch1000"),
                       ("e2e, 1 consumer, commit each", "e2e")):
        rows.append(Row(f"Kafka bus (tansu): {what}", f"kafka.chi.{name}", f"kafka.raw.{name}",
                        "raw confluent-kafka", step="kafka"))
    return rows


ROWS = _rows()
NONE = "\u2013"  # an en dash: no ratio, no target


def _fmt(name: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    if name.endswith("_ms"):
        return f"{value:,.2f} ms"
    if name.endswith("_mb"):
        return f"{value:,.1f} MB"
    if name.endswith("bytes_per_event"):
        return f"{value:,.0f} B"
    return f"{value:,.0f}/s"


def met(target: str, value: float) -> bool | None:
    """Whether ``value`` meets ``target`` (``>=X`` / ``<=X``); None without a target."""
    if not target or math.isnan(value):
        return None
    bound = float(target[2:])
    return value >= bound if target.startswith(">=") else value <= bound


def render(values: dict[str, float], na: dict[str, str], rows: list[Row],
           rates: dict[str, str] | None = None, absent: str = "missing") -> list[str]:
    """Markdown lines of the table; a figure not measured shows ``n/a (reason)``; a latency
    shows the publish rate achieved (``rates``: name -> ``"998/s"``) beside it."""
    rates = rates or {}
    out = ["| scenario | chi-redis | baseline | ratio | target | met? |",
           "|---|---:|---:|---:|---|---|"]
    for row in rows:
        chi = _cell(row.chi, values, na, rates) or absent
        base = (_cell(row.base, values, na, rates) or absent) if row.base else ""
        ratio, ok = NONE, None
        if row.chi in values and row.base and row.base in values and values[row.base]:
            r = values[row.chi] / values[row.base]
            ratio = f"{r:.2f}"
            ok = met(row.target, values[row.chi] if row.absolute else r)
        elif row.absolute and row.chi in values:
            ok = met(row.target, values[row.chi])
        target = row.target and (f"{row.target} ms" if row.absolute else f"{row.target}x")
        verdict = {True: "met", False: "**missed**", None: NONE}[ok]
        if any(_short(n, rates) for n in (row.chi, row.base) if n):
            verdict = "**invalid** (rate < 95 %)"
        label = f"{row.base_label}: {base}" if row.base else ""
        out.append(f"| {row.scenario} | {chi} | {label} | {ratio} | {target or NONE} |"
                   f" {verdict} |")
    return out


def _short(name: str, rates: dict[str, str]) -> bool:
    """Whether the latency ``name`` (``….latency.<rate>.…``) was measured at less than 95 % of
    its offered rate: its publisher fell behind, so its figures are queueing, not latency."""
    parts = name.split(".")
    if "latency" not in parts or name not in rates:
        return False
    try:
        offered = float(parts[parts.index("latency") + 1])
        achieved = float(rates[name].removesuffix("/s"))
    except (IndexError, ValueError):
        return False
    return achieved < 0.95 * offered


def _cell(name: str, values: dict[str, float], na: dict[str, str],
          rates: dict[str, str]) -> str:
    if name in values:
        at = f" (at {rates[name]})" if name in rates and ".latency." in name else ""
        return _fmt(name, values[name]) + at
    if name in na:
        return f"n/a ({na[name]})"
    return ""


def missing(values: dict[str, float], na: dict[str, str], rows: list[Row]) -> list[str]:
    """Figures the rows name that the run printed neither as a value nor as n/a."""
    names = {n for row in rows for n in (row.chi, row.base) if n}
    return sorted(n for n in names if n not in values and n not in na)
