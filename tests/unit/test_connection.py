"""Connections: clear errors for a wrong URL, a wrong password and a full Redis; no secrets."""

from __future__ import annotations

import logging
import time
import traceback
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
import redis
import redis.exceptions as rex
from support import RedisServers, free_port

from chi_redis import (
    Event,
    EventBus,
    PublishError,
    RedisAuthError,
    RedisError,
    RedisFullError,
    RedisUnavailableError,
    RetryPolicy,
    connect,
)
from chi_redis.backend.connection import map_redis_error
from chi_redis.errors import redact_url, scrub

CANARY = "canary-7f3a9e1b-p@ss:w/rd"


def full_text(exc: BaseException) -> str:
    """Everything a user could see of an exception: str, repr and the whole traceback."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def assert_no_canary(text: str) -> None:
    assert CANARY not in text
    assert quote(CANARY, safe="") not in text
    assert "7f3a9e1b" not in text


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:s3cret@host:6379/0",
        "redis://:s3cret@host/0",
        "rediss://app:s3cret@10.0.0.1:6380/2?ssl_cert_reqs=required",
    ],
)
def test_redact_url_removes_the_password(url: str) -> None:
    shown = redact_url(url)
    assert "s3cret" not in shown
    assert "***" in shown
    assert "host" in shown or "10.0.0.1" in shown


def test_redact_url_leaves_a_url_without_password_alone() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_scrub_removes_secrets_and_url_passwords() -> None:
    text = scrub("failed for redis://u:pw1@h/0 with token abc123", "abc123")
    assert "pw1" not in text and "abc123" not in text


def test_errors_are_mapped_to_chi_errors() -> None:
    assert isinstance(map_redis_error(rex.ConnectionError("refused")), RedisUnavailableError)
    assert isinstance(map_redis_error(rex.TimeoutError("slow")), RedisUnavailableError)
    assert isinstance(map_redis_error(rex.AuthenticationError("WRONGPASS x")), RedisAuthError)
    assert isinstance(map_redis_error(rex.OutOfMemoryError("command not allowed")), RedisFullError)
    assert isinstance(map_redis_error(rex.ResponseError("WRONGTYPE x")), RedisError)
    err = map_redis_error(rex.ConnectionError("boom"), "redis://u:pw9@h:1/0", "pw9")
    assert "pw9" not in str(err) and "h:1" in str(err)


def test_wrong_url_gives_redis_unavailable_quickly() -> None:
    port = free_port()  # nothing listens there
    bus = EventBus.from_url(
        f"redis://:{quote(CANARY, safe='')}@127.0.0.1:{port}/0",
        namespace="t",
        retry=RetryPolicy(attempts=3),
    )
    started = time.monotonic()
    with pytest.raises(RedisUnavailableError) as info:
        bus.publish(Event(type="user.signed_up", data={}))
    assert time.monotonic() - started < 20  # generous: refused connections fail at once
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_no_canary(full_text(info.value))
    assert_no_canary(repr(bus))
    with pytest.raises(RedisUnavailableError):
        bus.store.load("anything")
    with pytest.raises(PublishError) as batch:
        bus.publish_batch([Event(type="user.signed_up", data={}) for _ in range(3)])
    assert batch.value.written == {} and batch.value.failed == [0, 1, 2]
    assert isinstance(batch.value.cause, RedisUnavailableError)
    assert_no_canary(full_text(batch.value))
    bus.close()


def test_malformed_url_is_a_clear_error() -> None:
    with pytest.raises(RedisUnavailableError) as info:
        connect(f"http://user:{CANARY}@localhost:6379/0")
    assert "invalid Redis URL" in str(info.value)
    assert CANARY not in full_text(info.value)


def test_unescaped_special_characters_in_the_password_leak_nothing() -> None:
    # "p@ss:w/rd" unescaped: the URL parser sees host "ss" and port "w".
    with pytest.raises(RedisUnavailableError) as info:
        EventBus.from_url(f"redis://default:{CANARY}@127.0.0.1:{free_port()}/0")
    text = full_text(info.value)
    for piece in ("7f3a9e1b", "ss:w", "w/rd", "'w'"):
        assert piece not in text
    assert "percent-encode" in text


@pytest.mark.redis
def test_wrong_password_gives_redis_auth_error_without_the_password(
    redis_servers: RedisServers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = redis_servers.start(password="the-right-one")
    bus = EventBus.from_url(
        f"redis://default:{quote(CANARY, safe='')}@127.0.0.1:{server.port}/0", namespace="t"
    )
    with pytest.raises(RedisAuthError) as info:
        bus.publish(Event(type="user.signed_up", data={}))
    assert "authentication failed" in str(info.value)
    for text in (full_text(info.value), repr(bus), caplog.text):
        assert_no_canary(text)
    with pytest.raises(RedisAuthError):
        bus.store.load_by_topic("user")
    bus.close()

    anonymous = EventBus.from_url(server.url, namespace="t")
    with pytest.raises(RedisAuthError) as info:
        anonymous.publish(Event(type="user.signed_up", data={}))
    assert "no credentials" in str(info.value) or "authentication" in str(info.value)
    anonymous.close()

    with server.client() as admin:
        assert admin.dbsize() == 0  # nothing was written


@pytest.mark.redis
def test_full_redis_gives_redis_full_error_and_nothing_half_written(
    redis_servers: RedisServers,
) -> None:
    server = redis_servers.start("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    bus = EventBus.from_url(server.url, namespace="oom")
    payload = {"blob": "x" * 1000}
    # Back-dated: every event is also in the time index (late, docs/design.md §3.3), so the
    # index is checked for half-written calls too.
    old = datetime.now(UTC) - timedelta(hours=1)
    written = 0
    with pytest.raises(PublishError) as info:
        for _ in range(10_000):
            batch = [Event(type="user.signed_up", data=payload, timestamp=old) for _ in range(20)]
            ids = bus.publish_batch(batch)
            written += len(ids)
    assert isinstance(info.value.cause, RedisFullError)
    assert "maxmemory" in str(info.value.cause)
    written += len(info.value.written)
    with pytest.raises(RedisFullError):
        for _ in range(1000):  # memory may dip for a moment; it will not last
            bus.publish(Event(type="user.signed_up", data=payload, timestamp=old))
            written += 1
    with pytest.raises(RedisFullError):
        for _ in range(1000):
            bus.store.store(Event(type="user.signed_up", data=payload, timestamp=old))
            written += 1
    with server.client() as admin:
        stream, index, ids = (
            admin.xlen("oom:{user}:stream"),
            admin.zcard("oom:{user}:ts"),
            admin.hlen("oom:{user}:ids"),
        )
    assert stream == index == ids == written
    bus.close()


def test_client_defaults_disable_redis_py_retries() -> None:
    client = connect("redis://127.0.0.1:6379/0")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["retry"].get_retries() == 0  # a blind XADD retry would duplicate events
    assert kwargs["socket_timeout"] > 5
    client.close()


def test_client_of_any_kind_is_accepted(fake_client: redis.Redis) -> None:
    bus = EventBus(fake_client, namespace="t")
    assert "redis://" in repr(bus)


def test_client_names_redis_py_and_its_version_without_a_metadata_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    import redis.utils

    def no_lookup() -> str:
        raise AssertionError("redis-py looked its version up in the package metadata")

    monkeypatch.setattr(redis.utils, "get_lib_version", no_lookup)
    conn = connect("redis://127.0.0.1:1/0").connection_pool.make_connection()
    info = conn.driver_info
    assert info is not None
    assert (info.formatted_name, info.lib_version) == ("redis-py",
                                                       importlib.metadata.version("redis"))
    # A caller's own identity is left alone.
    own = connect("redis://127.0.0.1:1/0", detect_cluster=False, lib_name="mine",
                  lib_version="1.0")
    kwargs = own.connection_pool.connection_kwargs
    assert "driver_info" not in kwargs and kwargs["lib_name"] == "mine"
