"""A canary password (a unique string) never shows: not in logs (DEBUG), CLI output (a real
``chi-redis`` process, with the password right and wrong, from the environment, a file or a
URL), exception text and chained tracebacks, repr/str of config, client and bus,
``chi-redis config show``, the Prometheus page of ``chi-redis metrics``, dead letters'
error fields, the web console's pages, nor the command line of worker processes.

Authentication failures (wrong password, none, a disabled user) are a RedisAuthError with a
clear message, raised at once (no retries).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support import in_process_runtime, wait_until
from support.exporter import Exporter, get
from support.processes import ROOT, clean_env
from support.servers import RedisServer, RedisServers

from chi_redis import ChiError, Event, EventBus, RedisAuthError
from chi_redis.backend.connection import connect
from chi_redis.config import bus_from_config, load_config

pytestmark = pytest.mark.redis

CANARY = f"canary-{uuid.uuid4().hex}"  # the real password
WRONG = f"wrong-{uuid.uuid4().hex}"  # a wrong one: must not show either
CHI = str(Path(sys.executable).parent / "chi-redis")


def clean(*texts: Any) -> None:
    for text in texts:
        assert CANARY not in str(text) and WRONG not in str(text), text


@pytest.fixture
def server(redis_servers: RedisServers) -> Iterator[RedisServer]:
    server = redis_servers.start(password=CANARY)
    server.client().acl_setuser("retired", enabled=False, passwords=[f"+{CANARY}"],
                                keys=["*"], commands=["+@all"])
    yield server


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHI, *args], env=clean_env(**env), capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT))


def test_auth_failures_are_a_clear_auth_error_at_once(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = server.url
    cases = {
        "authentication failed": connect(url, password=WRONG),
        "no credentials supplied": connect(url),
        "user is disabled": connect(url.replace("redis://", "redis://retired@"), password=CANARY),
    }
    for says, client in cases.items():
        bus = EventBus(client, namespace="sec")
        with pytest.raises(RedisAuthError) as raised:
            bus.publish(Event(type="sec.never", data={}))
        assert says in str(raised.value), raised.value
        clean(str(raised.value), "".join(traceback.format_exception(raised.value)))
    assert not [r for r in caplog.records if "attempt" in r.getMessage()], "no retries"
    clean(*(r.getMessage() for r in caplog.records), caplog.text)


def test_a_real_cli_never_prints_the_password(server: RedisServer, tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(CANARY + "\n")
    wrong_file = tmp_path / "wrong-password"
    wrong_file.write_text(WRONG + "\n")
    at = f"127.0.0.1:{server.port}/0"
    right = [
        _cli(["stats"], CHI_REDIS_URL=f"redis://{at}", CHI_REDIS_PASSWORD=CANARY),
        _cli(["stats"], CHI_REDIS_URL=f"redis://{at}", CHI_REDIS_PASSWORD_FILE=str(secret)),
        _cli(["stats", "--redis-url", f"redis://:{CANARY}@{at}"]),
        _cli(["config", "show"], CHI_REDIS_URL=f"redis://:{CANARY}@{at}"),
        _cli(["config", "show"], CHI_REDIS_PASSWORD=CANARY),
    ]
    for out in right:
        assert out.returncode == 0, out
        clean(out.stdout, out.stderr)
    wrong = [
        _cli(["stats"], CHI_REDIS_URL=f"redis://{at}", CHI_REDIS_PASSWORD=WRONG),
        _cli(["stats"], CHI_REDIS_URL=f"redis://{at}", CHI_REDIS_PASSWORD_FILE=str(wrong_file)),
        _cli(["stats", "--redis-url", f"redis://:{WRONG}@{at}"]),
        _cli(["events", "list", "--topic", "x"], CHI_REDIS_URL=f"redis://:{WRONG}@{at}"),
    ]
    for out in wrong:
        assert out.returncode == 1 and "authentication failed" in out.stderr, out
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
        clean(out.stdout, out.stderr)
    assert "***" in right[3].stdout and "***" in right[4].stdout  # config show: masked


def test_objects_logs_and_errors_hold_no_password(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = load_config(env={"CHI_REDIS_URL": server.url, "CHI_REDIS_PASSWORD": CANARY})
    bus = bus_from_config(config)
    bus.publish(Event(type="sec.sent", data={"n": 1}))
    url_bus = EventBus(connect(f"redis://:{CANARY}@127.0.0.1:{server.port}/0"), namespace="s")
    url_bus.publish(Event(type="sec.sent", data={"n": 2}))
    objects = [config, config.bus, config.bus.redis, bus, url_bus, bus.client, url_bus.client,
               bus.client.connection_pool, bus.store, url_bus.client.connection_pool]
    clean(*(repr(o) for o in objects), *(str(o) for o in objects))
    try:  # a ChiError raised while handling a redis-py one: its whole chain printed
        try:
            connect(server.url, password=WRONG).ping()
        except redis.RedisError as exc:
            raise ChiError("handling failed") from exc
    except ChiError as exc:
        clean("".join(traceback.format_exception(exc)))
    clean(*(r.getMessage() for r in caplog.records), caplog.text)


def test_dead_letters_hold_no_password(server: RedisServer, ns: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bus = EventBus(connect(server.url, password=CANARY), namespace=ns)

    @bus.subscribe("leaky", types=["sec.*"], max_retries=0)
    def leaky(event: Event) -> None:
        raise ConnectionError(f"cannot reach redis://app:{CANARY}@db:6379/0 with"
                              f" password={CANARY}")

    with in_process_runtime(bus, monkeypatch) as rt:
        rt.worker(rt.broker())
        bus.publish(Event(type="sec.leak", data={}))
        wait_until(lambda: bus.dead_letters("leaky"), 60, "the dead letter", interval=0.05)
    (dl,) = bus.dead_letters("leaky")
    raw = bus.client.xrange(bus.keys.dlq("leaky"))
    assert "cannot reach" in dl.error and "ConnectionError" in dl.traceback
    clean(dl.error, dl.traceback, repr(dl), raw)


def test_console_pages_hold_no_password(server: RedisServer, ns: str) -> None:
    from starlette.testclient import TestClient

    from chi_redis.console.app import Console, create_app
    from chi_redis.console.security import Credentials
    from chi_redis.runtime.deadletters import dead_letter_fields, encode_body

    bus = EventBus(connect(server.url, password=CANARY), namespace=ns)
    event = Event(type="sec.leak", data={"password": CANARY,
                                         "note": f"via redis://app:{CANARY}@db:6379/0"})
    bus.publish(event)
    fields = {b"id": event.id.encode(), b"type": b"sec.leak", b"ts": b"1700000000000000",
              b"ver": b"1.0", b"meta": b"{}", b"enc": b"js",
              b"data": b'{"password": "%s"}' % CANARY.encode()}
    dl_id = bus.client.xadd(bus.keys.dlq("leaky"), dead_letter_fields(
        sub="leaky", reason="retries_exhausted", exc=ConnectionError(f"password={CANARY}"),
        kind="event", body=encode_body(fields), event_id=event.id, type_="sec.leak",
        topic="sec", source_stream=bus.keys.stream("sec"), source_id="1-0")).decode()
    pages = ["/", "/events?topic=sec", f"/events/{event.id}", "/deadletters/leaky",
             f"/deadletters/leaky/{dl_id}", "/replay"]
    for password in (CANARY, WRONG):
        console = Console(EventBus(connect(server.url, password=password), namespace=ns),
                          Credentials(token="t"))
        console.secrets = [password]
        with TestClient(create_app(console, sample=False)) as tc:
            got = [tc.get(p) for p in pages]
        if password == CANARY:
            assert [r.status_code for r in got] == [200] * len(pages)
            assert event.id in got[2].text and "retries_exhausted" in got[4].text
        else:
            assert all(r.status_code >= 400 and "authentication failed" in r.text
                       for r in got), [(r.status_code, r.text[-300:]) for r in got]
        clean(*(r.text for r in got))


def test_metrics_page_and_worker_command_line_hold_no_password(
    server: RedisServer, tmp_path: Path, ns: str
) -> None:
    for password in (CANARY, WRONG):
        exporter = Exporter(server.url, ns, tmp_path / f"metrics-{password[:5]}.log",
                            CHI_REDIS_PASSWORD=password)
        try:
            status, page = get(exporter.base + "/metrics")
            assert status == 200 and "chi_up" in page
        finally:
            exporter.stop()
        clean(page, exporter.output())
    # `chi-redis worker --redis-url URL` hands the URL to dramatiq in the environment
    worker = subprocess.Popen(
        [CHI, "worker", "reliability.security.proc_tls", "--processes", "1", "--threads", "1",
         "--redis-url", f"redis://:{CANARY}@127.0.0.1:{server.port}/0", "--namespace", ns],
        env=clean_env(PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}"), cwd=str(ROOT),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pids = _family(worker.pid)
        for pid in pids:
            clean(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        assert len(pids) >= 2, pids  # the dramatiq master and a worker process
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)


def _family(pid: int) -> list[int]:
    """``pid`` and its children once the worker processes are up (dramatiq forks them)."""
    import psutil

    def grown() -> list[int]:
        try:
            proc = psutil.Process(pid)
            kids = proc.children(recursive=True)
            cmd = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            return []
        return [pid, *(k.pid for k in kids)] if kids and "dramatiq" in cmd else []

    return wait_until(grown, 60, "the worker's processes", interval=0.05)  # type: ignore[no-any-return]


def test_a_worker_with_a_wrong_password_stops_at_once_saying_why(server: RedisServer) -> None:
    out = subprocess.run(
        [CHI, "worker", "reliability.security.proc_tls", "--processes", "1", "--threads", "1"],
        env=clean_env(CHI_REDIS_URL=server.url, CHI_REDIS_PASSWORD=WRONG,
                      PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}"),
        cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out
    assert "authentication failed at redis://127.0.0.1" in out.stdout + out.stderr, out
    clean(out.stdout, out.stderr)
