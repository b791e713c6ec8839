"""The RabbitMQ bus beside a raw pika loop on the same broker, in the same run.

Uses the RabbitMQ at ``--url`` (default ``CHI_RABBITMQ_URL``, else 127.0.0.1:5672
guest/guest); every exchange and queue carries a namespace of this run and is deleted after
it.  Both sides use the same discipline: a durable topic exchange, one durable quorum queue
bound by type, persistent messages (delivery mode 2), publisher confirms, a consumer that
acknowledges each message after "handling" it, the same prefetch.  The baseline body is the
baseline event (msgspec JSON, ~200 bytes, ``common.make_event``).

  rabbitmq.chi.publish.single / rabbitmq.raw.publish.single
      ``RabbitMQEventBus.publish`` one at a time vs ``basic_publish`` on a confirm channel
      (each waits for its confirm: pika's BlockingChannel confirms one message at a time)
  rabbitmq.chi.publish_batch.1000 / rabbitmq.raw.publish.batch1000
      ``publish_batch`` of 1000 vs 1000 ``basic_publish`` on the confirm channel: the same
      wait per message, which is what the bus does too
  rabbitmq.raw.publish.tx1000
      1000 ``basic_publish`` and one ``tx_commit`` (the broker has them all when it
      returns): what a batch could gain by waiting once, not a discipline the bus uses
  rabbitmq.chi.consume / rabbitmq.raw.consume
      N messages already in the queue, one consumer (a ``RabbitMQWorker`` thread with a
      no-op handler) until all are handled and acked, vs a raw ``basic_consume`` loop with
      one ``basic_ack`` per message; timed from the first message handled
  rabbitmq.chi.e2e / rabbitmq.raw.e2e
      publish N (``publish_batch`` of 1000 / the raw confirm loop) while that consumer
      runs, first publish to last ack

Run:  .venv/bin/python bench/bench_rabbitmq.py [-n 3000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import msgspec
from common import make_event, report_na

from chi_redis import Event
from chi_redis.bridges.rabbitmq import RabbitMQEventBus

URL = os.environ.get("CHI_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PREFETCH = RabbitMQEventBus().prefetch  # the bus's default, for both sides (--prefetch)
TYPE = "order.created"
NAMES = ("publish.single", "publish_batch.1000", "consume", "e2e")


def chi_events(n: int) -> list[Event]:
    return [Event(type=TYPE, topic="orders", data=e.data, metadata=e.metadata)
            for e in (make_event(i) for i in range(n))]


def rate(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def emit(name: str, value: float, **extra: object) -> None:
    print("  ".join([f"{name} {value:.0f}"] + [f"{k}={v}" for k, v in extra.items()]),
          flush=True)


# chi-redis's side ---------------------------------------------------------------------
@contextlib.contextmanager
def chi_bus(url: str) -> Iterator[tuple[RabbitMQEventBus, list[int]]]:
    """A bus of its own namespace with one subscription (``sink``: every ``order.*``)
    declared; yields it and the handled count; deletes its queues and exchanges."""
    ns = f"bench{uuid.uuid4().hex[:8]}"
    bus = RabbitMQEventBus(url, namespace=ns, exchange=f"{ns}.events")
    handled = [0]

    @bus.subscribe("sink", types=["order.*"], max_retries=0)
    def sink(event: Event) -> None:
        handled[0] += 1

    bus.declare()
    try:
        yield bus, handled
    finally:
        with contextlib.suppress(Exception):
            bus.delete(exchanges=True)
        bus.close()


def chi_publish(url: str, n: int, batch: bool) -> float:
    with chi_bus(url) as (bus, _):
        events = chi_events(n)
        bus.publish(events[0])  # connected, exchanges declared: as the raw side
        if batch:
            return rate(n, lambda: [bus.publish_batch(events[i:i + 1000])
                                    for i in range(0, n, 1000)])
        return rate(n, lambda: [bus.publish(e) for e in events])


def chi_consume(url: str, n: int, concurrent: bool) -> float:
    with chi_bus(url) as (bus, handled):
        events = chi_events(n)
        if not concurrent:
            bus.publish_batch(events)
        worker = bus.worker(threads=1, prefetch=PREFETCH)
        worker.start()
        try:
            if concurrent:
                t0 = time.perf_counter()
                for i in range(0, n, 1000):
                    bus.publish_batch(events[i:i + 1000])
                start_count = 0
            else:
                _wait(lambda: handled[0] > 0, "the chi consumer to start")
                t0, start_count = time.perf_counter(), handled[0]
            _wait(lambda: handled[0] >= n, "the chi consumer to handle every event")
            return (n - start_count) / (time.perf_counter() - t0)
        finally:
            worker.stop()


# the raw pika side --------------------------------------------------------------------
class Raw:
    """A topic exchange and a quorum queue bound by ``order.*``, as the bus declares them."""

    def __init__(self, url: str) -> None:
        import pika

        self.pika = pika
        self.url = url
        ns = f"benchraw{uuid.uuid4().hex[:8]}"
        self.exchange, self.queue = f"{ns}.events", f"{ns}.sink"
        self.conn = self.connect()
        ch = self.conn.channel()
        ch.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        ch.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(self.queue, self.exchange, routing_key="order.*")
        ch.confirm_delivery()
        self.channel = ch
        self.props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                          message_id="0" * 32, type=TYPE)
        self.bodies: list[bytes] = []

    def connect(self) -> Any:
        return self.pika.BlockingConnection(self.pika.URLParameters(self.url))

    def publish(self, n: int) -> None:
        for body in self.bodies[:n]:
            self.channel.basic_publish(self.exchange, TYPE, body, self.props)

    def publish_tx(self, n: int) -> None:
        ch = self.conn.channel()
        ch.tx_select()
        for i in range(0, n, 1000):
            for body in self.bodies[i:i + 1000]:
                ch.basic_publish(self.exchange, TYPE, body, self.props)
            ch.tx_commit()
        ch.close()

    def consume(self, n: int, publish_too: bool) -> float:
        """Consume ``n`` messages on a connection of its own (acked one by one); with
        ``publish_too`` this thread publishes them meanwhile; events/s."""
        conn = self.connect()
        ch = conn.channel()
        ch.basic_qos(prefetch_count=PREFETCH)
        got, t0 = [0], [0.0]
        decode = msgspec.json.decode

        def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
            if got[0] == 0 and not publish_too:
                t0[0] = time.perf_counter()
            decode(body)
            channel.basic_ack(method.delivery_tag)
            got[0] += 1

        ch.basic_consume(self.queue, on_message, auto_ack=False)
        publisher = None
        if publish_too:
            t0[0] = time.perf_counter()
            publisher = threading.Thread(target=self.publish, args=(n,), daemon=True)
            publisher.start()
        deadline = time.monotonic() + 600
        while got[0] < n:
            conn.process_data_events(time_limit=0.05)
            if time.monotonic() > deadline:
                raise SystemExit("raw consumer: timed out")
        elapsed = time.perf_counter() - t0[0]
        if publisher is not None:
            publisher.join()
        conn.close()
        return (n if publish_too else n - 1) / elapsed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.queue_delete(self.queue)
            self.channel.exchange_delete(self.exchange)
        self.conn.close()


def raw_side(url: str, n: int, name: str) -> float:
    raw = Raw(url)
    try:
        raw.bodies = [msgspec.json.encode(make_event(i)) for i in range(n)]
        raw.channel.basic_publish(raw.exchange, TYPE, raw.bodies[0], raw.props)
        raw.channel.queue_purge(raw.queue)
        if name in ("publish.single", "publish_batch.1000"):
            return rate(n, lambda: raw.publish(n))
        if name == "publish.tx1000":
            return rate(n, lambda: raw.publish_tx(n))
        if name == "consume":
            raw.publish(n)
            return raw.consume(n, publish_too=False)
        return raw.consume(n, publish_too=True)
    finally:
        raw.close()


def _wait(ok: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.001)


def main() -> None:
    global PREFETCH
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=URL)
    p.add_argument("-n", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=1, help="best of R rounds of each figure")
    p.add_argument("--only", default="", help="comma-separated scenario name substrings")
    p.add_argument("--prefetch", type=int, default=PREFETCH,
                   help=f"unacknowledged messages per consumer, both sides (default {PREFETCH})")
    p.add_argument("--port", type=int, default=0, help="ignored (bench/run passes its Redis)")
    args = p.parse_args()
    PREFETCH = args.prefetch
    only = [s for s in args.only.split(",") if s]
    try:
        import pika

        pika.BlockingConnection(pika.URLParameters(args.url)).close()
    except Exception as exc:  # no pika, or no broker: every row says why
        reason = f"no RabbitMQ ({type(exc).__name__})"
        for name in NAMES:
            report_na(f"rabbitmq.chi.{name}", reason)
            report_na(f"rabbitmq.raw.{name.replace('_batch.1000', '.batch1000')}", reason)
        report_na("rabbitmq.raw.publish.tx1000", reason)
        return
    chi_fns: dict[str, Callable[[], float]] = {
        "publish.single": lambda: chi_publish(args.url, args.n, batch=False),
        "publish_batch.1000": lambda: chi_publish(args.url, args.n, batch=True),
        "consume": lambda: chi_consume(args.url, args.n, concurrent=False),
        "e2e": lambda: chi_consume(args.url, args.n, concurrent=True),
    }
    for name in NAMES:
        if only and not any(o in name for o in only):
            continue
        raw_name = name.replace("_batch.1000", ".batch1000")
        chi, raw = 0.0, 0.0
        for _ in range(args.rounds):  # chi and raw in turn, each round: the same box state
            chi = max(chi, chi_fns[name]())
            raw = max(raw, raw_side(args.url, args.n, name))
        emit(f"rabbitmq.chi.{name}", chi, n=args.n, prefetch=PREFETCH)
        emit(f"rabbitmq.raw.{raw_name}", raw, n=args.n, prefetch=PREFETCH)
        if name == "publish_batch.1000":
            tx = max(raw_side(args.url, args.n, "publish.tx1000") for _ in range(args.rounds))
            emit("rabbitmq.raw.publish.tx1000", tx, n=args.n)


if __name__ == "__main__":
    main()
