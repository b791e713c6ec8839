"""Secrets and TLS settings in the configuration, without a server: the password from a
file, its errors, ``repr`` without secrets, ``CHI_REDIS_TLS_CA_FILE``, and the mapping of
TLS and plain-to-TLS connection errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis.exceptions as rex

from chi_redis import ConfigError, RedisTLSError, RedisUnavailableError
from chi_redis.backend.connection import connect_async, map_redis_error
from chi_redis.config import load_config

SECRET = "s3cret-in-a-file"


def test_the_password_comes_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(f"{SECRET}\nignored second line\n")
    config = load_config(env={"CHI_REDIS_PASSWORD_FILE": str(secret)})
    assert config.redis.client_options("redis://h:1/0")["password"] == SECRET
    assert SECRET not in repr(config) and str(secret) in repr(config)


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_password_file_is_a_config_error(tmp_path: Path,
                                                            content: str | None) -> None:
    secret = tmp_path / "pw"
    if content is not None:
        secret.write_text(content)
    config = load_config(env={"CHI_REDIS_PASSWORD_FILE": str(secret)})
    with pytest.raises(ConfigError, match="password_file"):
        config.redis.client_options("redis://h:1/0")


def test_password_and_password_file_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(env={"CHI_REDIS_PASSWORD": "a", "CHI_REDIS_PASSWORD_FILE": "/x"})


def test_repr_hides_passwords_and_url_credentials() -> None:
    config = load_config(env={"CHI_REDIS_URL": "redis://app:urlpw@h:1/0",
                              "CHI_REDIS_PASSWORD": "envpw",
                              "CHI_DATABASE_URL": "host=db password=dsnpw"})
    text = repr(config) + str(config.bus.redis)
    assert not [pw for pw in ("urlpw", "envpw", "dsnpw") if pw in text], text
    assert "redis://app:***@h:1/0" in text and "password='***'" in text
    assert config.redis.password == "envpw"  # the value itself is intact


def test_the_ca_file_comes_from_the_environment() -> None:
    config = load_config(env={"CHI_REDIS_URL": "rediss://h:6380/0",
                              "CHI_REDIS_TLS_CA_FILE": "/etc/ca.pem"})
    opts = config.redis.client_options("rediss://h:6380/0")
    assert (opts["ssl_ca_certs"], opts["ssl_cert_reqs"]) == ("/etc/ca.pem", "required")


@pytest.mark.parametrize(("text", "error", "says"), [
    ("Error 1 connecting to h:1. [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:"
     " unable to get local issuer certificate (_ssl.c:1006).", RedisTLSError,
     "cannot verify the server's certificate at rediss://:***@h:1/0 (unable to get local issuer"
     " certificate)"),
    ("Error 1 connecting to h:1. [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:"
     " Hostname mismatch, certificate is not valid for 'h'. (_ssl.c:1006).", RedisTLSError,
     "not valid for the host name connected to (Hostname mismatch"),
    ("Error 1 connecting to h:1. [SSL: WRONG_VERSION_NUMBER] wrong version number",
     RedisTLSError, "TLS handshake failed at rediss://:***@h:1/0"),
])
def test_tls_connection_errors_map_to_one_line(text: str, error: type, says: str) -> None:
    mapped = map_redis_error(rex.ConnectionError(text), "rediss://:pw@h:1/0")
    assert type(mapped) is error and says in str(mapped) and "pw@" not in str(mapped)


def test_a_plain_connection_dropped_at_once_hints_at_tls() -> None:
    reset = rex.ConnectionError("Error while reading from h:1 : (104, 'Connection reset by peer')")
    assert "use rediss://" in str(map_redis_error(reset, "redis://h:1/0"))
    assert "rediss" not in str(map_redis_error(reset, "rediss://h:1/0")).replace(
        "at rediss://h:1/0", "")
    refused = rex.ConnectionError("Error 111 connecting to h:1. Connection refused.")
    mapped = map_redis_error(refused, "redis://h:1/0")
    assert type(mapped) is RedisUnavailableError and "rediss" not in str(mapped)


def test_an_asyncio_client_without_verification_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    connect_async("rediss://h:6380/0?ssl_cert_reqs=none")
    connect_async("rediss://h:6380/0")
    connect_async("rediss://h:6380/0?ssl_check_hostname=false")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "certificate verification is OFF" in messages[0]
    assert "host name verification is OFF" in messages[1]
