"""Backends of the runtime conformance suite (tests/contract/test_runtime_conformance.py).

A :class:`Backend` says how to open a :class:`Session` (a bus in a fresh namespace, with the
operations a behaviour needs that are not the bus's public API) and which :class:`Features`
it has.  A behaviour that needs a feature (``@pytest.mark.needs``) is generated only for the
backends that have it; the stated reason of each missing feature says why a combination does
not exist.

The backends live in :mod:`support.redis_sessions` (fakeredis, embedded, a shared and an own
redis-server, a Redis Cluster), :mod:`support.rabbitmq_session` and
:mod:`support.kafka_session`; :data:`BACKENDS` lists them all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from chi_redis import Event
from chi_redis.runtime.deadletters import DeadLetter

from .processes import CHI, ROOT, TESTS, WorkerProcess, clean_env

#: How long a session waits for a subscription to drain (every wait finishes in well under
#: a second normally; group joins take a second or two on Kafka).
DEADLINE_S = 60.0


@dataclass(frozen=True)
class Features:
    """What a backend can do.  ``reasons`` explains each ``False`` (and empty ``refuses``)."""

    multi_process: bool = True  # worker processes (`chi-redis worker`) can share it
    kill_and_restart: bool = False  # a test may `kill -9` the server and start it again
    persistence: bool = False  # what was written survives that restart
    reclaim: bool = True  # what a consumer took and died with goes to a live one (`strand`)
    guaranteed_order: bool = True  # one consumer thread handles one topic in publish order
    key_order: bool = False  # events of one partition key in publish order, many consumers
    replay: bool = True  # `bus.replay` / `chi-redis replay` (checkpointed redelivery)
    batch: bool = True  # batch subscriptions (`batch_size`)
    idempotent_publish: bool = True  # `publish(idempotency_key=...)` writes once
    redrive: bool = True  # `bus.redrive(sub)` puts dead letters back
    #: A redriven event is delivered as the entry it was published as (same stream id);
    #: False where redrive appends a copy (Kafka: a record cannot be written twice).
    redrive_same_entry: bool = True
    time_limit: bool = True  # `subscribe(time_limit_ms=...)` interrupts a slow handler
    #: Options the bus refuses with a :class:`~chi_redis.ChiError` (a name of
    #: ``REFUSABLE`` in the suite): each refusal is a behaviour too.
    refuses: frozenset[str] = frozenset()
    reasons: dict[str, str] = field(default_factory=dict)

    def missing(self, *names: str) -> str | None:
        """Why the backend lacks one of ``names`` (None when it has them all)."""
        for name in names:
            if not getattr(self, name):
                return self.reasons.get(name, f"the backend has no {name}")
        return None


class Session:
    """One test's view of a backend: ``bus`` in a fresh namespace, plus what a behaviour
    needs beyond the bus's public API (running workers, waiting until a subscription has
    nothing left, stranding a consumer, writing an entry no chi publisher would, starting
    a worker process).

    ``url`` reaches the same data from another process (None without ``multi_process``);
    ``server`` is the redis-server the session owns (only with ``kill_and_restart``).
    """

    def __init__(self, bus: Any, *, url: str | None = None, server: Any = None) -> None:
        self.bus = bus
        self.url = url
        self.server = server

    # workers in this process --------------------------------------------------------------
    @contextlib.contextmanager
    def running(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        """The scope of the test's workers: every one started is stopped on exit."""
        yield

    def prepare(self, **options: Any) -> None:
        """Make every subscription registered so far receive what is published from now
        on, without running a worker yet.  ``options`` are Redis broker options (lease,
        reclaim interval); other backends have none."""
        raise NotImplementedError

    def run(self, threads: int = 4) -> None:
        """Start a worker with ``threads`` threads on what :meth:`prepare` readied."""
        raise NotImplementedError

    def join(self, sub: str) -> None:
        """Wait until ``sub`` has nothing unread, in flight or waiting for a retry."""
        raise NotImplementedError

    # what the bus's own API does ------------------------------------------------------------
    def publish(self, *events: Event) -> list[str]:
        """Publish each event on its own; what each ``publish`` returned."""
        return [self.bus.publish(e) for e in events]

    def dead_letters(self, sub: str) -> list[DeadLetter]:
        return list(self.bus.dead_letters(sub))

    def redrive(self, sub: str) -> int:
        return int(self.bus.redrive(sub))

    # backend-specific operations --------------------------------------------------------------
    def strand(self, sub: str, topic: str, count: int) -> int:
        """Take up to ``count`` entries of ``topic`` for ``sub`` as a consumer that then dies
        (never acks, never hands them back); returns how many it took."""
        raise NotImplementedError

    def inject_malformed(self, topic: str, type_: str, event_id: str) -> str:
        """Write to ``topic`` an entry with the envelope of a ``type_`` event ``event_id``
        whose payload is not valid MessagePack; returns its source id (what a dead letter's
        ``source_id`` names)."""
        raise NotImplementedError

    def worker_process(self, module: str, threads: int, log: Path, **env: str) -> WorkerProcess:
        """``module``'s subscriptions run by a worker process (started, with ``env`` added
        to its environment), as in production."""
        raise NotImplementedError

    def wait_ready(self, proc: WorkerProcess, subs: dict[str, list[str]]) -> None:
        """Wait until ``proc`` consumes ``subs`` (name -> topics)."""
        raise NotImplementedError


Opener = Callable[[str, Path], contextlib.AbstractContextManager[Session]]


class BridgeSession(Session):
    """A session on a bridge bus (RabbitMQ, Kafka): its workers are the bus's own, started
    by :meth:`run` into ``workers``; each is stopped, its consumer threads gone, when the
    behaviour ends."""

    workers: list[Any]
    bus: Any

    @contextlib.contextmanager
    def running(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        try:
            yield
        finally:
            for worker in self.workers:
                worker.stop(timeout_s=DEADLINE_S)
            assert [t for w in self.workers for t in w._threads] == []

    def bus_config(self) -> dict[str, Any]:
        """The config file's ``events.bus`` section that reaches this session's bus."""
        raise NotImplementedError

    def worker_process(self, module: str, threads: int, log: Path, **env: str) -> WorkerProcess:
        """``chi-redis worker module`` on this session's bus (a config file beside ``log``)."""
        config = log.with_suffix(".yaml")
        config.write_text(yaml.safe_dump(
            {"events": {"namespace": self.bus.namespace, "bus": self.bus_config()}}))
        full = clean_env(CHI_CONFIG=str(config), PYTHONUNBUFFERED="1",
                         PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), **env)
        proc = WorkerProcess(module, full, log)
        proc.cmd = [str(CHI), "worker", module, "--threads", str(threads)]
        return proc.start()


@dataclass(frozen=True)
class Backend:
    """A backend the conformance suite runs against: ``open(ns, tmp_path)`` gives a session."""

    name: str
    open: Opener
    features: Features
    marks: tuple[pytest.MarkDecorator, ...] = ()

    def param(self) -> Any:
        """This backend as a ``pytest.param`` (id = name, with its marks)."""
        return pytest.param(self, id=self.name, marks=self.marks)


def all_backends() -> list[Backend]:
    """Every backend of the suite (Redis, RabbitMQ, Kafka)."""
    from .kafka_session import KAFKA
    from .rabbitmq_session import RABBITMQ
    from .redis_sessions import REDIS_BACKENDS

    return [*REDIS_BACKENDS, RABBITMQ, KAFKA]
