"""Safe by default: actions need the credential, the CSRF token and the same origin; a
non-loopback bind needs a credential for everything; every action and refusal is logged."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from chi_redis import EventBus
from chi_redis.cli.main import cli as chi_cli
from chi_redis.console.security import Credentials, Redactor, check_bind, is_loopback
from chi_redis.errors import ConfigError

from .conftest import TOKEN, csrf_of, login

pytestmark = pytest.mark.redis


def test_an_action_is_refused_without_credential_csrf_or_same_origin(
    make_console: Callable[..., Any], subscribe: Callable[..., None],
    dead_letter: Callable[..., str], bus: EventBus, client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    subscribe("payments", "pay", ["pay.*"])
    dl = dead_letter("payments", 1)
    _, tc = make_console()
    caplog.set_level(logging.INFO, logger="chi_redis.console.actions")
    csrf = csrf_of(tc, "/deadletters/payments")
    form = {"csrf": csrf, "id": dl}
    assert tc.post("/deadletters/payments/redrive", data=form).status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert tc.post("/deadletters/payments/redrive", data={"id": dl},
                   headers=bearer).status_code == 403  # no CSRF token
    assert tc.post("/deadletters/payments/redrive", data=form,
                   headers={**bearer, "Origin": "http://evil.example"}).status_code == 403
    assert tc.post("/deadletters/payments/redrive", data=form,
                   headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert tc.get("/deadletters/payments/redrive").status_code == 400  # never by GET
    assert client.xlen(bus.keys.dlq("payments")) == 1  # nothing happened
    refusals = [r.getMessage() for r in caplog.records]
    assert sum("refused redrive payments" in m for m in refusals) == 4
    done = tc.post("/deadletters/payments/redrive", data=form, headers=bearer)
    assert done.status_code == 303 and client.xlen(bus.keys.dlq("payments")) == 0
    [action] = [r.getMessage() for r in caplog.records if "action by" in r.getMessage()]
    assert action.startswith("action by token:") and "redrive subscription=payments" in action
    assert f"ids={dl}" in action and TOKEN not in action


def test_basic_auth_and_login_identify_the_user(
    make_console: Callable[..., Any], subscribe: Callable[..., None],
    dead_letter: Callable[..., str], caplog: pytest.LogCaptureFixture,
) -> None:
    subscribe("payments", "pay", ["pay.*"])
    dl = dead_letter("payments", 1)
    _, tc = make_console(token=None, user="ops", password="pw")
    caplog.set_level(logging.INFO, logger="chi_redis.console.actions")
    bad = tc.post("/login", data={"csrf": csrf_of(tc, "/login"), "user": "ops",
                                  "password": "nope"})
    assert bad.status_code == 401
    basic = "Basic " + base64.b64encode(b"ops:pw").decode()
    done = tc.post("/deadletters/payments/redrive", headers={"Authorization": basic},
                   data={"csrf": csrf_of(tc), "id": dl})
    assert done.status_code == 303
    assert any("action by user:ops" in r.getMessage() for r in caplog.records)
    good = tc.post("/login", data={"csrf": csrf_of(tc, "/login"), "user": "ops",
                                   "password": "pw", "next": "//evil.example/"})
    assert good.status_code == 303 and good.headers["location"] == "/"
    assert "user:ops" in tc.get("/").text


def test_without_a_credential_the_console_is_read_only(
    make_console: Callable[..., Any], subscribe: Callable[..., None],
    dead_letter: Callable[..., str], bus: EventBus, client: redis.Redis,
) -> None:
    subscribe("payments", "pay", ["pay.*"])
    dl = dead_letter("payments", 1)
    _, tc = make_console(token=None)
    assert "read-only" in tc.get("/").text
    refused = tc.post("/deadletters/payments/redrive", data={"csrf": csrf_of(tc), "id": dl})
    assert refused.status_code == 403 and "read-only" in refused.text
    assert client.xlen(bus.keys.dlq("payments")) == 1


def test_a_non_loopback_console_asks_for_the_credential_on_every_page(
    make_console: Callable[..., Any],
) -> None:
    _, tc = make_console(loopback=False)
    first = tc.get("/deadletters")
    assert first.status_code == 303 and first.headers["location"] == "/login?next=/deadletters"
    assert tc.get("/partials/overview").status_code == 303
    assert tc.get("/static/console.css").status_code == 200
    assert tc.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    login(tc)
    assert tc.get("/deadletters").status_code == 200


def test_binding_beyond_loopback_needs_a_credential() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    check_bind("127.0.0.1", Credentials())
    check_bind("0.0.0.0", Credentials(token="t"))
    with pytest.raises(ConfigError, match="non-loopback bind needs CHI_CONSOLE_TOKEN"):
        check_bind("0.0.0.0", Credentials())
    done = CliRunner(env={"CHI_CONSOLE_TOKEN": None, "CHI_CONSOLE_USER": None,
                          "CHI_CONSOLE_PASSWORD": None}).invoke(
        chi_cli, ["console", "--host", "0.0.0.0", "--port", "1"])
    assert done.exit_code == 1 and "non-loopback bind needs" in done.output


def test_redaction_hides_configured_and_secret_looking_fields() -> None:
    r = Redactor(["card"])
    shown = r({"data": {"Card": "4111", "api_key": "k", "nested": [{"password": "p"}],
                        "n": 1}, "metadata": {"auth_token": "t"}})
    assert shown == {"data": {"Card": "***", "api_key": "***", "nested": [{"password": "***"}],
                              "n": 1}, "metadata": {"auth_token": "***"}}
    assert "hunter2" not in Redactor.text("failed: password=hunter2")
    assert r({"note": "redis://u:hunter2@db/0"}) == {"note": "redis://u:***@db/0"}
