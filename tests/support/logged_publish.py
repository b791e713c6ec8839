"""Publishing under faults with every attempt logged to a :class:`~support.history.History`.

:func:`publish_one` and :func:`publish_batch` log ``invoke`` and then ``ok`` (an entry id
came back), ``fail`` (the error says nothing was written) or ``info`` (the outcome is
unknown: the request may have run).  :class:`Publisher` does it from a background thread at
full speed, keeping the time of every ``ok`` and the text of every error, so a case can tell
how soon publishing worked again after a fault.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from chi_redis import Event, EventBus
from chi_redis.errors import PublishError, RedisError

from .history import History

TYPE = "hist.created"


def event(n: int, **data: object) -> Event:
    """The ``n``-th event of a case (type ``hist.created``: the ``hist`` handler's)."""
    return Event(type=TYPE, data={"n": n, **data})


def publish_one(bus: EventBus, history: History, ev: Event) -> str:
    """Publish ``ev`` and log how it ended; its entry id (errors are logged and raised)."""
    history.invoke(ev.id)
    try:
        sid = bus.publish(ev)
    except RedisError as exc:
        (history.info if exc.outcome == "unknown" else history.fail)(ev.id)
        raise
    history.ok(ev.id)
    return sid


def publish_batch(bus: EventBus, history: History, events: list[Event],
                  chunk_size: int = 100) -> PublishError | None:
    """Publish ``events`` in one ``publish_batch`` and log each event's outcome; the error
    raised, if any (events it names written are ``ok``)."""
    for ev in events:
        history.invoke(ev.id)
    try:
        bus.publish_batch(events, chunk_size=chunk_size)
    except PublishError as exc:
        for i, ev in enumerate(events):
            if i in exc.written:
                history.ok(ev.id)
            else:
                (history.info if exc.outcome == "unknown" else history.fail)(ev.id)
        return exc
    for ev in events:
        history.ok(ev.id)
    return None


@dataclass
class Attempts:
    """What a :class:`Publisher` saw: times of ok publishes, error texts and outcomes."""

    ok_times: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    max_call_s: float = 0.0


class Publisher:
    """Publishes ``hist.created`` events from a thread until stopped (or ``limit`` events):
    one at a time, or ``batch`` at a time through ``publish_batch``."""

    def __init__(self, bus: EventBus, history: History, *, batch: int = 0,
                 limit: int = 200_000) -> None:
        self.bus = bus
        self.history = history
        self.batch = batch
        self.limit = limit
        self.seen = Attempts()
        self.sent = 0
        #: Events per second to hold to (None: full speed); may be changed while it runs.
        self.rate: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="publisher")

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> Attempts:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the publisher hangs"
        return self.seen

    def ok_count(self) -> int:
        return len(self.seen.ok_times)

    def first_ok_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first ok publish that started after it."""
        later = [x for x in self.seen.ok_times if x >= t]
        return min(later) - t if later else None

    def _run(self) -> None:
        paced_from, paced_sent = time.monotonic(), 0
        while not self._stop.is_set() and self.sent < self.limit:
            started = time.monotonic()
            rate = self.rate
            if rate:
                ahead = (self.sent - paced_sent) / rate - (started - paced_from)
                if ahead > 0:
                    time.sleep(min(ahead, 0.1))
                    continue
            else:
                paced_from, paced_sent = started, self.sent
            try:
                self._once()
            except RedisError as exc:  # a single publish's error
                self._error(started, exc, exc.outcome)
            except PublishError as exc:
                self._error(started, exc, exc.outcome)
            finally:
                took = time.monotonic() - started
                self.seen.max_call_s = max(self.seen.max_call_s, took)

    def _once(self) -> None:
        started = time.monotonic()
        if self.batch:
            events = [event(self.sent + i) for i in range(self.batch)]
            self.sent += len(events)
            err = publish_batch(self.bus, self.history, events)
            if err is not None:
                raise err
            self.seen.ok_times += [started] * len(events)
            self.seen.outcomes["ok"] += len(events)
            return
        ev = event(self.sent)
        self.sent += 1
        publish_one(self.bus, self.history, ev)
        self.seen.ok_times.append(started)
        self.seen.outcomes["ok"] += 1

    def _error(self, started: float, exc: Exception, outcome: str) -> None:
        self.seen.errors.append((started, f"{type(exc).__name__}: {exc}"))
        self.seen.outcomes[outcome] += 1
        time.sleep(0.01)  # a failing publisher waits a little: no retry storm
