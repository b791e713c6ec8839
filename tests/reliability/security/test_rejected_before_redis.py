"""Bad input is refused before any Redis command: names, oversized events, on every way in.

Measured on the server itself, a redis-server of this module's own (no other client talks
to it): ``INFO stats`` ``total_commands_processed`` before and after each rejected call.
The second INFO counts the first, so "nothing sent" is a difference of exactly one, the
figure the control measurement (:meth:`Commands.idle`) finds with no call in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hostile import INVALID_NAMES
from support.processes import clean_env
from support.servers import RedisServer

from chi_redis import (
    AsyncEventBus,
    BufferedPublisher,
    ChiError,
    Event,
    EventBus,
    InvalidNameError,
    Keys,
    PayloadTooLargeError,
    ValidationError,
)
from chi_redis.backend.keys import key_part
from chi_redis.cli.main import cli as chi_cli
from chi_redis.events.names import NAME_PATTERN, validate_glob, validate_name
from chi_redis.ops.registry import find
from chi_redis.ops.replay import replay

pytestmark = pytest.mark.redis

LIMIT = 4096  # max_event_bytes of the buses here
GLOB_CHARS = set("*?[]\\")


class Commands:
    """The server's count of processed commands, read through one long-lived connection."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.total()  # connect now: the handshake is not part of any measurement

    def total(self) -> int:
        return int(self.client.info("stats")["total_commands_processed"])

    def sent_by(self, fn: Callable[[], Any]) -> int:
        """Commands the server processed while ``fn()`` ran (the INFO after it excluded)."""
        before = self.total()
        fn()
        return self.total() - before - 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    own = RedisServer(Path(tmp_path_factory.mktemp("security"))).start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture(scope="module")
def commands(server: RedisServer) -> Iterator[Commands]:
    client = server.client(single_connection_client=True)
    yield Commands(client)
    client.close()


@pytest.fixture(scope="module")
def sec_bus(server: RedisServer) -> Iterator[EventBus]:
    bus = EventBus(server.client(), namespace="sec", max_event_bytes=LIMIT)
    yield bus
    bus.close()


def test_the_measurement_sees_one_command_and_none(commands: Commands,
                                                    sec_bus: EventBus) -> None:
    assert commands.sent_by(lambda: None) == 0
    assert commands.sent_by(lambda: sec_bus.client.ping()) >= 1
    assert commands.sent_by(lambda: sec_bus.publish(Event(type="orders.created"))) >= 1


# the ways in ---------------------------------------------------------------------------------
def _reassigned(field: str, name: str) -> Event:
    """A valid event whose ``field`` was reassigned after it was built (no check then)."""
    event = Event(type="orders.created", data={"n": 1})
    setattr(event, field, name)
    return event


def _async(server: RedisServer, fn: Callable[[AsyncEventBus], Any]) -> None:
    async def run() -> None:
        bus = AsyncEventBus.from_url(server.url, namespace="sec", max_event_bytes=LIMIT)
        try:
            await fn(bus)
        finally:
            await bus.close()

    asyncio.run(run())


def _buffered(server: RedisServer, event: Event) -> None:
    async def publish(bus: AsyncEventBus) -> None:
        pub = BufferedPublisher(bus)
        try:
            await pub.publish(event)
        finally:
            await pub.close()

    _async(server, publish)


def _cli(server: RedisServer, *args: str) -> None:
    result = CliRunner().invoke(chi_cli, ["--redis-url", server.url, "--namespace", "sec",
                                          *args], catch_exceptions=False)
    assert result.exit_code in (1, 2), (result.exit_code, result.output[:500])
    if result.exit_code == 1:
        assert "invalid" in result.output or "Error" in result.output, result.output[:500]


def _subscribe(bus: EventBus, **kwargs: Any) -> None:
    bus.subscribe(**{"name": "sec-sub", **kwargs})(lambda event: None)


NOW = datetime.now(UTC)
# name -> what to do with it; each must raise (or exit 1/2) before sending anything.
WAYS: dict[str, Callable[[EventBus, RedisServer, str], Any]] = {
    "publish type": lambda b, s, n: b.publish(Event(type=n)),
    "publish topic": lambda b, s, n: b.publish(Event(type="orders.created", topic=n or "-")),
    "publish reassigned topic": lambda b, s, n: b.publish(_reassigned("topic", n)),
    "publish reassigned type": lambda b, s, n: b.publish(_reassigned("type", n)),
    "publish idempotent": lambda b, s, n: b.publish(_reassigned("topic", n), idempotency_key="k"),
    "publish_batch": lambda b, s, n: b.publish_batch(
        [Event(type="orders.created"), _reassigned("topic", n)]),
    "async publish": lambda b, s, n: _async(s, lambda a: a.publish(_reassigned("topic", n))),
    "async publish_batch": lambda b, s, n: _async(
        s, lambda a: a.publish_batch([Event(type="orders.created"), _reassigned("type", n)])),
    "buffered publish": lambda b, s, n: _buffered(s, _reassigned("topic", n)),
    "subscribe name": lambda b, s, n: _subscribe(b, name=n),
    "subscribe topics": lambda b, s, n: _subscribe(b, topics=[n or "-"]),
    "load_by_topic": lambda b, s, n: b.store.load_by_topic(n),
    "page_by_topic": lambda b, s, n: b.store.page_by_topic(n),
    "time range topic": lambda b, s, n: b.store.load_by_time_range(NOW, NOW, topic=n or "-"),
    "dead_letters": lambda b, s, n: b.dead_letters(n),
    "redrive": lambda b, s, n: b.redrive(n),
    "replay topic": lambda b, s, n: replay(b, None, topics=[n]),
    "subscription lookup": lambda b, s, n: find(b, n),
    "namespace": lambda b, s, n: EventBus(b.client, namespace=n).publish(Event(type="a")),
    "cli publish topic": lambda b, s, n: _cli(s, "publish", n, "orders.created", "{}"),
    "cli publish type": lambda b, s, n: _cli(s, "publish", "orders", n, "{}"),
    "cli dlq list": lambda b, s, n: _cli(s, "dlq", "list", n),
    "cli replay": lambda b, s, n: _cli(s, "replay", "--topic", n, "--dry-run"),
    "cli events list": lambda b, s, n: _cli(s, "events", "list", "--topic", n),
    "cli namespace": lambda b, s, n: _cli(s, "--namespace", n, "publish", "orders", "o.c", "{}"),
}
# Globs (type filters) allow ``*`` as a whole segment: the names that are valid globs go.
GLOB_WAYS: dict[str, Callable[[EventBus, RedisServer, str], Any]] = {
    "subscribe types": lambda b, s, n: _subscribe(b, types=[n]),
    "time range types": lambda b, s, n: b.store.load_by_time_range(NOW, NOW, types=[n]),
    "replay types": lambda b, s, n: replay(b, None, topics=["orders"], types=[n]),
    "cli replay types": lambda b, s, n: _cli(s, "replay", "--topic", "orders", "--types", n,
                                             "--dry-run"),
}


def _is_valid_glob(name: str) -> bool:
    with contextlib.suppress(ChiError):
        return bool(validate_glob(name))
    return False


def _cases() -> list[Any]:
    out = []
    for way in WAYS:
        out += [pytest.param(way, n, id=f"{way}-{n[:20]!r}") for n in INVALID_NAMES]
    for way in GLOB_WAYS:
        # The CLI strips spaces around each glob (``--types "a.*, b.c"``): "orders\n" is a
        # valid ``--types`` value there.
        out += [pytest.param(way, n, id=f"{way}-{n[:20]!r}") for n in INVALID_NAMES
                if not _is_valid_glob(n) and not (way.startswith("cli") and
                                                  _is_valid_glob(n.strip()))]
    return out


@pytest.mark.parametrize(("way", "name"), _cases())
def test_invalid_name_is_refused_before_any_command(
    way: str, name: str, commands: Commands, sec_bus: EventBus, server: RedisServer
) -> None:
    fn = WAYS.get(way) or GLOB_WAYS[way]

    def attempt() -> None:
        if way.startswith("cli"):
            fn(sec_bus, server, name)
            return
        with pytest.raises(ValidationError):
            fn(sec_bus, server, name)

    assert commands.sent_by(attempt) == 0


# names: the pattern, both ways -----------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=140), st.from_regex(r"[a-z0-9][a-z0-9._-]{0,140}",
                                                      fullmatch=True)))
def test_a_name_is_valid_exactly_when_it_matches_the_pattern(text: str) -> None:
    import re

    inside = re.fullmatch(NAME_PATTERN, text) is not None and "\n" not in text
    try:
        validate_name(text, "topic")
    except InvalidNameError:
        assert not inside
    else:
        assert inside


# keys -----------------------------------------------------------------------------------------
names = st.from_regex(NAME_PATTERN, fullmatch=True)
free_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                    max_size=256).filter(str.isprintable)


def _key_methods() -> list[str]:
    return sorted(m for m, f in vars(Keys).items()
                  if inspect.isfunction(f) and not m.startswith("_") and m != "topic_from_stream")


@settings(max_examples=200, deadline=None)
@given(ns=names, name=names, text=free_text)
def test_every_key_starts_with_the_namespace_and_holds_no_glob_character(
    ns: str, name: str, text: str
) -> None:
    keys = Keys(ns)
    built = []
    for method in _key_methods():
        fn = getattr(keys, method)
        argc = fn.__code__.co_argcount - 1
        args = {0: (), 1: (name,), 2: (name, text), 3: (name, text, text)}[argc]
        built.append(fn(*args))
    assert len(built) == len(_key_methods()) >= 10
    for key in built:
        assert key.startswith(f"{ns}:"), key
        assert not GLOB_CHARS & set(key), key
        assert not any(c.isspace() for c in key), key
        assert key.count("{") <= 1 and key.count("}") <= 1, key  # one hash tag, ours


def test_free_text_key_parts_are_kept_when_plain_and_hashed_otherwise() -> None:
    assert key_part("0190f3a2-7b1c-7def-8a9b-1234567890ab") == (
        "0190f3a2-7b1c-7def-8a9b-1234567890ab")
    assert key_part("order:42") == "order:42"
    hashed = key_part("x}:stream*")
    assert hashed.startswith("#") and len(hashed) == 65
    assert key_part("x}:stream*") == hashed != key_part("x}:stream?")


# oversized events -------------------------------------------------------------------------------
def _event(n: int) -> Event:
    return Event(type="orders.created", id="e", data=b"x" * n)


def _first_too_large(bus: EventBus) -> int:
    """The smallest payload length the codec refuses (binary search on the real codec)."""
    lo, hi = 0, LIMIT
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            bus.codec.encode_parts(_event(mid))
        except PayloadTooLargeError:
            hi = mid
        else:
            lo = mid + 1
    return lo


def test_an_event_of_exactly_the_limit_is_published_and_one_byte_more_is_not(
    commands: Commands, sec_bus: EventBus
) -> None:
    n = _first_too_large(sec_bus)
    with pytest.raises(PayloadTooLargeError) as info:
        sec_bus.codec.encode_parts(_event(n))
    assert info.value.size == LIMIT + 1 and info.value.limit == LIMIT  # n-1 is exactly LIMIT
    assert commands.sent_by(lambda: sec_bus.publish(_event(n - 2))) >= 1  # limit - 1
    assert commands.sent_by(lambda: sec_bus.publish(_event(n - 1))) >= 1  # the limit

    def too_large() -> None:
        with pytest.raises(PayloadTooLargeError) as info:
            sec_bus.publish(_event(n))
        assert info.value.size == LIMIT + 1

    assert commands.sent_by(too_large) == 0


@pytest.mark.parametrize("data", [b"x" * (10 << 20), list(range(10**6))],
                         ids=["10 MB", "1e6 items"])
def test_oversized_event_names_size_limit_and_topic_and_sends_nothing(
    data: Any, commands: Commands, sec_bus: EventBus, server: RedisServer
) -> None:
    big = Event(type="orders.created", data=data)

    def attempt(fn: Callable[[], Any]) -> PayloadTooLargeError:
        with pytest.raises(PayloadTooLargeError) as info:
            fn()
        return info.value

    for fn in (lambda: sec_bus.publish(big), lambda: sec_bus.publish_batch([big]),
               lambda: _async(server, lambda a: a.publish(big)),
               lambda: _buffered(server, big)):
        errors: list[PayloadTooLargeError] = []
        assert commands.sent_by(lambda fn=fn, errors=errors: errors.append(attempt(fn))) == 0
        err = errors[0]
        assert err.size > 1 << 20 and err.limit == LIMIT
        assert str(err.size) in str(err) and str(LIMIT) in str(err) and "'orders'" in str(err)


def test_cli_publish_of_an_oversized_event_exits_1_naming_the_sizes(
    commands: Commands, server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "chi.yaml"
    config.write_text(f"events:\n  bus:\n    max_event_bytes: {LIMIT}\n")
    data = '{"blob": "' + "x" * (10 << 20) + '"}'
    outputs = []

    def publish() -> None:
        result = CliRunner().invoke(chi_cli, [
            "--redis-url", server.url, "--namespace", "sec", "--config", str(config),
            "publish", "orders", "orders.created", "-"], input=data, catch_exceptions=False)
        outputs.append((result.exit_code, result.output))

    assert commands.sent_by(publish) == 0
    code, output = outputs[0]
    assert code == 1, output[:500]
    assert f"over the limit of {LIMIT} bytes" in output and "'orders'" in output
    assert "Traceback" not in output and len(output) < 1000


def test_cli_publish_subprocess_of_an_oversized_event_exits_1(
    commands: Commands, server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "chi.yaml"
    config.write_text(f"events:\n  bus:\n    max_event_bytes: {LIMIT}\n")
    chi = Path(sys.executable).parent / "chi-redis"
    runs: list[subprocess.CompletedProcess[str]] = []

    def publish() -> None:
        runs.append(subprocess.run(
            [str(chi), "--redis-url", server.url, "--namespace", "sec", "--config", str(config),
             "publish", "orders", "orders.created", "-"], input='"' + "x" * (10 << 20) + '"',
            capture_output=True, text=True, timeout=120, check=False, env=clean_env()))

    assert commands.sent_by(publish) == 0
    done = runs[0]
    assert done.returncode == 1, (done.returncode, done.stderr[-1000:])
    assert f"over the limit of {LIMIT} bytes" in done.stderr and "'orders'" in done.stderr
    assert "Traceback" not in done.stderr and not done.stdout


def test_the_outbox_refuses_a_reassigned_topic_before_writing_a_row() -> None:
    # The outbox writes to the database, not Redis; the relay later publishes the row's
    # topic, so the name is checked when the row is made.
    from chi_redis.outbox.schema import encode_rows

    with pytest.raises(InvalidNameError):
        encode_rows([_reassigned("topic", "orders\r\nFLUSHALL")])
    assert len(encode_rows([Event(type="orders.created")])) == 1
