"""The harness of the runtime conformance suite (tests/contract/test_runtime_conformance*.py).

After Watermill's universal pub/sub tests (``pubsub/tests/test_pubsub.go``): each behaviour
is one test function taking the ``backend`` fixture, parametrised over every backend of
:func:`support.backends.all_backends`; a backend declares what it cannot do in its
:class:`~support.backends.Features` (with a reason for each one it lacks), and a test that
needs a feature carries ``@pytest.mark.needs("feature", ...)``: it is generated only for the
backends that have it (:func:`generate`, tests/contract/conftest.py's
``pytest_generate_tests``), so nothing is skipped, and the reasons say why a combination
does not exist.

A behaviour uses the bus's public API (``backend.bus``: ``subscribe``, ``publish``,
``publish_batch``; ``dead_letters`` and ``redrive`` through :class:`Conformance`, which the
Kafka bus gives in its own shape) and, for what differs per backend (running a worker in
this process, waiting until a subscription has nothing left, stranding a consumer, writing
an entry no chi publisher would, a worker process), the :class:`~support.backends.Session`.

Adding a backend is one entry: write a :class:`~support.backends.Session` subclass and an
``open(ns, tmp_path)`` context manager yielding it, build ``Backend(name, open,
Features(...), marks=...)`` with a reason for every ``False`` feature, and list it in
:func:`~support.backends.all_backends`.  No behaviour changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chi_redis import Event
from chi_redis.runtime.deadletters import DeadLetter

from .backends import Backend, Session, all_backends
from .runtime import Recorder

__all__ = ["QUIET_S", "Conformance", "ev", "generate", "open_backend", "record"]

QUIET_S = 0.5  # how long "nothing more arrives" is watched


class Conformance:
    """What a behaviour gets: the backend, its session (and bus), and a temp directory."""

    def __init__(self, spec: Backend, session: Session, tmp: Path) -> None:
        self.spec = spec
        self.session = session
        self.bus: Any = session.bus
        self.tmp = tmp

    def prepare(self, **options: Any) -> None:
        """Subscriptions registered so far receive from now on; no worker runs yet."""
        self.session.prepare(**options)

    def run(self, threads: int = 4) -> None:
        """Start a worker with ``threads`` threads on what :meth:`prepare` readied."""
        self.session.run(threads)

    def start(self, threads: int = 4, **options: Any) -> None:
        """A worker with ``threads`` threads on every subscription registered so far."""
        self.prepare(**options)
        self.run(threads)

    def join(self, sub: str) -> None:
        """Wait until ``sub`` has nothing unread, in flight or waiting for a retry."""
        self.session.join(sub)

    def publish(self, *events: Event) -> list[str]:
        """``bus.publish`` of each event; what each returned."""
        return self.session.publish(*events)

    def dead_letters(self, sub: str) -> list[DeadLetter]:
        return self.session.dead_letters(sub)

    def redrive(self, sub: str) -> int:
        return self.session.redrive(sub)


def generate(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``backend`` over every backend that has what the test ``needs``."""
    marker = metafunc.definition.get_closest_marker("needs")
    needed: tuple[str, ...] = marker.args if marker else ()
    specs = [b for b in all_backends() if b.features.missing(*needed) is None]
    assert specs, f"no backend has {needed}"
    metafunc.parametrize("backend", [b.param() for b in specs], indirect=True)


@contextlib.contextmanager
def open_backend(spec: Backend, ns: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Conformance]:
    """A session of ``spec`` in namespace ``ns``; its workers stopped, its data deleted."""
    with spec.open(ns, tmp_path) as session, session.running(monkeypatch):
        yield Conformance(spec, session, tmp_path)


def ev(type_: str, n: int, **fields: Any) -> Event:
    return Event(type=type_, data={"n": n}, **fields)


def record(rec: Recorder) -> Any:
    """A handler that records ``data["n"]``."""

    def handle(event: Event) -> None:
        rec.add(event.data["n"])

    return handle
